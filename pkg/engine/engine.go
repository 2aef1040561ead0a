// Package engine tracks the dockerd that calls the plugin: which process it
// is, what its on-disk state says of a Join (package enginestate), and
// whether it serves its API yet.
//
// The dockerd is the peer of the connections made to the plugin's socket
// (SO_PEERCRED): only the engine that loaded the plugin dials it. A process
// that merely calls itself dockerd is never asked.
//
// "Restoring" is the engine's start-up: dockerd listens on its API socket
// before it restores its containers but serves requests only afterwards,
// and it calls the plugin (Join for every restart-policy container) in
// between. The tracker pings the API from a goroutine of its own, never
// from a plugin call, until the current dockerd answers once; until then the
// engine counts as restoring. A new dockerd (another peer PID: an engine
// restart with live-restore keeps the plugin running) starts restoring
// again.
package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tslink/tslink/pkg/enginestate"
	"github.com/tslink/tslink/pkg/hostpath"
	"golang.org/x/sys/unix"
)

// Pinger asks dockerd's API whether it serves requests.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Tracker follows the calling dockerd. Its methods are safe for concurrent
// use.
type Tracker struct {
	api Pinger
	log *slog.Logger

	mu       sync.Mutex
	pid      int                 // the calling dockerd; 0 until its first connection
	since    time.Time           // when pid first called
	state    *enginestate.Engine // pid's on-disk state; nil until first needed
	served   bool                // pid's API has answered
	watching bool                // a ping loop runs for pid
	pings    atomic.Uint64
	warned   atomic.Bool // the API-not-answering warning was logged
}

// pingInterval and pingTimeout pace the wait for the API to serve.
const (
	pingInterval = 500 * time.Millisecond
	pingTimeout  = time.Second
)

// NewTracker returns a tracker that pings api. log may be nil.
func NewTracker(api Pinger, log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{api: api, log: log}
}

// Listen wraps ln (the plugin's unix socket) so that every accepted
// connection names its peer as the calling dockerd.
func (t *Tracker) Listen(ln net.Listener) net.Listener { return &listener{Listener: ln, t: t} }

type listener struct {
	net.Listener
	t *Tracker
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if pid, err := peerPID(c); err == nil {
		l.t.Caller(pid)
	} else {
		l.t.log.Warn("peer credentials of a plugin connection", "err", err)
	}
	return c, nil
}

func peerPID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("%T is not a unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}

// Caller records pid as the calling dockerd, unless the dockerd already
// known still runs (then pid is some other root process on the socket). A
// new pid is a new engine: its state is found afresh and it counts as
// restoring until its API answers.
func (t *Tracker) Caller(pid int) {
	if pid <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if pid == t.pid {
		return
	}
	if t.pid != 0 && alive(t.pid) && (namedDockerd(t.pid) || !namedDockerd(pid)) {
		// Another root process on the plugin's socket (a probe, a curl):
		// the engine that loaded the plugin is still there. (A process
		// that is not even named dockerd gives way to one that is.)
		return
	}
	if t.pid != 0 {
		t.log.Info("a new dockerd calls the plugin", "pid", pid, "was", t.pid)
	}
	t.pid, t.state, t.served, t.since = pid, nil, false, time.Now()
	hostpath.Prefer(pid)
	if !t.watching {
		t.watching = true
		go t.waitServed()
	}
}

// waitServed pings the API until the current dockerd answers.
func (t *Tracker) waitServed() {
	began := time.Now()
	for {
		t.mu.Lock()
		pid := t.pid
		t.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
		err := t.api.Ping(ctx)
		cancel()
		t.pings.Add(1)
		t.mu.Lock()
		if err == nil && pid == t.pid {
			t.served, t.watching = true, false
			t.mu.Unlock()
			t.log.Info("engine API serving", "dockerd_pid", pid, "waited", time.Since(began).Round(time.Millisecond))
			return
		}
		t.mu.Unlock()
		if warned := time.Since(began) > maxRestore; warned && !t.warned.Swap(true) {
			t.log.Warn("the Docker API has not answered for a long time; check the plugin's DOCKER_HOST setting", "dockerd_pid", pid, "err", err)
		}
		time.Sleep(pingInterval)
	}
}

// maxRestore bounds how long an engine whose API never answers counts as
// restoring (a wrong DOCKER_HOST, say): after it, plugin calls behave as
// outside a restore.
const maxRestore = 5 * time.Minute

// Restoring reports whether the calling engine has not yet served its API
// since it started (or since this process learnt of it), for at most
// [maxRestore].
func (t *Tracker) Restoring() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.served && (t.pid == 0 || time.Since(t.since) < maxRestore)
}

// namedDockerd reports whether process pid's command name is dockerd.
func namedDockerd(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return err == nil && strings.TrimSpace(string(b)) == "dockerd"
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// APIRequests counts the requests made to the Docker API (pings).
func (t *Tracker) APIRequests() uint64 { return t.pings.Load() }

// PID returns the calling dockerd's PID, 0 before its first call.
func (t *Tracker) PID() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pid
}

func (t *Tracker) engineState() (*enginestate.Engine, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != nil {
		return t.state, nil
	}
	if t.pid == 0 {
		return nil, fmt.Errorf("no dockerd has called the plugin yet")
	}
	st, err := enginestate.ForPID(t.pid)
	if err != nil {
		return nil, err
	}
	t.state = st
	return st, nil
}

// ForJoin returns the container of a Join from the engine's on-disk state
// (see package enginestate), never from the API.
func (t *Tracker) ForJoin(networkID, endpointID, sandboxKey string) (*enginestate.Container, error) {
	st, err := t.engineState()
	if err != nil {
		return nil, err
	}
	f, err := st.ForJoin(networkID, endpointID, sandboxKey)
	if err != nil {
		return nil, err
	}
	if f.ContainerID != "" {
		if c, err := st.Container(f.ContainerID); err == nil {
			return c, nil
		}
	}
	if f.EndpointName == "" {
		return nil, fmt.Errorf("container %.12s of endpoint %.12s: %w", f.ContainerID, endpointID, enginestate.ErrNotFound)
	}
	return st.ContainerByName(f.EndpointName)
}

// NetworkOptions returns a network's `--opt` values from the engine's
// on-disk state.
func (t *Tracker) NetworkOptions(networkID string) (map[string]string, error) {
	st, err := t.engineState()
	if err != nil {
		return nil, err
	}
	return st.NetworkOptions(networkID)
}
