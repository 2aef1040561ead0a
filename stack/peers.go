package stack

import (
	"maps"
	"net/netip"
	"slices"

	"tailscale.com/tailcfg"
)

// Peer routes. tailscale0 carries 100.100.100.100, fd7a:115c:a1e0::/48 and
// a /32 for each IPv4 address of each peer in the node's netmap, as
// tailscaled on Linux does, instead of all of 100.64.0.0/10. The node follows
// the netmap on its IPN bus (the initial netmap, then Notify.PeersChanged and
// Notify.PeersRemoved) and adds or removes only the routes that changed:
// with many containers per host, each netmap change touches each netns once
// per changed peer, not once per peer.

// peerPrefixes returns the IPv4 host prefixes inside 100.64.0.0/10 among
// addrs (a peer's Addresses; its IPv6 addresses are inside the /48 route).
func peerPrefixes(addrs []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range addrs {
		if p.IsSingleIP() && p.Addr().Is4() && cgnatRange.Contains(p.Addr()) && p != quad100 {
			out = append(out, p)
		}
	}
	return out
}

// peerSet is what tslink routes to tailscale0 beyond [tailnetRoutes], as
// the DNS interception sees it: the peers' addresses and the subnet routes
// accepted from them (egress.go). A nil *peerSet means the netmap is not
// known yet.
type peerSet struct {
	addrs   map[netip.Addr]bool
	subnets []netip.Prefix
}

// tailnetDst reports whether dst is routed to tailscale0 by tslink: the
// static [tailnetRoutes] or a peer. Before the peers are known, all of
// 100.64.0.0/10 counts.
func (s *peerSet) tailnetDst(dst netip.Addr) bool {
	for _, r := range tailnetRoutes {
		if r.Contains(dst) {
			return true
		}
	}
	if s == nil {
		return cgnatRange.Contains(dst)
	}
	if s.addrs[dst] {
		return true
	}
	for _, p := range s.subnets {
		if p.Contains(dst) {
			return true
		}
	}
	return false
}

// setPeers replaces the known peers with a netmap's, from the watcher's
// first notification.
func (n *Node) setPeers(netmapPeers []busPeer) {
	peers := map[tailcfg.NodeID][]netip.Prefix{}
	for _, p := range netmapPeers {
		peers[p.ID] = n.routedPrefixes(p.Addresses, p.PrimaryRoutes)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peers = peers
	n.syncPeerRoutesLocked()
}

// startPeersFromFullNetmap starts an empty peer set if none is known yet,
// and reports whether it did. A watcher that subscribed before the node's
// first netmap (Start returned before Running) gets no initial NetMap; it
// sees each full netmap as a SelfChange with every peer in PeersChanged
// (tailscale.com ipn/ipnlocal setControlClientStatusLocked, v1.102.5), so
// the first SelfChange starts the set that PeersChanged then fills.
func (n *Node) startPeersFromFullNetmap() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.peers != nil {
		return false
	}
	n.peers = map[tailcfg.NodeID][]netip.Prefix{}
	return true
}

// markPeersKnown closes n.peersKnown once; only the watcher calls it.
func (n *Node) markPeersKnown() {
	select {
	case <-n.peersKnown:
	default:
		close(n.peersKnown)
	}
}

// updatePeers applies a netmap delta from the IPN bus.
func (n *Node) updatePeers(changed []busPeer, removed []tailcfg.NodeID) {
	if len(changed) == 0 && len(removed) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.peers == nil {
		return // no initial netmap yet; it will carry these
	}
	for _, p := range changed {
		n.peers[p.ID] = n.routedPrefixes(p.Addresses, p.PrimaryRoutes)
	}
	for _, id := range removed {
		delete(n.peers, id)
	}
	n.syncPeerRoutesLocked()
}

// syncPeerRoutesLocked makes tailscale0's peer routes match n.peers, adding
// and removing only the difference from what is installed (read from the
// netns once, after attach or adoption, then kept in n.routed). Nothing
// happens until the peers are known and tailscale0 is attached. n.mu held.
func (n *Node) syncPeerRoutesLocked() {
	if n.peers == nil {
		return
	}
	want := map[netip.Prefix]bool{}
	set := peerSet{addrs: map[netip.Addr]bool{}}
	for _, ps := range n.peers {
		for _, p := range ps {
			want[p] = true
			if p.IsSingleIP() {
				set.addrs[p.Addr()] = true
			} else {
				set.subnets = append(set.subnets, p)
			}
		}
	}
	if n.dev != nil {
		n.dev.peers.Store(&set)
	}
	if n.nsPath == "" || n.closed {
		return
	}
	if n.routed == nil {
		have, err := peerRoutesIn(n.nsPath)
		if err != nil {
			n.logf("tslink: peer routes: %v", err)
			return
		}
		n.routed = have
	}
	var add, del []netip.Prefix
	for p := range want {
		if !n.routed[p] {
			add = append(add, p)
		}
	}
	for p := range n.routed { // complete or not
		if !want[p] {
			del = append(del, p)
		}
	}
	slices.SortFunc(add, netip.Prefix.Compare)
	if err := updatePeerRoutes(n.nsPath, add, del); err != nil {
		n.logf("tslink: peer routes: %v", err)
		n.routed = nil // read them again next time
		return
	}
	n.routed = maps.Clone(want)
}
