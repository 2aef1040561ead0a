package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Packet is one IP packet a [Capture] saw.
type Packet struct {
	Proto uint8 // IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6)
	Src   netip.Addr
	Dst   netip.Addr
	DPort uint16 // TCP/UDP destination port; 0 for other protocols
}

func (p Packet) String() string {
	return fmt.Sprintf("proto %d %v -> %v port %d", p.Proto, p.Src, p.Dst, p.DPort)
}

// Capture records the IP packets that cross one interface, in either
// direction, through an AF_PACKET socket (no tcpdump needed).
type Capture struct {
	fd   int
	done chan struct{}

	mu   sync.Mutex
	pkts []Packet
}

// StartCapture captures on interface ifname of the test process's own
// network namespace until t ends.
func StartCapture(t testing.TB, ifname string) *Capture {
	t.Helper()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		t.Fatalf("capture on %s: bind: %v", ifname, err)
	}
	// A receive timeout lets the reader notice the end of the test.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})
	c := &Capture{fd: fd, done: make(chan struct{})}
	stopped := make(chan struct{})
	go c.read(stopped)
	t.Cleanup(func() {
		close(c.done)
		<-stopped
		unix.Close(fd)
	})
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read(stopped chan struct{}) {
	defer close(stopped)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		if p, ok := parseIP(buf[:n]); ok {
			c.mu.Lock()
			c.pkts = append(c.pkts, p)
			c.mu.Unlock()
		}
	}
}

// parseIP decodes the addresses, protocol and destination port of an IPv4
// packet or an IPv6 packet without extension headers.
func parseIP(b []byte) (Packet, bool) {
	var p Packet
	var l4 []byte
	switch {
	case len(b) >= 20 && b[0]>>4 == 4:
		ihl := int(b[0]&0xf) * 4
		p.Proto = b[9]
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		if len(b) >= ihl {
			l4 = b[ihl:]
		}
	case len(b) >= 40 && b[0]>>4 == 6:
		p.Proto = b[6]
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	default:
		return p, false
	}
	if (p.Proto == unix.IPPROTO_TCP || p.Proto == unix.IPPROTO_UDP) && len(l4) >= 4 {
		p.DPort = binary.BigEndian.Uint16(l4[2:4])
	}
	return p, true
}

// To returns the packets seen so far whose destination is in one of
// prefixes.
func (c *Capture) To(prefixes ...netip.Prefix) []Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Packet
	for _, p := range c.pkts {
		for _, pfx := range prefixes {
			if pfx.Contains(p.Dst) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// ToPort returns the packets seen so far of IP protocol proto to port.
func (c *Capture) ToPort(proto uint8, port uint16) []Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Packet
	for _, p := range c.pkts {
		if p.Proto == proto && p.DPort == port {
			out = append(out, p)
		}
	}
	return out
}

// TailnetPrefixes are Tailscale's address ranges: the CGNAT range (which
// holds MagicDNS's 100.100.100.100) and the ULA range.
var TailnetPrefixes = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fd7a:115c:a1e0::/48"),
}
