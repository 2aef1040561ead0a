package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/dns"
	"tailscale.com/net/packet"
	"tailscale.com/types/ipproto"
	"tailscale.com/util/dnsname"
)

// MagicDNS inside the container, with no docker flag.
//
// Docker's embedded DNS (127.0.0.11) answers container names and forwards
// every other name to the host's resolvers, from inside the container's netns.
// A policy rule there ([dnsRulePriority]) routes UDP to port 53 through
// tailscale0, where the [device] takes those queries out of the packet stream
// before tsnet sees them and answers them itself:
//   - names under the tailnet's MagicDNS suffix, and single-label names that
//     MagicDNS knows (peers' short names), from tsnet's own resolver (the one
//     behind 100.100.100.100);
//   - everything else from the resolver the query was addressed to, asked
//     from the container's own netns with a socket mark the DNS rule skips
//     ([forwardDNSIn]), so the query leaves as the container's own would
//     (its routes, Docker's NAT, the host's firewall; nothing on an
//     --internal network). Destinations the container could not reach
//     itself (loopback, link-local, multicast, no unicast route) get
//     REFUSED ([forwardable]). Internet names thus resolve whether or not
//     the tailnet's DNS config has upstream resolvers (with a custom TUN
//     tsnet has no OS resolver to fall back on).
// Queries addressed to 100.100.100.100 itself (`--dns 100.100.100.100`, or a
// host whose own resolver is Tailscale's MagicDNS) are taken out too: tailnet
// names are answered by tsnet's resolver, every other name by the first
// upstream that answers of: the nameservers control sends, else
// [Config.DNSUpstreams] (TS_DNS_UPSTREAMS, else the host's resolvers), asked
// from the container's netns like any forwarded query. tsnet's own forwarder
// (net/dns/resolver in tailscale.com v1.102.5) sends UDP from a plain
// net.ListenConfig, i.e. from the plugin's netns, with no per-node hook, so
// it is never handed such names.

// dnsRulePriority is the priority of the policy rule, and the number of the
// routing table, that send the container's UDP DNS through tailscale0.
const dnsRulePriority = 5353

// dnsForwardTimeout bounds one forwarded query.
const dnsForwardTimeout = 5 * time.Second

// maxDNSInFlight bounds concurrently answered queries per node; more are
// dropped (the client retries).
const maxDNSInFlight = 64

// dnsAnswerer answers intercepted queries. query asks tsnet's MagicDNS
// resolver (dns.Manager.Query); suffix is the tailnet's MagicDNS suffix.
type dnsAnswerer struct {
	query func(ctx context.Context, q []byte, family string, from netip.AddrPort) ([]byte, error)
	// netns is the container's netns path ("" until attached): forwarded
	// queries leave from there ([forwardDNSIn]).
	netns func() string
	// upstreams lists, in order, the resolvers asked for a name outside the
	// tailnet queried at 100.100.100.100 (see [Node.dnsUpstreams]).
	upstreams func(name string) []netip.AddrPort
	// peerShortName reports whether name (one label) is a tailnet node's.
	peerShortName func(ctx context.Context, name string) bool
	suffix        func() string
	inject        func(pkt []byte) error
	logf          func(format string, args ...any)
	slots         chan struct{}
	ctx           context.Context // ends in stop
	cancel        context.CancelFunc

	mu      sync.Mutex // orders wg.Add before stop's Wait
	stopped bool
	wg      sync.WaitGroup
}

// stop cancels the queries in flight and waits for their goroutines.
func (a *dnsAnswerer) stop() {
	a.mu.Lock()
	a.stopped = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
}

// interceptable reports whether the parsed packet is a DNS query the device
// answers itself: not one for MagicDNS's 100.100.100.100 or a peer, which
// tsnet gets. A resolver at a non-peer 100.x address reaches tailscale0 only
// through the DNS rule, like any other outside resolver.
func interceptable(p *packet.Parsed, peers *peerSet) bool {
	if p.IPProto != ipproto.UDP || p.Dst.Port() != 53 {
		return false
	}
	dst := p.Dst.Addr()
	if isQuad100(dst) {
		return true // answered here, so upstreams are asked from the container's netns
	}
	return !peers.tailnetDst(dst) // MagicDNS and tailnet nodes are tsnet's
}

// answer handles one intercepted query packet (its own copy) asynchronously.
func (a *dnsAnswerer) answer(pkt []byte) {
	select {
	case a.slots <- struct{}{}:
	default:
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped {
		<-a.slots
		return
	}
	a.wg.Go(func() {
		defer func() { <-a.slots }()
		var p packet.Parsed
		p.Decode(pkt)
		query := p.Payload()
		resp, err := a.resolve(query, p.Src, p.Dst)
		if a.ctx.Err() != nil || errors.Is(err, errNotForwarded) {
			return
		}
		if err != nil {
			a.logf("tslink: dns: %v", err)
			return
		}
		if err := a.inject(replyPacket(&p, resp)); err != nil && a.ctx.Err() == nil {
			a.logf("tslink: dns: injecting answer: %v", err)
		}
	})
}

// errNotForwarded: the query was dropped rather than forwarded.
var errNotForwarded = errors.New("not forwarded")

func (a *dnsAnswerer) resolve(query []byte, from, to netip.AddrPort) ([]byte, error) {
	ctx, cancel := context.WithTimeout(a.ctx, dnsForwardTimeout)
	defer cancel()
	q, ok := parseQuery(query)
	if !ok {
		return nil, errNotForwarded // not a DNS query: the rule only routes port 53
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	suffix := strings.Trim(a.suffix(), ".")
	switch {
	case suffix != "" && (name == suffix || strings.HasSuffix(name, "."+suffix)), tailnetReverseName(name):
		return a.query(ctx, query, "udp", from)
	case name != "" && !strings.Contains(name, ".") && a.peerShortName(ctx, name):
		// A peer's short name, for any record type, if MagicDNS has an
		// address for it (only then: tsnet forwards names it does not
		// know from the plugin's netns).
		if probe, err := aQuery(q.Name); err == nil {
			if resp, err := a.query(ctx, probe, "udp", from); err == nil && answered(resp) {
				return a.query(ctx, query, "udp", from)
			}
		}
	}
	nsPath := a.netns()
	if isQuad100(to.Addr()) {
		return a.askUpstreams(ctx, nsPath, query, name)
	}
	if err := forwardable(nsPath, to.Addr()); err != nil {
		// e.g. an --internal network, or a packet crafted for the host's
		// loopback: the container could not have asked that resolver.
		return refusedAnswer(query)
	}
	return forwardDNSIn(ctx, nsPath, query, to)
}

// dnsUpstreamTimeout bounds the wait for one upstream of 100.100.100.100
// before the next is asked.
const dnsUpstreamTimeout = 2 * time.Second

// askUpstreams answers a query for name (outside the tailnet) sent to
// 100.100.100.100: the first of [dnsAnswerer.upstreams] that the container
// could reach itself ([forwardable]) and that answers, asked from its netns.
// None reachable (e.g. --internal, or no upstream known): REFUSED.
func (a *dnsAnswerer) askUpstreams(ctx context.Context, nsPath string, query []byte, name string) ([]byte, error) {
	var errs []error
	for _, up := range a.upstreams(name) {
		if err := forwardable(nsPath, up.Addr()); err != nil {
			continue
		}
		upCtx, cancel := context.WithTimeout(ctx, dnsUpstreamTimeout)
		resp, err := forwardDNSIn(upCtx, nsPath, query, up)
		cancel()
		if err == nil {
			return resp, nil
		}
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("no upstream of 100.100.100.100 answered: %w", errors.Join(errs...))
	}
	return refusedAnswer(query)
}

// parseQuery returns the first question of a standard DNS query message.
func parseQuery(msg []byte) (dnsmessage.Question, bool) {
	var parser dnsmessage.Parser
	h, err := parser.Start(msg)
	if err != nil || h.Response || h.OpCode != 0 {
		return dnsmessage.Question{}, false
	}
	q, err := parser.Question()
	return q, err == nil
}

// aQuery builds an A query for name.
func aQuery(name dnsmessage.Name) ([]byte, error) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{RecursionDesired: true})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// tailnetReverseName reports whether name (lowercase, no trailing dot) is a
// reverse-lookup name of a tailnet address: 100.64.0.0/10 or
// fd7a:115c:a1e0::/48.
func tailnetReverseName(name string) bool {
	if v4, ok := strings.CutSuffix(name, ".100.in-addr.arpa"); ok {
		labels := strings.Split(v4, ".")
		second, err := strconv.Atoi(labels[len(labels)-1])
		return err == nil && second >= 64 && second <= 127
	}
	return strings.HasSuffix(name, ".0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa")
}

// answered reports whether a response says the name exists (NOERROR with at
// least one answer).
func answered(resp []byte) bool {
	var parser dnsmessage.Parser
	h, err := parser.Start(resp)
	if err != nil || h.RCode != dnsmessage.RCodeSuccess {
		return false
	}
	if err := parser.SkipAllQuestions(); err != nil {
		return false
	}
	_, err = parser.AnswerHeader()
	return err == nil
}

// dnsForwardMark is the socket mark (SO_MARK) of forwarded queries: the DNS
// rules of [routeDNS] match only packets without it, so a forwarded query
// takes the container's ordinary routes instead of coming back through
// tailscale0.
const dnsForwardMark = 0x10000000

// errRefusedDestination: the query's destination is one the device never
// forwards to; the client gets REFUSED.
var errRefusedDestination = errors.New("destination not forwarded")

// forwardable reports why a query for dst must not be forwarded from the
// netns at nsPath, or nil: loopback, link-local, multicast, broadcast,
// unspecified and MagicDNS's own addresses are refused, and so is anything
// the container's ordinary routing (a lookup without protocol or port, so
// the DNS rules do not apply) does not send to a unicast next hop, e.g. an
// --internal network without a default route, or its own addresses.
func forwardable(nsPath string, dst netip.Addr) error {
	dst = dst.Unmap()
	switch {
	case !dst.IsValid(), dst.IsUnspecified(), dst.IsLoopback(), dst.IsLinkLocalUnicast(),
		dst.IsMulticast(), dst.IsLinkLocalMulticast(), dst.IsInterfaceLocalMulticast(),
		dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}), isQuad100(dst):
		return fmt.Errorf("%w: %v", errRefusedDestination, dst)
	case nsPath == "":
		return fmt.Errorf("%w: %v (not attached to a netns)", errRefusedDestination, dst)
	}
	var rtype int
	err := withNetNSHandle(nsPath, func(h *netlink.Handle) error {
		routes, err := h.RouteGet(dst.AsSlice())
		if err != nil {
			return err
		}
		if len(routes) == 0 {
			return errors.New("no route")
		}
		rtype = routes[0].Type
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: %v (%v)", errRefusedDestination, dst, err)
	}
	if rtype != unix.RTN_UNICAST {
		return fmt.Errorf("%w: %v (route type %d)", errRefusedDestination, dst, rtype)
	}
	return nil
}

// isQuad100 reports whether a is MagicDNS's resolver address.
func isQuad100(a netip.Addr) bool {
	return a == quad100v4 || a == quad100v6
}

var (
	quad100v4 = netip.MustParseAddr("100.100.100.100")
	quad100v6 = netip.MustParseAddr("fd7a:115c:a1e0::53")
)

// forwardDNSIn asks the resolver at to from inside the netns at nsPath, as
// the container's own query would leave: a UDP socket opened there, marked
// [dnsForwardMark], so the container's routes, Docker's NAT and the host's
// firewall apply. The caller checks [forwardable] first.
func forwardDNSIn(ctx context.Context, nsPath string, query []byte, to netip.AddrPort) ([]byte, error) {
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, dnsForwardMark)
		}); err != nil {
			return err
		}
		return serr
	}}
	var c net.Conn
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) (err error) {
		c, err = d.DialContext(ctx, "udp", to.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("asking %v from the container's netns: %w", to, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// refusedAnswer is a REFUSED response to query (header and question).
func refusedAnswer(query []byte) ([]byte, error) {
	var parser dnsmessage.Parser
	h, err := parser.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := parser.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RCode: dnsmessage.RCodeRefused})
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	return b.Finish()
}

// replyPacket builds the IP/UDP packet carrying resp back to the query's
// sender, from the address it asked.
func replyPacket(q *packet.Parsed, resp []byte) []byte {
	if q.IPVersion == 4 {
		h := q.UDP4Header()
		h.ToResponse()
		return packet.Generate(h, resp)
	}
	h := packet.UDP6Header{
		IP6Header: packet.IP6Header{IPProto: ipproto.UDP, Src: q.Dst.Addr(), Dst: q.Src.Addr()},
		SrcPort:   q.Dst.Port(),
		DstPort:   q.Src.Port(),
	}
	return packet.Generate(h, resp)
}

// answerDNS makes the device answer the DNS queries routeDNS sends it.
func (n *Node) answerDNS(st *ipnstate.Status) {
	mgr, ok := n.srv.Sys().DNSManager.GetOK()
	if !ok {
		n.logf("tslink: no DNS manager: Docker's DNS will not know tailnet names")
		return
	}
	n.setDNSSuffix(st)
	ctx, cancel := context.WithCancel(context.Background())
	n.dev.dns.Store(&dnsAnswerer{
		query: mgr.Query,
		netns: n.netnsPath,
		upstreams: func(name string) []netip.AddrPort {
			return n.dnsUpstreams(mgr, name)
		},
		peerShortName: n.peerShortName,
		suffix:        n.dnsSuffix,
		inject:        n.dev.inject,
		logf:          n.logf,
		slots:         make(chan struct{}, maxDNSInFlight),
		ctx:           ctx,
		cancel:        cancel,
	})
}

// dnsUpstreams lists, in order, where a query for name (outside the tailnet)
// sent to 100.100.100.100 goes: the nameservers control sends for it (plain
// IP ones; tsnet's forwarder would pick the same, by
// resolver.GetUpstreamResolvers), else [Config.DNSUpstreams].
func (n *Node) dnsUpstreams(mgr *dns.Manager, name string) []netip.AddrPort {
	var out []netip.AddrPort
	if fqdn, err := dnsname.ToFQDN(name); err == nil {
		for _, r := range mgr.Resolver().GetUpstreamResolvers(fqdn) {
			if ap, ok := r.IPPort(); ok {
				out = append(out, ap)
			}
		}
	}
	if len(out) == 0 && n.cfg.DNSUpstreams != nil {
		out = n.cfg.DNSUpstreams()
	}
	return out
}

// peerShortName reports whether name is the first label of the MagicDNS
// name of this node or one of its peers.
func (n *Node) peerShortName(ctx context.Context, name string) bool {
	st, err := n.lc.Status(ctx)
	if err != nil {
		return false
	}
	is := func(p *ipnstate.PeerStatus) bool {
		if p == nil {
			return false
		}
		first, _, _ := strings.Cut(p.DNSName, ".")
		return strings.EqualFold(first, name)
	}
	if is(st.Self) {
		return true
	}
	for _, p := range st.Peer {
		if is(p) {
			return true
		}
	}
	return false
}
