package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/test/netnstest"
)

// The egress lab: an "internet" host (netns) serving HTTP on 203.0.113.10,
// which answers with the source address it sees. It is reachable from the
// lab netns (the Docker host: 10.244.0.1 <-> 10.244.0.2, and the lab
// forwards for the containers' eth1 of giveEth1, 10.240.0.0/24) and, with
// Laptop.LinkTo, from the laptop (10.243.0.1 <-> 10.243.0.2), which then
// masquerades what it forwards there, as a subnet router or exit node does.
const (
	internetServer = "203.0.113.10"
	laptopOnInet   = "10.243.0.1"
	inetOnLaptop   = "10.243.0.2"
	labOnInet      = "10.244.0.1"
	inetOnLab      = "10.244.0.2"
)

// startEgressInternet makes the internet host and returns its netns.
func startEgressInternet(t *testing.T) *netnstest.NetNS {
	t.Helper()
	inet := netnstest.NewNetNS(t, "inet")
	veth := fmt.Sprintf("egi%d", os.Getpid()%100000)
	netnstest.Run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "lab0", "netns", inet.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", veth).Run() })
	netnstest.Run(t, "ip", "addr", "add", labOnInet+"/24", "dev", veth)
	netnstest.Run(t, "ip", "link", "set", veth, "up")
	netnstest.Run(t, "ip", "route", "replace", internetServer+"/32", "via", inetOnLab)
	t.Cleanup(func() { exec.Command("ip", "route", "del", internetServer+"/32").Run() })
	netnstest.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1") // the lab netns is the test's own
	netnstest.Run(t, "ip", "-n", inet.Name, "addr", "add", inetOnLab+"/24", "dev", "lab0")
	netnstest.Run(t, "ip", "-n", inet.Name, "link", "set", "lab0", "up")
	netnstest.Run(t, "ip", "-n", inet.Name, "addr", "add", internetServer+"/32", "dev", "lo")
	netnstest.Run(t, "ip", "-n", inet.Name, "route", "add", "10.240.0.0/24", "via", labOnInet)
	ln := inet.Listen(t, "tcp", ":80")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "from %s", host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return inet
}

// approve approves every route the node named hostname advertises, once
// control has seen them all, as an admin would.
func approve(t *testing.T, l *lab, hostname string, want ...netip.Prefix) {
	t.Helper()
	err := netnstest.WaitFor(10*time.Second, func() error {
		nodes := l.control.NodesByHostname(hostname)
		if len(nodes) != 1 {
			return fmt.Errorf("%d nodes named %s", len(nodes), hostname)
		}
		adv, err := l.control.AdvertisedRoutes(nodes[0].NodeKey)
		if err != nil {
			return err
		}
		if len(adv) < len(want) {
			return fmt.Errorf("%s advertises %v, want %v", hostname, adv, want)
		}
		return l.control.ApproveRoutes(nodes[0].NodeKey, want)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// httpFrom fetches http://<internetServer or addr>/ from ns and returns
// the source address the server saw.
func httpFrom(ns *netnstest.NetNS, addr string) (string, error) {
	out, err := ns.HTTPGet("http://"+addr+"/", "", 3*time.Second)
	if err != nil {
		return "", err
	}
	_, src, _ := strings.Cut(out, "from ")
	return src, nil
}

// TestEgressThroughLaptop: the laptop advertises a subnet route and an exit
// node, control approves them. A node asking for an exit node that control
// does not offer yet fails to start, naming it, and leaves nothing behind.
// Then a container with ts.accept-routes and ts.exit-node=laptop reaches the
// laptop's subnet through tailscale0, and the internet through the laptop
// (the internet host sees the laptop's address, not the Docker host's); a
// connection that comes in on eth1 (a published port) is answered through
// eth1; with tailscale0 unable to carry traffic there is no internet at
// all, not even through eth1.
func TestEgressThroughLaptop(t *testing.T) {
	l := newLab(t)
	inet := startEgressInternet(t)
	l.laptop.LinkTo(t, inet, laptopOnInet, inetOnLaptop, internetServer)

	cfg := l.config("egress")
	cfg.Egress = nodespec.Egress{AcceptRoutes: true, ExitNode: "laptop"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if n, err := Start(ctx, cfg); err == nil {
		n.Close(context.Background())
		t.Fatal("Start with an exit node control does not offer succeeded")
	} else if !errors.Is(err, ErrExitNodeNotOffered) || !strings.Contains(err.Error(), "ts.exit-node=laptop") {
		t.Fatalf("Start: %v; want %v naming ts.exit-node=laptop", err, ErrExitNodeNotOffered)
	} else {
		t.Logf("exit node not offered: %v", err)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", HostTUNName(cfg.EndpointID)).CombinedOutput(); strings.Contains(string(out), HostTUNName(cfg.EndpointID)+":") {
		t.Errorf("failed start left its TUN: %s", out)
	}

	subnet := netip.MustParsePrefix("10.243.0.0/24")
	if out, err := l.laptop.Tailscale(ctx, "set", "--advertise-routes="+subnet.String(), "--advertise-exit-node"); err != nil {
		t.Fatalf("laptop advertise: %v %s", err, out)
	}
	approve(t, l, "laptop", subnet, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))

	var n *Node
	var ctr *netnstest.NetNS
	if err := netnstest.WaitFor(10*time.Second, func() error {
		c := cfg
		c.EndpointID = randomID()
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer scancel()
		var err error
		if n, err = Start(sctx, c); err != nil {
			return err
		}
		t.Cleanup(func() { n.Close(context.Background()) })
		return nil
	}); err != nil {
		t.Fatalf("Start after approval: %v", err)
	}
	ctr = newCtr(t)
	giveEth1(t, ctr, netip.MustParseAddr(internetServer))
	// Before the node attaches, the internet is Docker's: through eth1.
	if src, err := httpFrom(ctr, internetServer); err != nil || src != "10.240.0.2" {
		t.Fatalf("internet through eth1 before attach: saw %q, %v; want 10.240.0.2", src, err)
	}
	if err := n.Attach(ctr.Path); err != nil {
		t.Fatalf("Attach: %v", err)
	}

	// The subnet route, through tailscale0 (and masqueraded by the laptop).
	if err := netnstest.WaitFor(5*time.Second, func() error {
		routes := tunRoutes(t, ctr)
		if !strings.Contains(routes, subnet.String()+" dev "+TUNName) || !strings.Contains(routes, "unreachable "+subnet.String()+" metric 4294967295") {
			return fmt.Errorf("no route %v via %s with its unreachable fallback:\n%s", subnet, TUNName, routes)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if src, err := httpFrom(ctr, inetOnLaptop); err != nil || src != laptopOnInet {
		t.Errorf("host %s in the laptop's subnet: saw %q, %v; want %s", inetOnLaptop, src, err, laptopOnInet)
	}
	// The container's own networks stay direct: dockerd resolves the
	// default gateway with a route lookup after the node attached.
	if out, err := ctr.Exec(context.Background(), "ip", "route", "get", "10.240.0.1"); err != nil || !strings.Contains(string(out), "dev eth1") {
		t.Errorf("route to eth1's gateway: %s %v", out, err)
	}
	// The internet, through the exit node.
	if src, err := httpFrom(ctr, internetServer); err != nil || src != laptopOnInet {
		t.Errorf("internet through the exit node: the server saw %q (%v); want the laptop's %s, not the host's", src, err, laptopOnInet)
	} else {
		t.Logf("internet host saw %s (the laptop)", src)
	}

	// A connection in on eth1 (as Docker forwards a published port) is
	// answered through eth1, from a source beyond eth1's own subnet.
	ln := ctr.Listen(t, "tcp", ":8080")
	go echoServer(ln)
	var published error
	inet.Do(func() error {
		published = dialEcho(func(ctx context.Context, network, addr string) (netConn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}, "10.240.0.2:8080")
		return nil
	})
	if published != nil {
		t.Errorf("published port (internet -> eth1 -> container): %v", published)
	}

	// tailscale0 without carrier (the plugin away): no internet at all.
	n.dev.Device.Close()
	if err := netnstest.WaitFor(5*time.Second, func() error {
		out, _ := ctr.Exec(context.Background(), "ip", "link", "show", TUNName)
		if !strings.Contains(string(out), "NO-CARRIER") {
			return fmt.Errorf("%s has carrier: %s", TUNName, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := dialUnreachable(ctr, netip.MustParseAddrPort(internetServer+":80")); err != nil {
		t.Errorf("internet while tailscale0 cannot carry traffic: %v", err)
	}
}

// TestContainerAsSubnetRouterAndExitNode: a container advertising its eth1
// subnet and an exit node, approved by control, carries the laptop's
// traffic to that subnet and to the internet: forwarded and masqueraded in
// the container's netns (the destinations see the container's eth1
// address), with forwarding switched on there.
func TestContainerAsSubnetRouterAndExitNode(t *testing.T) {
	l := newLab(t)
	startEgressInternet(t)
	subnet := netip.MustParsePrefix("10.240.0.0/24")
	cfg := l.config("router")
	cfg.Egress = nodespec.Egress{AdvertiseRoutes: []netip.Prefix{subnet}, AdvertiseExitNode: true}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(context.Background()) })
	ctr := newCtr(t)
	giveEth1(t, ctr, netip.MustParseAddr(internetServer))
	if err := n.Attach(ctr.Path); err != nil {
		t.Fatal(err)
	}
	// A host on the container's eth1 subnet (the Docker host's side).
	hostLn, err := net.Listen("tcp", "10.240.0.1:8081")
	if err != nil {
		t.Fatal(err)
	}
	hostSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "from %s", host)
	})}
	go hostSrv.Serve(hostLn)
	t.Cleanup(func() { hostSrv.Close() })

	if out, _ := ctr.Exec(ctx, "sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(string(out)) != "1" {
		t.Errorf("net.ipv4.ip_forward in the container: %q, want 1", out)
	}

	approve(t, l, "router", subnet, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
	ctrIP, _ := n.Addrs()
	if out, err := l.laptop.Tailscale(ctx, "set", "--accept-routes"); err != nil {
		t.Fatalf("laptop --accept-routes: %v %s", err, out)
	}
	if err := netnstest.WaitFor(10*time.Second, func() error {
		src, err := httpFrom(l.laptop.NS, "10.240.0.1:8081")
		if err == nil && src != "10.240.0.2" {
			err = fmt.Errorf("the host saw %s, want the container's eth1 10.240.0.2", src)
		}
		return err
	}); err != nil {
		t.Errorf("laptop -> subnet %v through the container: %v", subnet, err)
	}
	if out, err := l.laptop.Tailscale(ctx, "set", "--exit-node="+ctrIP.String()); err != nil {
		t.Fatalf("laptop --exit-node: %v %s", err, out)
	}
	if err := netnstest.WaitFor(10*time.Second, func() error {
		src, err := httpFrom(l.laptop.NS, internetServer)
		if err == nil && src != "10.240.0.2" {
			err = fmt.Errorf("the internet host saw %s, want the container's eth1 10.240.0.2", src)
		}
		return err
	}); err != nil {
		t.Errorf("laptop -> internet through the container as exit node: %v", err)
	}
}
