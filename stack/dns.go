package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/packet"
	"tailscale.com/types/ipproto"
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
//     from the plugin's netns, so internet names resolve whether or not the
//     tailnet's DNS config has upstream resolvers (with a custom TUN tsnet has
//     no OS resolver to fall back on).
// Queries addressed to 100.100.100.100 itself (`--dns 100.100.100.100`) pass
// to tsnet untouched.

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
	// routable reports whether the container could reach dst itself
	// (without the DNS rule): only then is a query forwarded for it.
	routable func(dst netip.Addr) bool
	suffix   func() string
	inject   func(pkt []byte) error
	logf     func(format string, args ...any)
	slots    chan struct{}
	ctx      context.Context // ends in stop
	cancel   context.CancelFunc

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
	return !peers.tailnetDst(p.Dst.Addr())
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
	case name != "" && !strings.Contains(name, "."):
		// A peer's short name, for any record type, if MagicDNS has an
		// address for it.
		if probe, err := aQuery(q.Name); err == nil {
			if resp, err := a.query(ctx, probe, "udp", from); err == nil && answered(resp) {
				return a.query(ctx, query, "udp", from)
			}
		}
	}
	if !a.routable(to.Addr()) {
		// e.g. an --internal network: the container could not have asked
		// that resolver itself.
		return nil, errNotForwarded
	}
	return forwardDNS(ctx, query, to)
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

// forwardDNS asks the resolver the container addressed, from this process's
// netns.
func forwardDNS(ctx context.Context, query []byte, to netip.AddrPort) ([]byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", to.String())
	if err != nil {
		return nil, err
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
		routable: func(dst netip.Addr) bool {
			nsPath := n.netnsPath()
			return nsPath != "" && routable(nsPath, dst)
		},
		suffix: n.dnsSuffix,
		inject: n.dev.inject,
		logf:   n.logf,
		slots:  make(chan struct{}, maxDNSInFlight),
		ctx:    ctx,
		cancel: cancel,
	})
}
