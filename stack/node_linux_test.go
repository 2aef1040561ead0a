package stack

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// echoServer accepts on ln and answers each line with "<remote addr> <line>".
func echoServer(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "%s %s\n", c.RemoteAddr(), sc.Text())
			}
		}()
	}
}

// roundTrip sends line over c and returns the reply.
func roundTrip(c net.Conn, line string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return "", err
	}
	r, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(r), err
}

func TestNodeReachesLaptopBothWays(t *testing.T) {
	l := newLab(t)
	began := time.Now()
	n, ctr := l.startNode(t, l.config("web"))
	v4, v6 := n.Addrs()
	t.Logf("node up and attached in %v: %v %v", time.Since(began), v4, v6)
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("node addrs %v %v; want both families", v4, v6)
	}

	// Addresses really assigned in the container netns.
	out, err := ctr.Exec(context.Background(), "ip", "addr", "show", "dev", TUNName)
	if err != nil {
		t.Fatalf("ip addr: %v %s", err, out)
	}
	for _, want := range []string{v4.String() + "/32", v6.String() + "/128"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tailscale0 lacks %s:\n%s", want, out)
		}
	}
	routes, _ := ctr.Exec(context.Background(), "ip", "-4", "route")
	if !strings.Contains(string(routes), "100.100.100.100 dev tailscale0") || !strings.Contains(string(routes), l.laptop.IPv4(t).String()+" dev tailscale0") {
		t.Errorf("no route for MagicDNS or the laptop:\n%s", routes)
	}

	laptop4, laptop6 := l.laptop.IPv4(t), l.laptop.IPv6(t)
	ln4 := ctr.Listen(t, "tcp", ":8080")
	go echoServer(ln4)

	// Laptop -> node, IPv4 and IPv6: the server sees the laptop's Tailscale IP.
	for _, dst := range []netip.Addr{v4, v6} {
		var reply string
		err := waitFor(15*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, err := l.laptop.NS.Dial(ctx, "tcp", netip.AddrPortFrom(dst, 8080).String())
			if err != nil {
				return err
			}
			defer c.Close()
			reply, err = roundTrip(c, "hello")
			return err
		})
		if err != nil {
			t.Fatalf("laptop -> %v:8080: %v", dst, err)
		}
		src := laptop4
		if dst.Is6() {
			src = laptop6
		}
		if !strings.HasPrefix(reply, netip.AddrPortFrom(src, 0).String()[:len(netip.AddrPortFrom(src, 0).String())-2]) {
			t.Errorf("server saw %q; want source %v", reply, src)
		}
		if first := time.Since(began); dst == v4 {
			t.Logf("first TCP exchange laptop -> node %v after Start began", first)
		}
	}

	// Node -> laptop: TCP to a server in the laptop netns.
	lln := l.laptop.NS.Listen(t, "tcp", ":9090")
	go echoServer(lln)
	for _, dst := range []netip.Addr{laptop4, laptop6} {
		err := waitFor(10*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, err := ctr.Dial(ctx, "tcp", netip.AddrPortFrom(dst, 9090).String())
			if err != nil {
				return err
			}
			defer c.Close()
			reply, err := roundTrip(c, "hi")
			if err == nil && !strings.Contains(reply, map[bool]string{true: v4.String(), false: v6.String()}[dst.Is4()]) {
				return fmt.Errorf("laptop saw %q; want node's Tailscale IP", reply)
			}
			return err
		})
		if err != nil {
			t.Fatalf("node -> laptop %v: %v", dst, err)
		}
	}

	// ICMP both ways.
	for _, dst := range []netip.Addr{v4, v6} {
		if out, err := l.laptop.NS.Exec(context.Background(), "busybox", "ping", "-c", "1", "-W", "3", dst.String()); err != nil {
			t.Errorf("laptop ping %v: %v\n%s", dst, err, out)
		}
	}
	if out, err := ctr.Exec(context.Background(), "busybox", "ping", "-c", "1", "-W", "3", laptop4.String()); err != nil {
		t.Errorf("node ping laptop: %v\n%s", err, out)
	}

	// The laptop's view: listed by hostname, tailscale ping works.
	st := l.laptop.Status(t)
	found := false
	for _, p := range st.Peer {
		if p.HostName == "web" {
			found = true
		}
	}
	if !found {
		t.Errorf("laptop's tailscale status does not list web")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if out, err := l.laptop.Tailscale(ctx, "ping", "--c=5", v4.String()); err != nil {
		t.Errorf("tailscale ping: %v\n%s", err, out)
	}
	if strings.Contains(l.logs.String(), testAuthKey) {
		t.Errorf("auth key appears in the node's backend log")
	}
}

func waitFor(d time.Duration, try func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
