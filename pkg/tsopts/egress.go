package tsopts

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"tailscale.com/net/netutil"
	"tailscale.com/net/tsaddr"

	"github.com/tslink/tslink/pkg/nodespec"
)

// Egress labels (`docker run --label`): see [nodespec.Egress].
const (
	LabelAcceptRoutes      = "ts.accept-routes"
	LabelAdvertiseRoutes   = "ts.advertise-routes"
	LabelAdvertiseExitNode = "ts.advertise-exit-node"
	LabelExitNode          = "ts.exit-node"
	LabelExitNodeAllowLAN  = "ts.exit-node-allow-lan"
)

// MaxRoutes bounds the prefixes of a ts.advertise-routes label: each one is
// a route in the netmap of every peer that accepts routes.
const MaxRoutes = 64

// Egress is a container's parsed egress labels.
type Egress = nodespec.Egress

var egressLabels = []string{LabelAcceptRoutes, LabelAdvertiseExitNode, LabelAdvertiseRoutes, LabelExitNode, LabelExitNodeAllowLAN}

// routesForm is the accepted form of ts.advertise-routes, for error messages.
const routesForm = "comma-separated IPv4 or IPv6 prefixes with no host bits set, outside Tailscale's 100.64.0.0/10 and fd7a:115c:a1e0::/48, e.g. 10.0.0.0/24,192.168.1.0/24"

// exitNodeForm is the accepted form of ts.exit-node, for error messages.
const exitNodeForm = "a Tailscale IP (100.x.y.z or fd7a:115c:a1e0:…) or a node's MagicDNS name (e.g. laptop or laptop.tail1234.ts.net)"

// parseEgressLabel applies the egress label k=v to e; handled is false for
// a key that is not an egress label.
func parseEgressLabel(k, v string, e *Egress) (handled bool, err error) {
	parseBool := func() (bool, error) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("label %s=%q: want true or false", k, v)
		}
		return b, nil
	}
	switch k {
	case LabelAcceptRoutes:
		e.AcceptRoutes, err = parseBool()
	case LabelAdvertiseExitNode:
		e.AdvertiseExitNode, err = parseBool()
	case LabelExitNodeAllowLAN:
		e.ExitNodeAllowLAN, err = parseBool()
	case LabelAdvertiseRoutes:
		e.AdvertiseRoutes, err = ParseRoutes(v)
		if err != nil {
			err = fmt.Errorf("label %s: %w", k, err)
		}
	case LabelExitNode:
		e.ExitNode, err = ParseExitNode(v)
		if err != nil {
			err = fmt.Errorf("label %s: %w", k, err)
		}
	default:
		return false, nil
	}
	return true, err
}

// checkEgress checks the egress labels against each other, as `tailscale
// up` does.
func checkEgress(e Egress) error {
	switch {
	case e.ExitNodeAllowLAN && e.ExitNode == "":
		return fmt.Errorf("label %s=true applies to an exit node, and %s is not set: add %s=<name or 100.x> or drop %s", LabelExitNodeAllowLAN, LabelExitNode, LabelExitNode, LabelExitNodeAllowLAN)
	case e.ExitNode != "" && e.AdvertiseExitNode:
		return fmt.Errorf("labels %s and %s=true: a node cannot use an exit node and be one at the same time; drop one", LabelExitNode, LabelAdvertiseExitNode)
	}
	return nil
}

// ParseRoutes parses a ts.advertise-routes value with Tailscale's own rules
// (netutil.CalcAdvertiseRoutes, as `tailscale set --advertise-routes`),
// then refuses what a container cannot route: the default routes (that is
// ts.advertise-exit-node), Tailscale's own ranges and 4via6 prefixes. The
// result is sorted and without duplicates.
func ParseRoutes(v string) ([]netip.Prefix, error) {
	var parts []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			parts = append(parts, s)
		}
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("empty route list: want %s", routesForm)
	}
	if len(parts) > MaxRoutes {
		return nil, fmt.Errorf("%d prefixes given, tslink advertises at most %d per node: want %s", len(parts), MaxRoutes, routesForm)
	}
	for _, s := range parts {
		if _, err := netip.ParsePrefix(s); err != nil {
			return nil, fmt.Errorf("%q is not a prefix: want %s", s, routesForm)
		}
	}
	routes, err := netutil.CalcAdvertiseRoutes(strings.Join(parts, ","), false)
	if err != nil {
		return nil, fmt.Errorf("%v: want %s", err, routesForm)
	}
	for _, p := range routes {
		switch {
		case p.Bits() == 0:
			return nil, fmt.Errorf("%s is the default route: use label %s=true to offer the node as an exit node", p, LabelAdvertiseExitNode)
		case tsaddr.IsViaPrefix(p):
			return nil, fmt.Errorf("%s is a 4via6 prefix, which tslink does not route: want %s", p, routesForm)
		case p.Overlaps(tsaddr.CGNATRange()) || p.Overlaps(tsaddr.TailscaleULARange()):
			return nil, fmt.Errorf("%s overlaps Tailscale's own addresses: want %s", p, routesForm)
		}
	}
	return routes, nil
}

// ParseExitNode checks a ts.exit-node value: a Tailscale IP, or a DNS name
// (one or more labels of letters, digits and -, an optional trailing dot).
// Names are lowercased; whether control offers that node as an exit node
// is known only once the node is up.
func ParseExitNode(v string) (string, error) {
	if ip, err := netip.ParseAddr(v); err == nil {
		if !tsaddr.IsTailscaleIP(ip) || ip.Zone() != "" {
			return "", fmt.Errorf("%s is not a Tailscale address: want %s", v, exitNodeForm)
		}
		return ip.String(), nil
	}
	name := strings.TrimSuffix(v, ".")
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("%q: want %s", v, exitNodeForm)
	}
	for _, label := range strings.Split(name, ".") {
		if !ValidHostname(label) {
			return "", fmt.Errorf("%q: want %s", v, exitNodeForm)
		}
	}
	return strings.ToLower(name), nil
}
