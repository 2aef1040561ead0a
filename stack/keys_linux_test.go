package stack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// laptopReaches dials addr:8080 from the laptop until it answers or d
// passes, and returns how long that took.
func (l *lab) laptopReaches(t *testing.T, addr netip.Addr, d time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	err := waitFor(d, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := l.laptop.NS.Dial(ctx, "tcp", netip.AddrPortFrom(addr, 8080).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = roundTrip(c, "hello")
		return err
	})
	if err != nil {
		t.Fatalf("laptop -> %v:8080 within %v: %v", addr, d, err)
	}
	return time.Since(began)
}

// TestPersistentNodeRestartsWithRejectedKey: once control refuses the
// network's auth key, a persistent node still comes back from its state,
// after a plugin crash (adopting tailscale0) and after a container restart
// (a new TUN), with the same IP; a new node with the key is refused.
func TestPersistentNodeRestartsWithRejectedKey(t *testing.T) {
	l := newLab(t)
	cfg := l.config("keep")
	cfg.Ephemeral = false
	ctr := newCtr(t)
	go echoServer(ctr.Listen(t, "tcp", ":8080"))
	first, v4 := startHelper(t, cfg, ctr.Path)
	l.laptopReaches(t, v4, 15*time.Second)

	first.Process.Kill() // the plugin crashes
	first.Wait()
	l.control.RevokeAuthKey(testAuthKey)

	adopt := cfg
	adopt.AdoptNetNS = ctr.Path
	began := time.Now()
	second, v4again := startHelper(t, adopt, "")
	took := time.Since(began)
	if v4again != v4 {
		t.Errorf("adopted node has %v; want %v", v4again, v4)
	}
	reached := l.laptopReaches(t, v4, 45*time.Second)
	t.Logf("plugin restart with the key refused: node Running in %v, laptop reached it %v later", took.Round(time.Millisecond), reached.Round(time.Millisecond))

	// The container stops (Close of a persistent node: no logout) and starts
	// again in a new sandbox.
	second.Process.Signal(syscall.SIGTERM)
	second.Wait()
	began = time.Now()
	n, ctr2 := l.startNode(t, cfg)
	took = time.Since(began)
	go echoServer(ctr2.Listen(t, "tcp", ":8080"))
	if got, _ := n.Addrs(); got != v4 {
		t.Errorf("restarted node has %v; want %v", got, v4)
	}
	reached = l.laptopReaches(t, v4, 45*time.Second)
	t.Logf("container restart with the key refused: node up and attached in %v, laptop reached it %v later", took.Round(time.Millisecond), reached.Round(time.Millisecond))
	if !strings.Contains(l.logs.String(), "from its state (no auth key sent)") {
		t.Error("debug log does not say the node started from its state")
	}
	err := waitFor(10*time.Second, func() error {
		if nodes := l.control.NodesByHostname("keep"); len(nodes) != 1 || !nodes[0].Online {
			return fmt.Errorf("control has %+v; want one online node", nodes)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	fresh := l.config("fresh")
	if n, err := Start(ctx, fresh); !errors.Is(err, ErrAuthKeyRejected) {
		if n != nil {
			n.Close(context.Background())
		}
		t.Errorf("new node with the refused key: %v; want %v", err, ErrAuthKeyRejected)
	}
}

// TestExpiredNodeKeyAtRestartLogsInWithKey: a persistent node whose node key
// expired while its container was stopped is asked by control to log in
// again when it starts from its state; it does so with the network's key and
// keeps its identity and IP.
func TestExpiredNodeKeyAtRestartLogsInWithKey(t *testing.T) {
	l := newLab(t)
	cfg := l.config("lapsed")
	cfg.Ephemeral = false
	n, _ := l.startNode(t, cfg)
	v4, _ := n.Addrs()
	oldKey := l.control.NodesByHostname("lapsed")[0].NodeKey
	n.Close(context.Background())
	if err := l.control.SetNodeKeyExpiry(oldKey, time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}

	n, ctr := l.startNode(t, cfg)
	go echoServer(ctr.Listen(t, "tcp", ":8080"))
	l.laptopReaches(t, v4, 45*time.Second)
	if got, _ := n.Addrs(); got != v4 {
		t.Errorf("node has %v; want %v", got, v4)
	}
	if nodes := l.control.NodesByHostname("lapsed"); len(nodes) != 1 || nodes[0].NodeKey == oldKey {
		t.Errorf("control has %+v; want one node with a new node key", nodes)
	}
	if !strings.Contains(l.logs.String(), "logging in with the auth key") {
		t.Error("debug log does not show the login with the auth key")
	}
	if err := waitFor(10*time.Second, func() error {
		if st := n.Status(); st.KeyExpired || st.State != "Running" {
			return fmt.Errorf("status %+v; want Running, key not expired", st)
		}
		return nil
	}); err != nil {
		t.Errorf("%v\n%s", err, tail(l.logs.String(), 80))
	}
}

// TestNodeKeyExpiryShownAndRecovered: when an admin expires a running node's
// key, the node's status says so with a clear error and the laptop can no
// longer reach it; when the admin extends the key, it is back without a
// restart.
func TestNodeKeyExpiryShownAndRecovered(t *testing.T) {
	l := newLab(t)
	cfg := l.config("expiring")
	n, ctr := l.startNode(t, cfg)
	go echoServer(ctr.Listen(t, "tcp", ":8080"))
	v4, _ := n.Addrs()
	l.laptopReaches(t, v4, 15*time.Second)
	nk := l.control.NodesByHostname("expiring")[0].NodeKey

	expiredAt := time.Now().Add(-time.Minute)
	if err := l.control.SetNodeKeyExpiry(nk, expiredAt); err != nil {
		t.Fatal(err)
	}
	var st Status
	err := waitFor(15*time.Second, func() error {
		st = n.Status()
		if !st.KeyExpired || st.State != "NeedsLogin" || !strings.HasPrefix(st.LastErr, keyExpiredError) {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("expired node: %v; want KeyExpired, NeedsLogin and a %q error", err, keyExpiredError)
	}
	t.Logf("expired: state %s, last error %q", st.State, st.LastErr)
	// The laptop drops the expired peer from its netmap (its key is
	// broken) and the node deconfigures its engine.
	cut := time.Now()
	if err := waitFor(15*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := l.laptop.NS.Dial(ctx, "tcp", netip.AddrPortFrom(v4, 8080).String())
		if err != nil {
			return nil
		}
		defer c.Close()
		if _, err := roundTrip(c, "still there?"); err != nil {
			return nil
		}
		return errors.New("the laptop still reaches a node whose key expired")
	}); err != nil {
		t.Error(err)
	}
	t.Logf("laptop lost the node %v after its status showed the expiry", time.Since(cut).Round(time.Millisecond))

	if err := l.control.SetNodeKeyExpiry(nk, time.Now().Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	back := l.laptopReaches(t, v4, 90*time.Second) // target 30 s, 3x for a noisy host
	t.Logf("back on the tailnet %v after the key was extended", back.Round(time.Millisecond))
	if err := waitFor(5*time.Second, func() error {
		if st = n.Status(); st.KeyExpired || st.State != "Running" || st.LastErr != "" {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	}); err != nil {
		t.Errorf("after the extension: %v; want Running, no error", err)
	}
}
