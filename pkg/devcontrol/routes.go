package devcontrol

import (
	"fmt"
	"net/netip"
	"slices"

	"tailscale.com/types/key"
)

// AdvertisedRoutes returns the routes the node with nodeKey ("nodekey:…")
// advertises (its Hostinfo.RoutableIPs: subnet routes, and 0.0.0.0/0 and
// ::/0 for an exit node), as the admin console lists them for approval.
func (s *Server) AdvertisedRoutes(nodeKey string) ([]netip.Prefix, error) {
	var k key.NodePublic
	if err := k.UnmarshalText([]byte(nodeKey)); err != nil {
		return nil, fmt.Errorf("node key %q: %w", nodeKey, err)
	}
	n := s.control.Node(k)
	if n == nil {
		return nil, fmt.Errorf("no node %s", nodeKey)
	}
	if !n.Hostinfo.Valid() {
		return nil, nil
	}
	return n.Hostinfo.RoutableIPs().AsSlice(), nil
}

// ApproveRoutes approves routes of the node with nodeKey, as a tailnet admin
// does in the admin console (or an autoApprovers policy): each must be one
// the node advertises ([Server.AdvertisedRoutes]), else nothing changes and
// the error names it. Approval replaces the node's earlier approvals; an
// empty list withdraws them. Peers learn of the routes in their next map
// response: testcontrol puts every approved route in both the node's
// AllowedIPs and its PrimaryRoutes (Tailscale's control leaves the exit
// routes out of PrimaryRoutes; clients use AllowedIPs for those).
func (s *Server) ApproveRoutes(nodeKey string, routes []netip.Prefix) error {
	adv, err := s.AdvertisedRoutes(nodeKey)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if !slices.Contains(adv, r) {
			return fmt.Errorf("node %s does not advertise %v (it advertises %v)", nodeKey, r, adv)
		}
	}
	var k key.NodePublic
	k.UnmarshalText([]byte(nodeKey))
	s.control.SetSubnetRoutes(k, slices.Clone(routes))
	return nil
}
