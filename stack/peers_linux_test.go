package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// tunRoutes returns `ip -4 route show table main` of ctr.
func tunRoutes(t *testing.T, ctr *netnstest.NetNS) string {
	t.Helper()
	out, err := ctr.Exec(context.Background(), "ip", "-4", "route", "show", "table", "main")
	if err != nil {
		t.Fatalf("ip route: %v %s", err, out)
	}
	return string(out)
}

// peerRouted reports whether ctr routes ip to tailscale0 with its
// unreachable fallback (both present) or neither (want false).
func peerRouted(routes string, ip netip.Addr) (routed, fallback bool) {
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == ip.String() && f[1] == "dev" && f[2] == TUNName:
			routed = true
		case len(f) >= 2 && f[0] == "unreachable" && f[1] == ip.String() && strings.Contains(line, "metric 4294967295"):
			fallback = true
		}
	}
	return routed, fallback
}

// TestPeerRoutesFollowNetmap: tailscale0 routes 100.100.100.100 and each
// peer's /32 (each with its unreachable fallback), not 100.64.0.0/10; a
// peer that appears or leaves the netmap gains or loses its route within
// 2 s; a host and a resolver at a non-peer 100.x address beyond the
// container's eth1 stay reachable.
func TestPeerRoutesFollowNetmap(t *testing.T) {
	l := newLab(t)
	internet := netip.MustParseAddr("10.239.0.99")
	_, ctr := l.startNode(t, l.config("peera"))
	giveEth1(t, ctr, internet)

	routes := tunRoutes(t, ctr)
	if strings.Contains(routes, "100.64.0.0/10") {
		t.Errorf("the whole 100.64.0.0/10 is routed:\n%s", routes)
	}
	for _, ip := range []netip.Addr{netip.MustParseAddr("100.100.100.100"), l.laptop.IPv4(t)} {
		if r, f := peerRouted(routes, ip); !r || !f {
			t.Errorf("%v: route via %s %v, unreachable fallback %v; want both:\n%s", ip, TUNName, r, f, routes)
		}
	}

	// A host and a resolver numbered in CGNAT space on the host's side.
	const cgnatHost = "100.100.2.2"
	netnstest.Run(t, "ip", "addr", "add", cgnatHost+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", cgnatHost+"/32", "dev", "lo").Run() })
	ln, err := net.Listen("tcp", cgnatHost+":7002")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go echoServer(ln)
	fakeResolver(t, cgnatHost+":53", internet)
	if err := dialEcho(ctr.Dial, cgnatHost+":7002"); err != nil {
		t.Errorf("non-peer %s beyond eth1: %v", cgnatHost, err)
	}
	if out, err := nslookup(ctr, "www.example.test", cgnatHost); err != nil || !strings.Contains(out, internet.String()) {
		t.Errorf("resolver at non-peer %s: %v\n%s", cgnatHost, err, out)
	}

	// A peer appears.
	b, _ := l.startNode(t, l.config("peerb"))
	bIP, _ := b.Addrs()
	began := time.Now()
	if err := netnstest.WaitFor(10*time.Second, func() error {
		if r, f := peerRouted(tunRoutes(t, ctr), bIP); !r || !f {
			return fmt.Errorf("route %v, fallback %v", r, f)
		}
		return nil
	}); err != nil {
		t.Fatalf("new peer %v: %v", bIP, err)
	}
	t.Logf("new peer's route after %v (from its Start returning)", time.Since(began).Round(time.Millisecond))
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("new peer's route took %v, want within 2 s", took)
	}
	// The peer leaves the netmap.
	an := l.control.NodesByHostname("peera")
	bn := l.control.NodesByHostname("peerb")
	if len(an) != 1 || len(bn) != 1 {
		t.Fatalf("control lists %d peera, %d peerb", len(an), len(bn))
	}
	if err := l.control.RemovePeer(an[0].NodeKey, bn[0].ID); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	if err := netnstest.WaitFor(10*time.Second, func() error {
		if r, f := peerRouted(tunRoutes(t, ctr), bIP); r || f {
			return fmt.Errorf("route %v, fallback %v", r, f)
		}
		return nil
	}); err != nil {
		t.Fatalf("removed peer %v: %v", bIP, err)
	}
	t.Logf("removed peer's route gone after %v", time.Since(began).Round(time.Millisecond))
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("removed peer's route took %v to go, want within 2 s", took)
	}
	if r, f := peerRouted(tunRoutes(t, ctr), l.laptop.IPv4(t)); !r || !f {
		t.Errorf("the laptop's route went too (route %v, fallback %v)", r, f)
	}
}

// TestPeerRoutesWhenWatchBeginsBeforeNetmap: a node whose Start returned
// logged in but before its first netmap (control holds the map response
// longer than ts.timeout, as a loaded control or a restore does) subscribes
// to the IPN bus before that netmap, which then comes as a SelfChange with
// every peer in PeersChanged, not as an initial NetMap; tailscale0 still
// gets the peers' routes when it comes.
func TestPeerRoutesWhenWatchBeginsBeforeNetmap(t *testing.T) {
	l := newLab(t)
	const hold = 4 * time.Second
	l.control.HoldFirstMapResponse(hold)
	cfg := l.config("early")
	cfg.Wait = time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	n, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	if v4, _ := n.Addrs(); v4.IsValid() {
		t.Fatalf("Start returned after %v with address %v: the netmap was not held, the test proves nothing", time.Since(began), v4)
	}
	ctr := newCtr(t)
	if err := n.Attach(ctr.Path); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	laptop := l.laptop.IPv4(t)
	if err := netnstest.WaitFor(hold+10*time.Second, func() error {
		if v4, _ := n.Addrs(); !v4.IsValid() {
			return fmt.Errorf("no address yet")
		}
		if r, f := peerRouted(tunRoutes(t, ctr), laptop); !r || !f {
			return fmt.Errorf("laptop %v: route %v, fallback %v", laptop, r, f)
		}
		return nil
	}); err != nil {
		t.Fatalf("after the held netmap: %v\n%s", err, tunRoutes(t, ctr))
	}
	if out, err := ctr.Exec(context.Background(), "busybox", "ping", "-c", "1", "-W", "3", laptop.String()); err != nil {
		t.Errorf("container pings laptop %v: %v\n%s", laptop, err, out)
	}
}
