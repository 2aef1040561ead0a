package stack

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tailscale/wireguard-go/tun"
	"golang.org/x/sys/unix"
)

// scriptedTUN is a tun.Device whose reads return the errors of script in
// turn, then one packet per read.
type scriptedTUN struct {
	tun.Device
	script []error
	reads  atomic.Int32
}

func (s *scriptedTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	i := int(s.reads.Add(1)) - 1
	if i < len(s.script) {
		return 0, s.script[i]
	}
	sizes[0] = copy(bufs[0][offset:], "packet")
	return 1, nil
}

func (s *scriptedTUN) Close() error { return nil }

// TestTUNReadGoesOnAfterListenerEnds: wireguard-go hands the error that
// ended its link event listener (here ENOBUFS from its netlink socket, as a
// burst of link changes causes) to the next TUN read; the TUN itself is
// fine, so the node's reads go on (they used to wait for Close, leaving the
// container's packets unread). An error reading the TUN's file still makes
// the read wait for Close.
func TestTUNReadGoesOnAfterListenerEnds(t *testing.T) {
	listenerErr := fmt.Errorf("failed to receive netlink message: %w", unix.ENOBUFS)
	var logged []string
	d := &device{Device: &scriptedTUN{script: []error{listenerErr, listenerErr}}, closed: make(chan struct{})}
	d.logf = func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	bufs, sizes := [][]byte{make([]byte, 64)}, []int{0}
	for i := range 2 {
		if n, err := d.readUntilClosed(bufs, sizes, 0); n != 0 || err != nil {
			t.Fatalf("read %d: %d, %v; want 0, nil", i, n, err)
		}
	}
	if n, err := d.readUntilClosed(bufs, sizes, 0); n != 1 || err != nil || string(bufs[0][:sizes[0]]) != "packet" {
		t.Fatalf("read after the listener's end: %d, %v; want the packet", n, err)
	}
	if len(logged) != 1 {
		t.Errorf("logged %q; want the listener's end once", logged)
	}

	fileErr := &os.PathError{Op: "read", Path: "/dev/net/tun", Err: unix.EIO}
	d = &device{Device: &scriptedTUN{script: []error{fileErr}}, closed: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := d.readUntilClosed(bufs, sizes, 0)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a failed TUN file's read returned %v before Close", err)
	case <-time.After(100 * time.Millisecond):
	}
	d.Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Errorf("after Close: %v; want os.ErrClosed", err)
	}
}
