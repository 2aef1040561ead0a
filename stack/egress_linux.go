package stack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tslink/tslink/pkg/nodespec"
)

// Egress inside the container's netns (see egress.go for the node's side).
// Everything here lives in the container's own netns: a sysctl, an
// nftables table named [egressNFTable] and policy-routing rules; nothing
// on the host.
//
// A subnet router or exit node ([nodespec.Egress.Forwards]) gets
// net.ipv4.ip_forward and net.ipv6.conf.all.forwarding set, and masquerades
// what it forwards from the tailnet (source in 100.64.0.0/10 or
// fd7a:115c:a1e0::/48) out of any link other than tailscale0.
//
// A container with an exit node keeps Docker's main table as it is and
// puts rules in front of it:
//
//	egressRulePriority+0: fwmark replyMark/replyMark lookup main   replies on connections that came in on a Docker link (eth0, eth1: `-p` ports)
//	egressRulePriority+1: iif tailscale0 lookup main               what a subnet router forwards from the tailnet
//	egressRulePriority+2: lookup main suppress_prefixlength 0      every route of main but its default: the container's own Docker networks, the tailnet
//	egressRulePriority+3…: to <private range> lookup main          ts.exit-node-allow-lan=true only: [lanRanges] by Docker's default route
//	exitTable:            lookup exitTable                         default dev tailscale0, backed by unreachable default metric 2^32-1
//
// The container's directly connected Docker networks stay reachable either
// way: dockerd resolves the container's default gateway with a route
// lookup in the container's netns after the node attached, and a lookup
// that found tailscale0 would give the container a default route through
// it. Connections that arrive on a link other than tailscale0 and lo get
// replyMark as their conntrack mark (prerouting), and the container's
// packets of such connections get it as their packet mark (an output chain
// of type route, so the kernel routes them again), which the first rule
// sends back through the main table. Everything else the container sends
// beyond the tailnet leaves by tailscale0; while tailscale0 has no carrier
// (ignore_routes_with_linkdown, see netns_linux.go) the unreachable default
// answers, so nothing falls back to Docker's NAT. The DNS rules of
// [routeDNS] (priority [dnsRulePriority]) come first.

const (
	// egressNFTable is the nftables table (family inet) tslink owns in a
	// container's netns.
	egressNFTable = "tslink"
	// replyMark marks connections that came in on a Docker link; distinct
	// from [dnsForwardMark].
	replyMark = 0x20000000
	// egressRulePriority is the first of the exit node's rules; after the
	// DNS rules, before the main table's (32766).
	egressRulePriority = dnsRulePriority + 10
	// exitTable is the routing table of the exit node's default route, and
	// the priority of its rule.
	exitTable = egressRulePriority + 9
)

// lanRanges are what ts.exit-node-allow-lan=true keeps off the exit node,
// besides the container's own Docker networks: the private and link-local
// ranges, which Docker's NAT takes to the host's LAN (Tailscale's clients
// keep their LAN's routes off the exit node the same way).
var lanRanges = map[int][]netip.Prefix{
	netlink.FAMILY_V4: {
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("169.254.0.0/16"),
	},
	netlink.FAMILY_V6: {netip.MustParsePrefix("fc00::/7"), netip.MustParsePrefix("fe80::/10")},
}

// configureEgress applies e in the netns at nsPath. Idempotent: it is
// re-run whenever tailscale0 is configured (attach, adoption, address
// change). IPv6 failures (Docker may have disabled IPv6 in the netns) are
// returned separately.
func configureEgress(nsPath string, e nodespec.Egress) (err6, err error) {
	if e.Forwards() {
		if err := writeSysctl(nsPath, "net/ipv4/ip_forward", "1"); err != nil {
			return nil, err
		}
		err6 = errors.Join(err6, writeSysctl(nsPath, "net/ipv6/conf/all/forwarding", "1"))
	}
	if err := syncNFTable(nsPath, e); err != nil {
		return nil, err
	}
	if e.ExitNode == "" {
		return err6, nil
	}
	r6, err := exitRoutes(nsPath, e.ExitNodeAllowLAN)
	return errors.Join(err6, r6), err
}

// exitRoutes installs the exit node's table and rules (see the package
// comment above) for IPv4, then IPv6 (whose errors are returned as err6).
func exitRoutes(nsPath string, allowLAN bool) (err6, err error) {
	err = withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(TUNName)
		if err != nil {
			return fmt.Errorf("finding %s: %w", TUNName, err)
		}
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ferr := exitRoutesFamily(h, l, family, allowLAN)
			if ferr == nil {
				continue
			}
			if family == netlink.FAMILY_V4 {
				return ferr
			}
			err6 = ferr
		}
		return nil
	})
	return err6, err
}

func exitRoutesFamily(h *netlink.Handle, l netlink.Link, family int, allowLAN bool) error {
	all := netip.MustParsePrefix("0.0.0.0/0")
	if family == netlink.FAMILY_V6 {
		all = netip.MustParsePrefix("::/0")
	}
	for _, r := range []*netlink.Route{
		{Table: exitTable, Dst: prefixToIPNet(all), Type: unix.RTN_UNREACHABLE, Priority: fallbackMetric},
		{Table: exitTable, Dst: prefixToIPNet(all), LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK},
	} {
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("adding exit node route %s (table %d): %w", all, exitTable, err)
		}
	}
	have, err := h.RuleList(family)
	if err != nil {
		return fmt.Errorf("listing rules: %w", err)
	}
	for _, want := range exitRules(family, allowLAN) {
		if slices.ContainsFunc(have, func(r netlink.Rule) bool { return sameExitRule(r, want) }) {
			continue
		}
		for _, r := range have { // another configuration at this priority (allow-lan changed)
			if r.Priority == want.Priority {
				if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("replacing rule %d: %w", r.Priority, err)
				}
			}
		}
		if err := h.RuleAdd(want); err != nil {
			return fmt.Errorf("adding rule %d: %w", want.Priority, err)
		}
	}
	if !allowLAN {
		for i := range lanRanges[family] {
			r := netlink.NewRule()
			r.Family, r.Priority = family, egressRulePriority+3+i
			if err := h.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("removing rule %d: %w", r.Priority, err)
			}
		}
	}
	return nil
}

// exitRules are the policy rules of an exit node for one family.
func exitRules(family int, allowLAN bool) []*netlink.Rule {
	replies := netlink.NewRule()
	replies.Priority, replies.Table = egressRulePriority, unix.RT_TABLE_MAIN
	mask := uint32(replyMark)
	replies.Mark, replies.Mask = replyMark, &mask
	forwarded := netlink.NewRule()
	forwarded.Priority, forwarded.Table = egressRulePriority+1, unix.RT_TABLE_MAIN
	forwarded.IifName = TUNName
	connected := netlink.NewRule()
	connected.Priority, connected.Table = egressRulePriority+2, unix.RT_TABLE_MAIN
	connected.SuppressPrefixlen = 0
	exit := netlink.NewRule()
	exit.Priority, exit.Table = exitTable, exitTable
	rules := []*netlink.Rule{replies, forwarded, connected, exit}
	if allowLAN {
		for i, p := range lanRanges[family] {
			lan := netlink.NewRule()
			lan.Priority, lan.Table = egressRulePriority+3+i, unix.RT_TABLE_MAIN
			lan.Dst = prefixToIPNet(p)
			rules = append(rules, lan)
		}
	}
	for _, r := range rules {
		r.Family = family
	}
	return rules
}

// sameExitRule reports whether the listed rule have is want.
func sameExitRule(have netlink.Rule, want *netlink.Rule) bool {
	if have.Priority != want.Priority || have.Table != want.Table || have.IifName != want.IifName ||
		have.Mark != want.Mark || have.SuppressPrefixlen != want.SuppressPrefixlen {
		return false
	}
	if hd, wd := ipNetString(have.Dst), ipNetString(want.Dst); hd != wd {
		return false
	}
	if want.Mask != nil {
		return have.Mask != nil && *have.Mask == *want.Mask
	}
	return true
}

// syncNFTable makes the netns at nsPath hold tslink's nftables table for
// e, or none if e needs none, in one transaction (the table is added,
// deleted and built again, so an existing one is replaced).
func syncNFTable(nsPath string, e nodespec.Egress) error {
	f, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", nsPath, err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: egressNFTable}
	c.AddTable(t)
	c.DelTable(t)
	if e.Forwards() || e.ExitNode != "" {
		c.AddTable(t)
	}
	if e.Forwards() {
		masqueradeTailnet(c, t)
	}
	if e.ExitNode != "" {
		markReplies(c, t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables table %s in the container's netns: %w", egressNFTable, err)
	}
	return nil
}

// masqueradeTailnet adds to t: what leaves by a link other than tailscale0
// with a tailnet source address (forwarded from the tailnet) is
// masqueraded.
func masqueradeTailnet(c *nftables.Conn, t *nftables.Table) {
	ch := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for _, src := range []netip.Prefix{cgnatRange, tailnetRoutes[1]} {
		proto, off := byte(unix.NFPROTO_IPV4), uint32(12)
		if src.Addr().Is6() {
			proto, off = unix.NFPROTO_IPV6, 8
		}
		addr := src.Addr().AsSlice()
		mask := netipMask(src)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(addr))},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(TUNName)},
			&expr.Masq{},
		}})
	}
}

// markReplies adds to t the marking of [exitRoutes]: new connections in
// from a link other than tailscale0 and lo get [replyMark] as conntrack
// mark; the container's packets of such connections get it as packet
// mark, and are routed again.
func markReplies(c *nftables.Conn, t *nftables.Table) {
	bit := binaryutil.NativeEndian.PutUint32(replyMark)
	zero := make([]byte, 4)
	pre := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(TUNName)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname("lo")},
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: zero},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
		// ct mark |= replyMark
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^uint32(replyMark)), Xor: bit},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}})
	out := c.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: bit, Xor: zero},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
		// meta mark |= replyMark
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^uint32(replyMark)), Xor: bit},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}})
}

// ifname is an interface name as nftables compares it (IFNAMSIZ bytes).
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// netipMask returns p's netmask as bytes.
func netipMask(p netip.Prefix) []byte {
	n := prefixToIPNet(p)
	return []byte(n.Mask)
}

func ipNetString(n *net.IPNet) string {
	if n == nil {
		return ""
	}
	return n.String()
}
