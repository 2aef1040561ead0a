package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// outsideResolver is a resolver beyond the container's default gateway, as
// the host's resolvers are for Docker's embedded DNS.
const outsideResolver = "10.241.0.53"

// giveEth1 wires ctr to the lab netns the way docker_gwbridge does: a veth
// (eth1 10.240.0.2/24 in ctr, the returned name with 10.240.0.1 in the lab)
// and ctr's default route through it. The lab answers DNS on
// outsideResolver with internet for every A query.
func giveEth1(t *testing.T, ctr *netnstest.NetNS, internet netip.Addr) string {
	t.Helper()
	outer := fmt.Sprintf("awy%d", os.Getpid()%100000)
	netnstest.Run(t, "ip", "link", "add", outer, "type", "veth", "peer", "name", "eth1", "netns", ctr.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", outer).Run() })
	netnstest.Run(t, "ip", "addr", "add", "10.240.0.1/24", "dev", outer)
	netnstest.Run(t, "ip", "link", "set", outer, "up")
	netnstest.Run(t, "ip", "addr", "add", outsideResolver+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", outsideResolver+"/32", "dev", "lo").Run() })
	netnstest.Run(t, "ip", "-n", ctr.Name, "addr", "add", "10.240.0.2/24", "dev", "eth1")
	netnstest.Run(t, "ip", "-n", ctr.Name, "link", "set", "eth1", "up")
	netnstest.Run(t, "ip", "-n", ctr.Name, "route", "add", "default", "via", "10.240.0.1")
	fakeResolver(t, outsideResolver+":53", internet)
	return outer
}

// dialUnreachable dials dst from ctr and checks it fails at once with "no
// route to host" (an unreachable route), not by timing out.
func dialUnreachable(ctr *netnstest.NetNS, dst netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	began := time.Now()
	c, err := ctr.Dial(ctx, "tcp", dst.String())
	took := time.Since(began)
	if err == nil {
		c.Close()
		return fmt.Errorf("%v: connected", dst)
	}
	if !errors.Is(err, syscall.EHOSTUNREACH) || took > 500*time.Millisecond {
		return fmt.Errorf("%v: %v after %v; want no route to host at once", dst, err, took.Round(time.Millisecond))
	}
	return nil
}

// TestTailnetUnreachableWhilePluginAway: while the plugin process is gone
// (tailscale0 persists without carrier), tailnet destinations are
// unreachable in the container and nothing for them leaves by its default
// route; UDP DNS to an outside resolver goes out that route and is
// answered; once a new process adopts tailscale0, the tailnet and MagicDNS
// for the outside resolver's queries work again.
func TestTailnetUnreachableWhilePluginAway(t *testing.T) {
	l := newLab(t)
	internet := netip.MustParseAddr("10.239.0.99")
	ctr := newCtr(t)
	capture := netnstest.StartCapture(t, giveEth1(t, ctr, internet))
	go echoServer(l.laptop.NS.Listen(t, "tcp", ":7001"))
	laptop4, laptop6 := l.laptop.IPv4(t), l.laptop.IPv6(t)
	laptopName := l.laptop.Hostname + "." + l.control.MagicDNSDomain()
	tailnetWorks := func() error {
		if err := dialEcho(ctr.Dial, netip.AddrPortFrom(laptop4, 7001).String()); err != nil {
			return err
		}
		out, err := nslookup(ctr, laptopName, outsideResolver)
		if err == nil && !strings.Contains(out, laptop4.String()) {
			err = fmt.Errorf("nslookup %s %s: answer lacks %v:\n%s", laptopName, outsideResolver, laptop4, out)
		}
		return err
	}

	cfg := l.config("away")
	first, _ := startHelper(t, cfg, ctr.Path)
	if err := waitFor(15*time.Second, tailnetWorks); err != nil {
		t.Fatalf("before the plugin goes away: %v", err)
	}

	first.Process.Kill()
	first.Wait()
	killed := time.Now()
	err := waitFor(5*time.Second, func() error {
		out, _ := ctr.Exec(context.Background(), "ip", "link", "show", TUNName)
		if !strings.Contains(string(out), "NO-CARRIER") {
			return fmt.Errorf("%s still has carrier: %s", TUNName, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s lost carrier %v after the kill", TUNName, time.Since(killed).Round(time.Millisecond))
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(laptop4, 7001),
		netip.AddrPortFrom(laptop6, 7001),
		netip.MustParseAddrPort("100.100.100.100:53"),
	} {
		if err := dialUnreachable(ctr, dst); err != nil {
			t.Errorf("plugin away: %v", err)
		}
	}
	viaEth1 := len(capture.ToPort(syscall.IPPROTO_UDP, 53))
	if out, err := nslookup(ctr, "www.example.test", outsideResolver); err != nil || !strings.Contains(out, internet.String()) {
		t.Errorf("plugin away: DNS to the outside resolver: %v\n%s", err, out)
	}
	if len(capture.ToPort(syscall.IPPROTO_UDP, 53)) == viaEth1 {
		t.Errorf("plugin away: the DNS query did not leave by eth1")
	}

	adopt := cfg
	adopt.AdoptNetNS = ctr.Path
	startHelper(t, adopt, "")
	back := time.Now()
	if err := waitFor(15*time.Second, tailnetWorks); err != nil {
		t.Errorf("after a new process adopted %s: %v", TUNName, err)
	}
	t.Logf("tailnet and MagicDNS back %v after the new process was up", time.Since(back).Round(time.Millisecond))
	if leaked := capture.To(netnstest.TailnetPrefixes...); len(leaked) > 0 {
		t.Errorf("tailnet packets left by eth1: %v", leaked)
	}
}

// TestFailedAttachLeavesTailnetUnreachable: an attach that fails after the
// container's netns exists leaves the tailnet unreachable there, not routed
// out of the default route.
func TestFailedAttachLeavesTailnetUnreachable(t *testing.T) {
	l := newLab(t)
	ctr := newCtr(t)
	capture := netnstest.StartCapture(t, giveEth1(t, ctr, netip.MustParseAddr("10.239.0.99")))
	// The name is taken, so the node's TUN cannot become tailscale0.
	netnstest.Run(t, "ip", "-n", ctr.Name, "link", "add", TUNName, "type", "veth", "peer", "name", "taken0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Start(ctx, l.config("noattach"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	if err := n.Attach(ctr.Path); err == nil {
		t.Fatal("Attach succeeded with tailscale0 taken")
	}
	if err := dialUnreachable(ctr, netip.AddrPortFrom(l.laptop.IPv4(t), 7001)); err != nil {
		t.Error(err)
	}
	if err := dialUnreachable(ctr, netip.AddrPortFrom(l.laptop.IPv6(t), 7001)); err != nil {
		t.Error(err)
	}
	if leaked := capture.To(netnstest.TailnetPrefixes...); len(leaked) > 0 {
		t.Errorf("tailnet packets left by eth1: %v", leaked)
	}
}

// TestFallbackRoutesBeforeTheNode: a container netns whose node is not up
// yet (a node started after its container) gets the tailnet unreachable,
// not routed out of its default route.
func TestFallbackRoutesBeforeTheNode(t *testing.T) {
	netnstest.RequireRoot(t)
	ctr := newCtr(t)
	capture := netnstest.StartCapture(t, giveEth1(t, ctr, netip.MustParseAddr("10.239.0.99")))
	if err := InstallFallbackRoutes(ctr.Path); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"100.64.0.1:7001", "100.100.100.100:53", "[fd7a:115c:a1e0::1]:7001"} {
		if err := dialUnreachable(ctr, netip.MustParseAddrPort(dst)); err != nil {
			t.Error(err)
		}
	}
	if out, err := nslookup(ctr, "www.example.test", outsideResolver); err != nil || !strings.Contains(out, "10.239.0.99") {
		t.Errorf("DNS to the outside resolver: %v\n%s", err, out)
	}
	if leaked := capture.To(netnstest.TailnetPrefixes...); len(leaked) > 0 {
		t.Errorf("tailnet packets left by eth1: %v", leaked)
	}
}
