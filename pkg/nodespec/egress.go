package nodespec

import "net/netip"

// Egress is how a node routes beyond the tailnet's own addresses: the
// ts.accept-routes, ts.advertise-routes, ts.advertise-exit-node,
// ts.exit-node and ts.exit-node-allow-lan labels. The zero value is
// tslink's default: no subnet routes, no exit node, nothing advertised.
type Egress struct {
	// AcceptRoutes installs the subnet routes that other nodes advertise
	// and control approved (Tailscale's RouteAll pref, `--accept-routes`).
	AcceptRoutes bool `json:",omitempty"`
	// AdvertiseRoutes are subnets the node offers to the tailnet (masked
	// prefixes, neither 0.0.0.0/0 nor ::/0), forwarded and masqueraded
	// inside the container's netns.
	AdvertiseRoutes []netip.Prefix `json:",omitempty"`
	// AdvertiseExitNode offers the node as an exit node (0.0.0.0/0 and ::/0).
	AdvertiseExitNode bool `json:",omitempty"`
	// ExitNode is the exit node the container's internet traffic uses: a
	// peer's Tailscale IP, MagicDNS name or FQDN, as `tailscale set
	// --exit-node` takes it. "" for none.
	ExitNode string `json:",omitempty"`
	// ExitNodeAllowLAN keeps the container's directly connected networks
	// (its Docker networks) off the exit node.
	ExitNodeAllowLAN bool `json:",omitempty"`
}

// Routes returns the prefixes the node advertises: AdvertiseRoutes, plus
// 0.0.0.0/0 and ::/0 for an exit node.
func (e Egress) Routes() []netip.Prefix {
	out := append([]netip.Prefix(nil), e.AdvertiseRoutes...)
	if e.AdvertiseExitNode {
		out = append(out, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
	}
	return out
}

// Forwards reports whether the node forwards traffic from the tailnet (a
// subnet router or an exit node).
func (e Egress) Forwards() bool { return len(e.AdvertiseRoutes) > 0 || e.AdvertiseExitNode }
