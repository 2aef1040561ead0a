package engine

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// fakeAPI fails its pings until serve is set, as dockerd's API does while
// the engine restores its containers.
type fakeAPI struct{ serve atomic.Bool }

func (f *fakeAPI) Ping(ctx context.Context) error {
	if f.serve.Load() {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRestoringUntilTheAPIAnswers(t *testing.T) {
	api := &fakeAPI{}
	tr := NewTracker(api, nil)
	if !tr.Restoring() {
		t.Fatal("before any dockerd called, the engine must count as restoring")
	}
	tr.Caller(os.Getpid())
	time.Sleep(3 * pingTimeout / 2)
	if !tr.Restoring() {
		t.Fatal("restoring must hold while the API does not answer")
	}
	api.serve.Store(true)
	waitFor(t, "the engine is no longer restoring", func() bool { return !tr.Restoring() })
	n := tr.APIRequests()
	time.Sleep(3 * pingInterval)
	if tr.APIRequests() != n {
		t.Fatal("pings went on after the API answered")
	}
}

// A new dockerd (an engine restart with live-restore keeps the plugin) is
// taken once the known one is gone, and restores again; another root
// process on the socket while the known dockerd runs changes nothing.
func TestNewDockerdOnlyWhenTheOldIsGone(t *testing.T) {
	api := &fakeAPI{}
	api.serve.Store(true)
	tr := NewTracker(api, nil)
	old := exec.Command("sleep", "30")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	tr.Caller(old.Process.Pid)
	waitFor(t, "the first engine serves", func() bool { return !tr.Restoring() })

	tr.Caller(os.Getpid()) // a curl on the plugin socket, say
	if tr.PID() != old.Process.Pid || tr.Restoring() {
		t.Fatalf("another process on the socket replaced the running dockerd: pid %d, restoring %v", tr.PID(), tr.Restoring())
	}

	old.Process.Kill()
	old.Wait()
	api.serve.Store(false)
	tr.Caller(os.Getpid())
	if tr.PID() != os.Getpid() || !tr.Restoring() {
		t.Fatalf("the dockerd after the old one's exit: pid %d, restoring %v", tr.PID(), tr.Restoring())
	}
	api.serve.Store(true)
	waitFor(t, "the new engine serves", func() bool { return !tr.Restoring() })
}

func TestListenerNamesThePeer(t *testing.T) {
	api := &fakeAPI{}
	api.serve.Store(true)
	tr := NewTracker(api, nil)
	sock := filepath.Join(t.TempDir(), "p.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wl := tr.Listen(ln)
	go func() {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
	}()
	c, err := wl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if tr.PID() != os.Getpid() {
		t.Fatalf("PID = %d, want this process %d", tr.PID(), os.Getpid())
	}
	if _, err := tr.ForJoin("n", "e", "/x"); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("ForJoin on a process that is no dockerd: err = %v", err)
	}
}

// A process that got to the socket first but is not named dockerd gives way
// to a dockerd.
func TestDockerdDisplacesAnEarlierImpostor(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(t.TempDir(), "dockerd")
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		t.Fatal(err)
	}
	impostor := exec.Command("sleep", "30")
	dockerd := exec.Command(fake, "30")
	for _, c := range []*exec.Cmd{impostor, dockerd} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { c.Process.Kill(); c.Wait() }()
	}
	api := &fakeAPI{}
	api.serve.Store(true)
	tr := NewTracker(api, nil)
	tr.Caller(impostor.Process.Pid)
	tr.Caller(dockerd.Process.Pid)
	if tr.PID() != dockerd.Process.Pid {
		t.Fatalf("PID = %d, want the dockerd %d over the earlier %d", tr.PID(), dockerd.Process.Pid, impostor.Process.Pid)
	}
	tr.Caller(impostor.Process.Pid)
	if tr.PID() != dockerd.Process.Pid {
		t.Fatal("a process not named dockerd displaced the dockerd")
	}
}
