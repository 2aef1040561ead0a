package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"tailscale.com/ipn"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
)

// Egress: subnet routes and exit nodes ([nodespec.Egress], Config.Egress).
// The node's side is Tailscale's own prefs, set through its LocalAPI as
// `tailscale set` does: RouteAll (--accept-routes), AdvertiseRoutes
// (--advertise-routes, --advertise-exit-node), ExitNodeIP and
// ExitNodeAllowLANAccess. With tsnet.Server.Tun set, tsnet's netstack
// leaves forwarded packets to the TUN (ProcessSubnets is off), so what the
// node forwards crosses the container's netns, where egress_linux.go sets
// up forwarding, NAT and routing.
//
// Accepted subnet routes are each peer's PrimaryRoutes other than the exit
// routes (the routes control made that peer the primary router of), kept
// on tailscale0 like the peers' own addresses (peers.go).

// ErrExitNodeNotOffered: the ts.exit-node label names a node that control
// does not offer this node as an exit node (no such peer, or a peer that
// does not advertise an exit node, or whose exit routes are not approved).
var ErrExitNodeNotOffered = errors.New("exit node not offered by control")

// routedPrefixes returns what tailscale0 routes for a peer with these
// addresses and primary routes: its IPv4 address ([peerPrefixes]) and,
// with ts.accept-routes, its subnet routes.
func (n *Node) routedPrefixes(addrs, primaryRoutes []netip.Prefix) []netip.Prefix {
	out := peerPrefixes(addrs)
	if !n.cfg.Egress.AcceptRoutes {
		return out
	}
	for _, r := range primaryRoutes {
		if r.Bits() == 0 || tsaddr.IsExitRoute(r) || r.Overlaps(cgnatRange) || r.Overlaps(tsaddr.TailscaleULARange()) {
			continue
		}
		out = append(out, r.Masked())
	}
	return out
}

// exitNodeWait bounds how long Start waits for the netmap to name the exit
// node.
const exitNodeWait = 3 * time.Second

// applyEgressPrefs sets the node's egress prefs from cfg.Egress, once the
// node is up. An exit node is resolved against the node's netmap, as
// `tailscale set --exit-node` resolves it (ipn.Prefs.SetExitNodeIP): one
// that control does not offer fails with [ErrExitNodeNotOffered] naming it.
// A node without egress labels needs no call: tsnet starts every node with
// Tailscale's default prefs, which route nothing beyond the tailnet.
func (n *Node) applyEgressPrefs(ctx context.Context) error {
	e := n.cfg.Egress
	if !e.AcceptRoutes && !e.Forwards() && e.ExitNode == "" {
		return nil
	}
	mp := &ipn.MaskedPrefs{
		Prefs: ipn.Prefs{
			RouteAll:               e.AcceptRoutes,
			AdvertiseRoutes:        e.Routes(),
			ExitNodeAllowLANAccess: e.ExitNodeAllowLAN,
		},
		RouteAllSet:               true,
		AdvertiseRoutesSet:        true,
		ExitNodeAllowLANAccessSet: true,
		ExitNodeIDSet:             true,
		ExitNodeIPSet:             true,
	}
	if e.ExitNode != "" {
		id, err := n.resolveExitNode(ctx, e.ExitNode)
		if err != nil {
			return err
		}
		mp.ExitNodeID = id
	}
	if _, err := n.lc.EditPrefs(ctx, mp); err != nil {
		return fmt.Errorf("setting egress prefs (routes %v, exit node %q): %w", e.Routes(), e.ExitNode, err)
	}
	n.logf("tslink: egress: accept-routes=%v advertise=%v exit-node=%q allow-lan=%v", e.AcceptRoutes, e.Routes(), e.ExitNode, e.ExitNodeAllowLAN)
	return nil
}

// resolveExitNode finds the stable node ID of the exit node named by the
// ts.exit-node label in the node's netmap, waiting up to [exitNodeWait]
// (bounded by ctx) for a netmap that offers it. The prefs get the ID, not
// the IP: with only ExitNodeIP set, LocalBackend resolves it to an ID on a
// later netmap, and until then its route manager offers no exit routes
// (measured: a node set up so sent nothing to the exit node).
func (n *Node) resolveExitNode(ctx context.Context, name string) (tailcfg.StableNodeID, error) {
	ctx, cancel := context.WithTimeout(ctx, exitNodeWait)
	defer cancel()
	var lastErr error
	for {
		st, err := n.lc.Status(ctx)
		if err == nil {
			var p ipn.Prefs
			if err = p.SetExitNodeIP(name, st); err == nil {
				for _, ps := range st.Peer {
					if slices.Contains(ps.TailscaleIPs, p.ExitNodeIP) {
						return ps.ID, nil
					}
				}
				err = fmt.Errorf("no peer has address %v", p.ExitNodeIP)
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return "", n.nodeError(ErrExitNodeNotOffered, fmt.Sprintf("label ts.exit-node=%s: %v (the exit node must be online in this node's netmap, advertise an exit node, and have its exit routes approved)", name, lastErr))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// configureEgressLocked applies cfg.Egress in the container's netns
// (egress_linux.go). n.mu held, tailscale0 attached.
func (n *Node) configureEgressLocked() error {
	e := n.cfg.Egress
	if !e.AcceptRoutes && !e.Forwards() && e.ExitNode == "" {
		return nil // nothing in the netns: the container's egress is Docker's
	}
	err6, err := configureEgress(n.nsPath, e)
	if err6 != nil {
		n.logf("tslink: egress (IPv6): %v", err6)
	}
	if err != nil {
		return fmt.Errorf("egress in the container's netns: %w", err)
	}
	return nil
}
