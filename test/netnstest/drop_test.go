package netnstest

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

// TestDropTCPPort: while the port is dropped a connect hangs (times out, is
// not refused); after undo it connects again.
func TestDropTCPPort(t *testing.T) {
	RequireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	undo := DropTCPPort(t, ln.Addr().(*net.TCPAddr).Port)
	err = dial()
	if err == nil || errors.Is(err, syscall.ECONNREFUSED) || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)) {
		t.Fatalf("dial while dropped: %v; want a timeout", err)
	}
	undo()
	if err := dial(); err != nil {
		t.Fatalf("dial after undo: %v", err)
	}
}
