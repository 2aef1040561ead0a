package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Routes that tailscale0 always carries inside the container: MagicDNS's
// 100.100.100.100 and Tailscale's ULA range. Peers' IPv4 addresses get a /32
// each ([updatePeerRoutes]), as tailscaled on Linux routes them: the rest of
// 100.64.0.0/10 stays with the container's other routes, so resolvers and
// hosts numbered in CGNAT space on the host's side stay reachable.
var tailnetRoutes = []netip.Prefix{
	netip.MustParsePrefix("100.100.100.100/32"),
	netip.MustParsePrefix("fd7a:115c:a1e0::/48"),
}

// cgnatRange is Tailscale's IPv4 range, 100.64.0.0/10.
var cgnatRange = netip.MustParsePrefix("100.64.0.0/10")

// quad100 is MagicDNS's address, always routed to tailscale0.
var quad100 = netip.MustParsePrefix("100.100.100.100/32")

// fallbackMetric is the metric of the unreachable route that backs each route
// through tailscale0: the largest, so a route through tailscale0 for the same
// prefix always wins while the kernel uses it.
const fallbackMetric = 0xffffffff

// withNetNSHandle runs fn with a netlink handle opened in the netns at nsPath.
func withNetNSHandle(nsPath string, fn func(h *netlink.Handle) error) error {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("opening netlink in netns %s: %w", nsPath, err)
	}
	defer h.Close()
	return fn(h)
}

// moveTUN moves the host-netns link hostName into the netns at nsPath and
// renames it [TUNName]. If the netns already holds tailscale0 and the host has
// no hostName link, it was moved before and moveTUN succeeds.
func moveTUN(hostName, nsPath string) error {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", nsPath, err)
	}
	defer nsh.Close()
	link, err := netlink.LinkByName(hostName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return withNetNSHandle(nsPath, func(h *netlink.Handle) error {
				_, err := h.LinkByName(TUNName)
				return err
			})
		}
		return fmt.Errorf("finding %s: %w", hostName, err)
	}
	if err := netlink.LinkSetNsFd(link, int(nsh)); err != nil {
		return fmt.Errorf("moving %s into netns %s: %w", hostName, nsPath, err)
	}
	return withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(hostName)
		if err != nil {
			return fmt.Errorf("finding %s in netns: %w", hostName, err)
		}
		if err := h.LinkSetName(l, TUNName); err != nil {
			return fmt.Errorf("renaming %s to %s: %w", hostName, TUNName, err)
		}
		return nil
	})
}

// installFallbacks adds, in the netns at nsPath, an unreachable route with
// [fallbackMetric] for each of [tailnetRoutes]: while tailscale0 cannot carry
// traffic (no carrier, see [ignoreRoutesWithoutCarrier]; not attached yet;
// attach failed) the tailnet is unreachable in the container instead of
// following its default route to Docker's NAT. Idempotent. IPv6 errors are
// returned separately (Docker may have disabled IPv6 in the netns; that also
// removes IPv6 routes, so [configureTUN] installs them again).
func installFallbacks(nsPath string) (err6 error, err error) {
	return installFallbacksFor(nsPath, tailnetRoutes)
}

// installFallbacksFor is [installFallbacks] for the given prefixes.
func installFallbacksFor(nsPath string, prefixes []netip.Prefix) (err6 error, err error) {
	err = withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		for _, r := range prefixes {
			rerr := h.RouteReplace(&netlink.Route{
				Dst:      prefixToIPNet(r),
				Type:     unix.RTN_UNREACHABLE,
				Priority: fallbackMetric,
			})
			if rerr != nil {
				rerr = fmt.Errorf("adding unreachable fallback route %s: %w", r, rerr)
				if r.Addr().Is4() {
					return rerr
				}
				err6 = errors.Join(err6, rerr)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return err6, nil
}

// InstallFallbackRoutes makes the tailnet unreachable in the container
// netns at nsPath until a node's [Node.Attach] brings tailscale0 there: it
// installs the unreachable routes that stand in for tailscale0's routes
// whenever it cannot carry traffic. Attach installs them itself; call this
// when a container's netns exists before its node is up (a node started
// after the container), so the tailnet is not routed to Docker's NAT
// meanwhile. Idempotent; an IPv6 failure (IPv6 disabled in the netns) is
// returned too, after the IPv4 routes are in place.
//
// The peers are not known yet, so this covers all of 100.64.0.0/10; the
// node's first peer-route sync replaces that with one route per peer.
func InstallFallbackRoutes(nsPath string) error {
	err6, err := installFallbacksFor(nsPath, append(slices.Clone(tailnetRoutes), cgnatRange))
	return errors.Join(err, err6)
}

// ignoreRoutesWithoutCarrier sets ignore_routes_with_linkdown on tailscale0
// in the netns at nsPath, for IPv4 and IPv6. A persistent TUN with no fd
// attached (the plugin process is gone) has no carrier and the kernel marks
// its routes linkdown; with this setting the kernel skips them, so the
// [installFallbacks] routes answer for the tailnet, and the DNS table of
// [routeDNS] has no route, which sends DNS back to the main table. Set per
// device, so Docker's own links keep the kernel's default. IPv6 errors are
// returned separately.
func ignoreRoutesWithoutCarrier(nsPath string) (err6 error, err error) {
	if err := writeSysctl(nsPath, "net/ipv4/conf/"+TUNName+"/ignore_routes_with_linkdown", "1"); err != nil {
		return nil, err
	}
	return writeSysctl(nsPath, "net/ipv6/conf/"+TUNName+"/ignore_routes_with_linkdown", "1"), nil
}

// noRouterSolicitations sets net.ipv6.conf.tailscale0.router_solicitations
// to 0 in the netns at nsPath. There is no router to find on tailscale0, but
// Linux (since 4.9, RFC 7559 backoff; default -1) sends router solicitations
// on an IPv6 link without end, at growing intervals up to an hour. Each one
// is a packet into the node's TUN, which tailscale counts as activity: the
// node then keeps re-STUNning for 45 s (magicsock's sessionActiveTimeout)
// instead of going idle.
func noRouterSolicitations(nsPath string) error {
	return writeSysctl(nsPath, "net/ipv6/conf/"+TUNName+"/router_solicitations", "0")
}

// configureTUN makes tailscale0 in the netns at nsPath carry exactly addrs
// (host prefixes), be up, and route [tailnetRoutes], backed by
// [installFallbacks] routes that take over when it loses carrier
// ([ignoreRoutesWithoutCarrier]; both are in place before the first route
// through tailscale0). If only IPv6 failed, the error wraps
// [errIPv6NotConfigured]: Docker may have disabled IPv6 in the netns, and
// that must not fail the IPv4 setup.
func configureTUN(nsPath string, addrs []netip.Prefix) error {
	fallback6, err := installFallbacks(nsPath)
	if err != nil {
		return err
	}
	ignore6, err := ignoreRoutesWithoutCarrier(nsPath)
	if err != nil {
		return err
	}
	noRS6 := noRouterSolicitations(nsPath)
	var err6 error
	err = withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(TUNName)
		if err != nil {
			return fmt.Errorf("finding %s: %w", TUNName, err)
		}
		err6 = errors.Join(fallback6, ignore6, noRS6, syncAddrs(h, l, addrs))
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", TUNName, err)
		}
		for _, r := range tailnetRoutes {
			rerr := h.RouteReplace(&netlink.Route{
				LinkIndex: l.Attrs().Index,
				Dst:       prefixToIPNet(r),
				Scope:     netlink.SCOPE_LINK,
			})
			if rerr != nil {
				rerr = fmt.Errorf("adding route %s via %s: %w", r, TUNName, rerr)
				if r.Addr().Is4() {
					return rerr
				}
				err6 = errors.Join(err6, rerr)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err6 != nil {
		return fmt.Errorf("%w: %w", errIPv6NotConfigured, err6)
	}
	return nil
}

// peerRoutesIn returns the prefixes that the main table of the netns at
// nsPath routes to tailscale0 or backs with an unreachable [fallbackMetric]
// route, other than [tailnetRoutes], default routes and the kernel's own:
// the peer routes (and accepted subnet routes, egress.go) a plugin process
// installed, or 100.64.0.0/10 from a tslink that routed the whole range, for
// a process that adopts tailscale0. A prefix maps to true if both its
// routes are there, false if only one is.
func peerRoutesIn(nsPath string) (map[netip.Prefix]bool, error) {
	found := map[netip.Prefix]int{}
	err := withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(TUNName)
		if err != nil {
			return fmt.Errorf("finding %s: %w", TUNName, err)
		}
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
			routes, err := h.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE)
			if errors.Is(err, netlink.ErrDumpInterrupted) {
				routes, err = h.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE)
			}
			if err != nil {
				return fmt.Errorf("listing routes: %w", err)
			}
			for _, r := range routes {
				p, ok := ipNetToPrefix(r.Dst)
				if !ok || p.Bits() == 0 || slices.Contains(tailnetRoutes, p) || r.Protocol == unix.RTPROT_KERNEL ||
					cgnatRange.Overlaps(p) && p.Bits() < cgnatRange.Bits() {
					continue
				}
				switch {
				case r.LinkIndex == l.Attrs().Index:
					found[p] |= 1
				case r.Type == unix.RTN_UNREACHABLE && r.Priority == fallbackMetric:
					found[p] |= 2
				}
			}
		}
		return nil
	})
	have := map[netip.Prefix]bool{}
	for p, bits := range found {
		have[p] = bits == 3
	}
	return have, err
}

// updatePeerRoutes, in the netns at nsPath, routes each prefix of add
// through tailscale0 (after its unreachable [fallbackMetric] route, so the
// rule of [installFallbacks] holds for peers too) and removes both routes
// of each prefix of del. Missing routes to delete are not an error.
func updatePeerRoutes(nsPath string, add, del []netip.Prefix) error {
	if len(add) == 0 && len(del) == 0 {
		return nil
	}
	return withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(TUNName)
		if err != nil {
			return fmt.Errorf("finding %s: %w", TUNName, err)
		}
		var errs []error
		for _, p := range del {
			for _, r := range []*netlink.Route{
				{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(p), Scope: netlink.SCOPE_LINK},
				{Dst: prefixToIPNet(p), Type: unix.RTN_UNREACHABLE, Priority: fallbackMetric},
			} {
				if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("removing route %s: %w", p, err))
				}
			}
		}
		for _, p := range add {
			err := h.RouteReplace(&netlink.Route{Dst: prefixToIPNet(p), Type: unix.RTN_UNREACHABLE, Priority: fallbackMetric})
			if err == nil {
				err = h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(p), Scope: netlink.SCOPE_LINK})
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("adding route %s via %s: %w", p, TUNName, err))
			}
		}
		return errors.Join(errs...)
	})
}

// errIPv6NotConfigured: tailscale0's IPv4 setup is done, its IPv6 is not.
var errIPv6NotConfigured = errors.New("IPv6 on " + TUNName + " not configured yet")

// syncAddrs adds the missing addrs to l and removes the ones not in addrs.
// IPv4 failures are fatal; the returned error covers IPv6 only.
func syncAddrs(h *netlink.Handle, l netlink.Link, addrs []netip.Prefix) error {
	have, err := h.AddrList(l, unix.AF_UNSPEC)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		have, err = h.AddrList(l, unix.AF_UNSPEC)
	}
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", TUNName, err)
	}
	var err6 error
	for _, a := range have {
		p, ok := ipNetToPrefix(a.IPNet)
		if !ok || slices.Contains(addrs, p) || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		h.AddrDel(l, &a)
	}
	for _, p := range addrs {
		if err := h.AddrReplace(l, &netlink.Addr{IPNet: prefixToIPNet(p)}); err != nil {
			err = fmt.Errorf("adding %s to %s: %w", p, TUNName, err)
			if p.Addr().Is4() {
				return err
			}
			err6 = errors.Join(err6, err)
		}
	}
	return err6
}

// enableIPv6 clears net.ipv6.conf.tailscale0.disable_ipv6 in the netns at
// nsPath. Docker sets net.ipv6.conf.all.disable_ipv6=1 in containers of
// networks without IPv6, which applies to every existing link and drops
// tailscale0's IPv6 address.
func enableIPv6(nsPath string) error {
	if err := writeSysctl(nsPath, "net/ipv6/conf/"+TUNName+"/disable_ipv6", "0"); err != nil {
		return fmt.Errorf("enabling IPv6 on %s: %w", TUNName, err)
	}
	return nil
}

// writeSysctl writes value to the sysctl at /proc/sys/<name> of the netns at
// nsPath, from a thread locked into that netns (/proc/sys/net resolves to the
// netns of the thread that opens it).
func writeSysctl(nsPath, name, value string) error {
	return ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		rel := "sys/" + name
		err := os.WriteFile("/proc/"+rel, []byte(value), 0)
		if errors.Is(err, unix.EROFS) {
			// Inside a managed plugin /proc/sys is read-only (the OCI
			// runtime's readonly paths); a procfs of our own is not.
			var root string
			if root, err = privateProc(); err == nil {
				err = os.WriteFile(filepath.Join(root, rel), []byte(value), 0)
			}
		}
		if err != nil {
			return fmt.Errorf("setting %s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
		}
		return nil
	})
}

var privateProc = sync.OnceValues(func() (string, error) {
	dir := "/run/tslink/proc"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := unix.Mount("proc", dir, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("mounting a writable procfs at %s: %w", dir, err)
	}
	return dir, nil
})

// deleteLinkIn deletes link name in the netns at nsPath ("" = the host's).
// A missing link or netns is success.
func deleteLinkIn(nsPath, name string) error {
	del := func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return nil
		}
		return h.LinkDel(l)
	}
	if nsPath == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		return del(h)
	}
	err := withNetNSHandle(nsPath, del)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// dialIn connects to the TCP address addr from inside the netns at nsPath.
// The socket is created there, so it stays in that netns after the thread
// switches back.
func dialIn(ctx context.Context, nsPath, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// fromThisProcess checks that the peer of the loopback connection c is a
// socket this process holds: sock_diag gives the peer socket's inode, and
// /proc/self/fd lists this process's sockets as "socket:[inode]". Any other
// process is refused, root included (e.g. a --network host container is
// uid 0 without being able to enter the container's netns). A dial this
// process abandoned before the check (its socket already closed) is refused
// too, which no one then waits for. The error says why.
func fromThisProcess(c net.Conn) error {
	peer, err := netlink.SocketGet(c.RemoteAddr(), c.LocalAddr())
	if err != nil {
		return fmt.Errorf("looking up the peer socket: %w", err)
	}
	own, err := holdsSocket(peer.INode)
	if err != nil {
		return err
	}
	if !own {
		return fmt.Errorf("peer socket (inode %d, uid %d) belongs to another process", peer.INode, peer.UID)
	}
	return nil
}

// holdsSocket reports whether one of this process's fds is the socket with
// the given inode.
func holdsSocket(inode uint32) (bool, error) {
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return false, fmt.Errorf("listing this process's fds: %w", err)
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return false, fmt.Errorf("listing this process's fds: %w", err)
	}
	want := "socket:[" + strconv.FormatUint(uint64(inode), 10) + "]"
	for _, name := range names {
		if target, err := os.Readlink("/proc/self/fd/" + name); err == nil && target == want {
			return true, nil
		}
	}
	return false, nil
}

// routeDNS makes the netns at nsPath send UDP port 53 that would leave by its
// default route through tailscale0 instead (see dns.go): a rule looks DNS up
// in the main table without its default route first (resolvers on a connected
// network stay direct), then in table [dnsRulePriority], whose default route
// is tailscale0 with the node's IPv4 address as source. Idempotent.
func routeDNS(nsPath string, src netip.Addr) error {
	return withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		l, err := h.LinkByName(TUNName)
		if err != nil {
			return fmt.Errorf("finding %s: %w", TUNName, err)
		}
		err = h.RouteReplace(&netlink.Route{
			LinkIndex: l.Attrs().Index,
			Table:     dnsRulePriority,
			Scope:     netlink.SCOPE_LINK,
			Src:       src.AsSlice(),
		})
		if err != nil {
			return fmt.Errorf("adding DNS route via %s: %w", TUNName, err)
		}
		have, err := h.RuleList(netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("listing rules: %w", err)
		}
		for _, want := range dnsRules() {
			if slices.ContainsFunc(have, func(r netlink.Rule) bool { return sameDNSRule(r, want) }) {
				continue
			}
			// A rule of an older plugin version (no mark match) at this
			// priority would send forwarded queries back to tailscale0.
			for _, r := range have {
				if r.Priority == want.Priority {
					if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
						return fmt.Errorf("replacing DNS rule: %w", err)
					}
				}
			}
			if err := h.RuleAdd(want); err != nil {
				return fmt.Errorf("adding DNS rule: %w", err)
			}
		}
		return nil
	})
}

// sameDNSRule reports whether the listed rule have is want (priority and
// mark match).
func sameDNSRule(have netlink.Rule, want *netlink.Rule) bool {
	return have.Priority == want.Priority && have.Mark == want.Mark &&
		have.Mask != nil && want.Mask != nil && *have.Mask == *want.Mask
}

// unrouteDNS empties table [dnsRulePriority] in the netns at nsPath, so the
// DNS rules of [routeDNS] fall through to the main table and the container's
// DNS takes its normal path until routeDNS runs again.
func unrouteDNS(nsPath string) error {
	return withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: dnsRulePriority}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("listing DNS routes: %w", err)
		}
		for _, r := range routes {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("removing DNS route: %w", err)
			}
		}
		return nil
	})
}

func dnsRules() []*netlink.Rule {
	viaMain := netlink.NewRule()
	viaMain.Priority = dnsRulePriority - 1
	viaMain.Table = unix.RT_TABLE_MAIN
	viaMain.SuppressPrefixlen = 0
	viaTUN := netlink.NewRule()
	viaTUN.Priority = dnsRulePriority
	viaTUN.Table = dnsRulePriority
	for _, r := range []*netlink.Rule{viaMain, viaTUN} {
		r.Family = netlink.FAMILY_V4
		r.IPProto = unix.IPPROTO_UDP
		r.Dport = netlink.NewRulePortRange(53, 53)
		// Only packets without the mark of forwarded queries.
		mask := uint32(dnsForwardMark)
		r.Mark, r.Mask = 0, &mask
	}
	return []*netlink.Rule{viaMain, viaTUN}
}
