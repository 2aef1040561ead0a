package stack

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tslink/tslink/test/netnstest"
)

// echoServer accepts on ln and answers each line with "<remote addr> <line>".
func echoServer(ln net.Listener) {
	serveConns(ln, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s %s\n", c.RemoteAddr(), sc.Text())
		}
	})
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

	// Bulk TCP both ways (the container's TSO packets through tailscale0's
	// read vector, wireguard-go's GRO writes into it), and UDP.
	if out, _ := ctr.Exec(context.Background(), "ip", "-d", "link", "show", TUNName); !strings.Contains(string(out), fmt.Sprintf("gso_max_segs %d ", tunBatchSize)) {
		t.Errorf("tailscale0 does not limit GSO to %d segments:\n%s", tunBatchSize, out)
	}
	bulkTCP(t, "node -> laptop", l.laptop.NS, ctr.Dial, laptop4, 16)
	bulkTCP(t, "laptop -> node", ctr, l.laptop.NS.Dial, v4, 16)
	udpBothWays(t, ctr, l.laptop.NS, laptop4)

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

// bulkTCP sends mib MiB of random bytes over TCP from dial's side to a
// listener in to, at dst, and checks they all arrive intact.
func bulkTCP(t *testing.T, what string, to *netnstest.NetNS, dial func(context.Context, string, string) (net.Conn, error), dst netip.Addr, mib int) {
	t.Helper()
	data := make([]byte, mib<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	ln := to.Listen(t, "tcp", ":0")
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		got <- r
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", netip.AddrPortFrom(dst, uint16(ln.Addr().(*net.TCPAddr).Port)).String())
	if err != nil {
		t.Fatalf("%s: dial: %v", what, err)
	}
	began := time.Now()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatalf("%s: sending %d MiB: %v", what, mib, err)
	}
	c.Close()
	r := <-got
	if r.err != nil || r.n != int64(len(data)) || r.sum != want {
		t.Fatalf("%s: received %d of %d bytes (intact: %v), err %v", what, r.n, len(data), r.sum == want, r.err)
	}
	t.Logf("%s: %d MiB TCP in %v", what, mib, time.Since(began).Round(time.Millisecond))
}

// udpBothWays checks UDP from the container's netns ctr to an echo server
// in the laptop's netns at dst and back: full-size datagrams one by one,
// then one UDP GSO send (UDP_SEGMENT) of more datagrams than tailscale0
// reads at once, which the kernel must split to fit its gso_max_segs.
func udpBothWays(t *testing.T, ctr, laptop *netnstest.NetNS, dst netip.Addr) {
	t.Helper()
	var srv net.PacketConn
	if err := laptop.Do(func() (err error) { srv, err = net.ListenPacket("udp", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	var c *net.UDPConn
	err := ctr.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(srv.LocalAddr().(*net.UDPAddr).Port))))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The largest datagram that fits tailscale0's MTU unfragmented.
	const size = MTU - 20 - 8
	buf := make([]byte, 65536)
	for i := range 20 {
		msg := bytes.Repeat([]byte{byte(i)}, size)
		err := waitFor(5*time.Second, func() error {
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				return err
			}
			if !bytes.Equal(buf[:n], msg) {
				return fmt.Errorf("echo of datagram %d: %d bytes, not the %d sent", i, n, len(msg))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("UDP node <-> laptop, %d-byte datagram %d: %v", size, i, err)
		}
	}

	// One send of segs datagrams of seg bytes each, numbered: more than
	// tailscale0 takes in one read, so only gso_max_segs keeps it whole.
	const seg, segs = 500, tunBatchSize + 16
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], seg)
	err = waitFor(5*time.Second, func() error {
		super := make([]byte, seg*segs)
		for i := range segs {
			super[i*seg] = byte(i)
		}
		if _, _, err := c.WriteMsgUDP(super, oob, nil); err != nil {
			return fmt.Errorf("UDP GSO send: %w", err)
		}
		seen := map[byte]bool{}
		for len(seen) < segs {
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err != nil {
				return fmt.Errorf("%d of %d segments echoed: %w", len(seen), segs, err)
			}
			if n != seg {
				return fmt.Errorf("echoed segment of %d bytes; want %d", n, seg)
			}
			seen[buf[0]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatalf("UDP GSO node -> laptop: %v", err)
	}
}

// TestIdleContainerSendsNothing: once attached, an idle container's kernel
// sends nothing into tailscale0 (no IPv6 router solicitations, which Linux
// otherwise repeats without end and tailscale counts as activity, keeping
// the node re-STUNning).
func TestIdleContainerSendsNothing(t *testing.T) {
	l := newLab(t)
	_, ctr := l.startNode(t, l.config("quiet"))
	out, err := ctr.Exec(context.Background(), "cat", "/proc/sys/net/ipv6/conf/"+TUNName+"/router_solicitations")
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("router_solicitations on %s = %q (%v), want 0", TUNName, out, err)
	}
	txPackets := func() string { // /proc/net/dev is the reading process's netns's
		out, err := ctr.Exec(context.Background(), "cat", "/proc/net/dev")
		if err != nil {
			t.Fatalf("/proc/net/dev: %v %s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if name, counters, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == TUNName {
				if f := strings.Fields(counters); len(f) >= 10 {
					return f[9] // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets
				}
			}
		}
		t.Fatalf("no %s in /proc/net/dev:\n%s", TUNName, out)
		return ""
	}
	before := txPackets()
	time.Sleep(12 * time.Second) // the kernel's solicitations come 4 s apart, then 8, 16...
	if after := txPackets(); after != before {
		t.Errorf("the idle container sent %s -> %s packets into %s", before, after, TUNName)
	}
}
