package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
	"tailscale.com/net/packet"
	"tailscale.com/tailcfg"
	"tailscale.com/types/dnstype"
	"tailscale.com/types/ipproto"

	"github.com/tslink/tslink/test/netnstest"
)

// fakeResolver answers every A query with addr on listen, standing in for
// the host's resolver (Docker's embedded DNS forwards there).
func fakeResolver(t *testing.T, listen string, addr netip.Addr) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go netnstest.ServeDNS(pc, addr, nil)
}

func nslookup(ctr *netnstest.NetNS, name, server string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ctr.Exec(ctx, "busybox", "nslookup", name, server)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return string(out), nil
}

// Addresses of the container's uplink (a veth to the test's netns, standing
// in for the host, as Docker's bridge is) and of a resolver on the host that
// the container reaches only through its default route.
const (
	uplinkHost   = "10.240.0.1"
	uplinkCtr    = "10.240.0.2"
	hostResolver = "10.241.0.53"
)

// addUplink gives ctr a veth to the test's netns and a default route over
// it, as a container on a non-internal Docker network has; hostResolver is
// then reachable through it.
func addUplink(t *testing.T, ctr *netnstest.NetNS) {
	t.Helper()
	host, peer := "tsl-up-h", "tsl-up-c"
	exec.Command("ip", "link", "del", host).Run()
	netnstest.Run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	netnstest.Run(t, "ip", "link", "set", peer, "netns", ctr.Name)
	netnstest.Run(t, "ip", "addr", "add", uplinkHost+"/24", "dev", host)
	netnstest.Run(t, "ip", "link", "set", host, "up")
	netnstest.Run(t, "ip", "-n", ctr.Name, "addr", "add", uplinkCtr+"/24", "dev", peer)
	netnstest.Run(t, "ip", "-n", ctr.Name, "link", "set", peer, "up")
	netnstest.Run(t, "ip", "-n", ctr.Name, "route", "add", "default", "via", uplinkHost)
}

// addHostAddr adds addr/32 to the test netns's loopback until t ends.
func addHostAddr(t *testing.T, addr string) {
	t.Helper()
	netnstest.Run(t, "ip", "addr", "add", addr+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", addr+"/32", "dev", "lo").Run() })
}

// recordingResolver is [fakeResolver] that also records each query's source
// address.
func recordingResolver(t *testing.T, listen string, addr netip.Addr) *queryLog {
	t.Helper()
	pc, err := net.ListenPacket("udp4", listen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	ql := &queryLog{}
	go netnstest.ServeDNS(recordingConn{pc, ql}, addr, nil)
	return ql
}

type queryLog struct {
	mu   sync.Mutex
	from []string
}

func (q *queryLog) sources() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.from)
}

type recordingConn struct {
	net.PacketConn
	log *queryLog
}

func (c recordingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.log.mu.Lock()
		c.log.from = append(c.log.from, from.(*net.UDPAddr).IP.String())
		c.log.mu.Unlock()
	}
	return n, from, err
}

// TestDNSQueriesToAnyResolverKnowTailnetNames: a query the container sends to
// an ordinary resolver (as Docker's embedded DNS forwards) is answered for
// tailnet names by MagicDNS and for other names by that resolver, which the
// tailnet's DNS config does not know; the resolver sees the query come from
// the container's own address, and a container without a route to it (like
// an --internal network) gets nothing from it.
func TestDNSQueriesToAnyResolverKnowTailnetNames(t *testing.T) {
	l := newLab(t)
	internet := netip.MustParseAddr("10.239.0.99")
	addHostAddr(t, hostResolver)
	queries := recordingResolver(t, hostResolver+":53", internet)
	_, ctr := l.startNode(t, l.config("dnsctr"))
	laptopIP := l.laptop.IPv4(t).String()
	// Like an --internal network: no route out, so nothing is forwarded
	// (tailnet names still resolve, below).
	if out, err := nslookup(ctr, "example.com", hostResolver); err == nil && strings.Contains(out, internet.String()) {
		t.Errorf("a container without a route to the resolver got an answer from it:\n%s", out)
	}
	if got := queries.sources(); len(got) != 0 {
		t.Errorf("the resolver got queries from %v for a container without a route to it", got)
	}
	// A default route, as Docker's bridge gives (packets to port 53 still
	// go through tailscale0 by the DNS rule).
	addUplink(t, ctr)
	cases := []struct{ name, want string }{
		{l.laptop.Hostname, laptopIP},
		{l.laptop.Hostname + "." + l.control.MagicDNSDomain(), laptopIP},
		{"example.com", internet.String()},
	}
	for _, tc := range cases {
		var out string
		err := waitFor(10*time.Second, func() (err error) {
			out, err = nslookup(ctr, tc.name, hostResolver)
			if err == nil && !strings.Contains(out, tc.want) {
				err = fmt.Errorf("answer lacks %s:\n%s", tc.want, out)
			}
			return err
		})
		if err != nil {
			t.Errorf("nslookup %s %s: %v", tc.name, hostResolver, err)
		}
	}
	got := queries.sources()
	if len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return s != uplinkCtr }) {
		t.Errorf("forwarded queries came from %v, want only the container's own address %s", got, uplinkCtr)
	}
}

// TestDNSNeverForwardedToTheHostsLoopback: a query the container writes
// straight onto tailscale0 (CAP_NET_RAW is in Docker's default set) for a
// resolver on the host's loopback, or a link-local or multicast address, is
// never asked there; the same packet for a resolver the container can
// reach is.
func TestDNSNeverForwardedToTheHostsLoopback(t *testing.T) {
	l := newLab(t)
	internet := netip.MustParseAddr("10.239.0.99")
	loopback := recordingResolver(t, "127.0.0.77:53", internet)
	addHostAddr(t, hostResolver)
	reachable := recordingResolver(t, hostResolver+":53", internet)
	n, ctr := l.startNode(t, l.config("dnsraw"))
	addUplink(t, ctr)
	src, _ := n.Addrs()
	for _, dst := range []string{"127.0.0.77", "169.254.169.254", "224.0.0.251", "255.255.255.255", "0.0.0.0", hostResolver} {
		if err := writeOnTUN(ctr, src, netip.MustParseAddr(dst), "secret.corp.internal."); err != nil {
			t.Fatalf("writing a query for %s onto %s: %v", dst, TUNName, err)
		}
	}
	if err := waitFor(10*time.Second, func() error {
		if len(reachable.sources()) == 0 {
			return errors.New("the reachable resolver got no query")
		}
		return nil
	}); err != nil {
		t.Fatal(err) // the packets were not intercepted at all
	}
	time.Sleep(500 * time.Millisecond)
	if got := loopback.sources(); len(got) != 0 {
		t.Errorf("the host's loopback resolver was asked (from %v)", got)
	}
	if got := reachable.sources(); slices.ContainsFunc(got, func(s string) bool { return s != uplinkCtr }) {
		t.Errorf("forwarded queries came from %v, want only %s", got, uplinkCtr)
	}
	// The DNS rules skip marked packets, and setting them up again keeps
	// one of each.
	if err := routeDNS(ctr.Path, src); err != nil {
		t.Fatal(err)
	}
	out, _ := ctr.Exec(context.Background(), "ip", "rule")
	for _, prio := range []string{"5352:", "5353:"} {
		var lines []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, prio) {
				lines = append(lines, line)
			}
		}
		if len(lines) != 1 || !strings.Contains(lines[0], fmt.Sprintf("fwmark 0/%#x", dnsForwardMark)) {
			t.Errorf("rules at %s %q, want one matching fwmark 0/%#x:\n%s", prio, lines, dnsForwardMark, out)
		}
	}
}

// writeOnTUN writes an IPv4 UDP DNS query for name from src to dst:53
// straight onto tailscale0 in ctr, through an AF_PACKET socket as a
// container with CAP_NET_RAW can.
func writeOnTUN(ctr *netnstest.NetNS, src, dst netip.Addr, name string) error {
	q, err := aQuery(dnsmessage.MustNewName(name))
	if err != nil {
		return err
	}
	h := packet.UDP4Header{
		IP4Header: packet.IP4Header{IPProto: ipproto.UDP, Src: src, Dst: dst, IPID: 1},
		SrcPort:   40000,
		DstPort:   53,
	}
	pkt := packet.Generate(h, q)
	return ctr.Do(func() error {
		l, err := netlink.LinkByName(TUNName)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_IP))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, proto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: htons(unix.ETH_P_IP)})
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestQuad100AsksUpstreamsFromTheContainer: with 100.100.100.100 as the
// container's resolver (a host running Tailscale with MagicDNS, or --dns
// 100.100.100.100), tailnet names resolve from the node, other names from
// Config.DNSUpstreams, or from control's nameservers once it sends them,
// asked from the container's netns; a container without a route out (like
// --internal) gets no internet names.
func TestQuad100AsksUpstreamsFromTheContainer(t *testing.T) {
	l := newLab(t)
	const controlResolver = "10.241.0.54"
	fromSetting, fromControl := netip.MustParseAddr("10.239.0.99"), netip.MustParseAddr("10.239.0.98")
	addHostAddr(t, hostResolver)
	addHostAddr(t, controlResolver)
	settingQueries := recordingResolver(t, hostResolver+":53", fromSetting)
	controlQueries := recordingResolver(t, controlResolver+":53", fromControl)
	cfg := l.config("quad100")
	cfg.DNSUpstreams = func() []netip.AddrPort { return []netip.AddrPort{netip.MustParseAddrPort(hostResolver + ":53")} }
	_, ctr := l.startNode(t, cfg)
	laptopIP := l.laptop.IPv4(t).String()
	const quad100 = "100.100.100.100"
	lookup := func(name, want string) {
		t.Helper()
		var out string
		err := waitFor(10*time.Second, func() (err error) {
			out, err = nslookup(ctr, name, quad100)
			if err == nil && !strings.Contains(out, want) {
				err = fmt.Errorf("answer lacks %s:\n%s", want, out)
			}
			return err
		})
		if err != nil {
			t.Errorf("nslookup %s %s: %v", name, quad100, err)
		}
	}
	lookup(l.laptop.Hostname, laptopIP)
	if out, err := nslookup(ctr, "example.com", quad100); err == nil && strings.Contains(out, fromSetting.String()) {
		t.Errorf("a container without a route out got an internet name:\n%s", out)
	}
	if got := settingQueries.sources(); len(got) != 0 {
		t.Errorf("the upstream got queries from %v for a container without a route to it", got)
	}
	addUplink(t, ctr)
	lookup("example.com", fromSetting.String())
	lookup(l.laptop.Hostname, laptopIP)
	lookup(l.laptop.Hostname+"."+l.control.MagicDNSDomain(), laptopIP)
	if got := settingQueries.sources(); len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return s != uplinkCtr }) {
		t.Errorf("upstream queries came from %v, want only the container's own address %s", got, uplinkCtr)
	}
	// Control's nameservers come first once it sends them.
	l.control.SetDNSConfig(&tailcfg.DNSConfig{Proxied: true, Domains: []string{l.control.MagicDNSDomain()}, Resolvers: []*dnstype.Resolver{{Addr: controlResolver}}})
	lookup("example.org", fromControl.String())
	if got := controlQueries.sources(); len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return s != uplinkCtr }) {
		t.Errorf("control's nameserver got queries from %v, want only the container's own address %s", got, uplinkCtr)
	}
	lookup(l.laptop.Hostname, laptopIP)
}
