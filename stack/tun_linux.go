package stack

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/tailscale/wireguard-go/tun"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"tailscale.com/net/packet"
)

const (
	// TUNName is the TUN's name inside the container.
	TUNName = "tailscale0"
	// MTU is tailscale0's MTU in bytes, Tailscale's default.
	MTU = 1280
)

// HostTUNName returns the name the TUN has in the host netns before
// [Node.Attach] moves it: "tsl" and 12 hex digits derived from endpointID,
// 15 bytes, the kernel's IFNAMSIZ limit. Deriving it lets any later step find
// the device without in-memory state.
func HostTUNName(endpointID string) string {
	if len(endpointID) >= 12 && isHex(endpointID[:12]) {
		return "tsl" + endpointID[:12]
	}
	sum := sha256.Sum256([]byte(endpointID))
	return "tsl" + hex.EncodeToString(sum[:6])
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// device is a kernel TUN as tsnet's tun.Device, with MTU and Name answered
// from constants: wireguard-go's own lookups go by name through the calling
// thread's netns, which stops being the TUN's netns once it moves.
type device struct {
	tun.Device
	file *os.File
	// closed is closed by Close: until then a failing read waits for it
	// (readUntilClosed).
	closed    chan struct{}
	closeOnce sync.Once
	dns       atomic.Pointer[dnsAnswerer] // nil: DNS queries pass to tsnet
	peers     atomic.Pointer[peerSet]     // nil until the netmap is known
	// logf is the node's log, set before tsnet reads the device.
	logf          func(format string, args ...any)
	listenerEnded atomic.Bool // the end of wireguard-go's link event listener was logged
}

// Read reads packets from the container for tsnet, taking out the DNS
// queries the device answers itself (see dns.go).
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := d.readUntilClosed(bufs, sizes, offset)
		a := d.dns.Load()
		if a == nil || n == 0 {
			return n, err
		}
		kept := 0
		for i := range n {
			pkt := bufs[i][offset : offset+sizes[i]]
			if mayBeDNSQuery(pkt) {
				var p packet.Parsed
				p.Decode(pkt)
				if interceptable(&p, d.peers.Load()) {
					a.answer(bytes.Clone(pkt))
					continue
				}
			}
			if kept != i {
				copy(bufs[kept][offset:], pkt)
				sizes[kept] = sizes[i]
			}
			kept++
		}
		if kept > 0 || err != nil {
			return kept, err
		}
	}
}

// readUntilClosed reads from the kernel TUN. When the TUN's file fails for
// good (an errno from reading it, or a closed file: deleted with the
// container's netns, as after a failed Join) before the node closed it, the
// read waits for Close instead of returning the error: wireguard-go closes
// its device on a TUN read error, wgengine then closes magicsock, and
// tailscale.com v1.102.5 panics when the node's first netmap is applied to
// a closed magicsock (stack/closing.go). The node stays whole until its own
// teardown, which waits for that netmap.
//
// Other errors do not stop the TUN, and the read goes on after them:
// wireguard-go's offload parsing of one malformed packet the container
// sent (the packet is dropped), and the end of wireguard-go's listener for
// the TUN's link events, whose error (e.g. ENOBUFS from its netlink socket
// when many links change at once) wireguard-go hands to the next Read
// (tun/tun_linux.go NativeTun.Read). The listener's end is logged once.
func (d *device) readUntilClosed(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	if err == nil || n > 0 || errors.Is(err, tun.ErrTooManySegments) {
		return n, err
	}
	var fileErr *os.PathError
	if !errors.Is(err, os.ErrClosed) && !errors.As(err, &fileErr) {
		var errno unix.Errno
		if errors.As(err, &errno) && d.listenerEnded.CompareAndSwap(false, true) && d.logf != nil {
			d.logf("tslink: wireguard-go's link event listener for tailscale0 ended (%v); packets flow on", err)
		}
		time.Sleep(time.Millisecond) // bounds a stream of bad packets
		return 0, nil
	}
	<-d.closed
	return 0, os.ErrClosed
}

// Close closes the TUN and ends a read waiting in readUntilClosed.
func (d *device) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return d.Device.Close()
}

// mayBeDNSQuery is a cheap check for UDP to port 53 (IPv4 with any header
// length, IPv6 without extension headers).
func mayBeDNSQuery(pkt []byte) bool {
	if len(pkt) < 28 {
		return false
	}
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0xf) * 4
		return pkt[9] == 17 && len(pkt) >= ihl+8 && pkt[ihl+2] == 0 && pkt[ihl+3] == 53
	case 6:
		return len(pkt) >= 48 && pkt[6] == 17 && pkt[42] == 0 && pkt[43] == 53
	}
	return false
}

// injectOffset is the headroom given to wireguard-go's Write (which puts a
// virtio-net header there when the TUN has offloads).
const injectOffset = 16

// inject writes one IP packet to the container.
func (d *device) inject(pkt []byte) error {
	buf := make([]byte, injectOffset+len(pkt))
	copy(buf[injectOffset:], pkt)
	_, err := d.Device.Write([][]byte{buf}, injectOffset)
	return err
}

func (d *device) MTU() (int, error)     { return MTU, nil }
func (d *device) Name() (string, error) { return TUNName, nil }

// tunBatchSize is the most packets one read of tailscale0 hands to tsnet,
// and the most segments the kernel puts into one TSO/USO packet it sends
// through tailscale0 (gso_max_segs, set by [limitSegments]).
//
// Memory: tstun holds BatchSize buffers of 64 KiB per node for the node's
// life (tailscale.com net/tstun wrap.go, vectorBuffer); wireguard-go's
// kernel TUN with offloads would report 128 (tun/tun_linux.go BatchSize).
// An idle node writes only the first; the others stay off RAM when they
// come from released pages ([releaseFreedMemory]). A smaller size costs
// throughput from the container (fewer segments per TUN read); the choice
// is measured in docs/bench/notes.md.
//
// The two limits must agree: wireguard-go splits a TSO packet read from
// the TUN into one buffer per segment and drops the whole packet when it
// has more segments than buffers (tun.ErrTooManySegments), which would
// stall TCP from the container.
const tunBatchSize = 64

// BatchSize is the device's read vector size, [tunBatchSize].
func (d *device) BatchSize() int { return tunBatchSize }

// limitSegments sets gso_max_segs of the TUN named name, in the calling
// thread's netns, to [tunBatchSize]. The attribute belongs to the netdev,
// so it stays when the TUN moves to the container's netns.
func limitSegments(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding TUN %s: %w", name, err)
	}
	if err := netlink.LinkSetGSOMaxSegs(link, tunBatchSize); err != nil {
		return fmt.Errorf("setting gso_max_segs %d on TUN %s: %w", tunBatchSize, name, err)
	}
	return nil
}

// createTUN creates a new TUN named name in the calling goroutine's netns,
// which must be the host's.
func createTUN(name string) (*device, error) {
	dev, err := tun.CreateTUN(name, MTU)
	if err != nil {
		return nil, fmt.Errorf("creating TUN %s: %w", name, err)
	}
	if err := limitSegments(name); err != nil {
		dev.Close()
		return nil, err
	}
	return wrapTUN(dev)
}

// openTUNIn re-opens the existing TUN name inside the netns at nsPath, on a
// thread locked into that netns (opening the clone device attaches by name
// in the opening thread's netns). It fails with [ErrNoTUN] if no such link
// exists there, rather than creating one.
func openTUNIn(nsPath, name string) (*device, error) {
	var d *device
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("%w: %s in %s: %w", ErrNoTUN, name, nsPath, err)
		}
		dev, err := tun.CreateTUN(name, MTU)
		if err != nil {
			return fmt.Errorf("opening TUN %s: %w", name, err)
		}
		// A TUN left by an older plugin may still allow more segments.
		if err := limitSegments(name); err != nil {
			dev.Close()
			return err
		}
		d, err = wrapTUN(dev)
		return err
	})
	return d, err
}

func wrapTUN(dev tun.Device) (*device, error) {
	nt, ok := dev.(interface{ File() *os.File })
	if !ok {
		dev.Close()
		return nil, errors.New("TUN device has no file")
	}
	return &device{Device: dev, file: nt.File(), closed: make(chan struct{})}, nil
}

// setPersist sets or clears TUNSETPERSIST on the TUN. A persistent TUN stays
// (with its addresses and routes, NO-CARRIER) when its last fd closes, e.g.
// when the plugin is killed; a non-persistent one is deleted at that moment.
func (d *device) setPersist(on bool) error {
	rc, err := d.file.SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v)
	}); err != nil {
		return err
	}
	if ioErr != nil {
		return fmt.Errorf("setting TUN persist=%d: %w", v, ioErr)
	}
	return nil
}

// DeleteHostTUN deletes the host-netns TUN of endpointID if it is still
// there (the container never started, so it was never moved). A missing
// device is success. Only a persistent TUN can outlive its fd, so this
// matters after a crash between Attach's persist and the move.
func DeleteHostTUN(endpointID string) error {
	return deleteLinkIn("", HostTUNName(endpointID))
}
