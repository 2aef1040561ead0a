// Package enginetest is the engine end-to-end harness: a private dockerd
// (own data-root, exec-root, socket, pidfile) started inside the lab netns
// of package netnstest, the tslink managed plugin installed into it with
// `docker plugin create`, a busybox image made locally with `docker import`,
// and the Docker CLI run as a user would.
//
// # Topology
//
// Everything below lives in the test binary's private netns (netnstest.Main),
// which is also dockerd's and so the plugin's ("network": "host"):
//
//	lab netns: dockerd + tslink plugin + devcontrol (10.238.0.1)
//	  ├─ veth ─ laptop netns   10.238.0.2   tailscaled, the user's machine
//	  ├─ veth ─ internet netns 10.239.0.2   an HTTP server standing in for the internet,
//	  │         and the lab's default route (lab side 10.239.0.1; containers
//	  │         reach it through docker_gwbridge NAT)
//	  └─ containers: eth0 on the tslink bridge, eth1 on docker_gwbridge, tailscale0
package enginetest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// RequireEngine skips t unless dockerd and the docker CLI are installed and
// the test runs as root in the lab netns; TSLINK_REQUIRE_ROOT_TESTS=1 turns
// the skip into a failure.
func RequireEngine(t testing.TB) {
	t.Helper()
	netnstest.RequireRoot(t)
	for _, tool := range []string{"dockerd", "docker", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("engine test needs %s (Debian packages docker.io, busybox-static)", tool)
			if os.Getenv("TSLINK_REQUIRE_ROOT_TESTS") == "1" {
				t.Fatal(msg + " (TSLINK_REQUIRE_ROOT_TESTS=1 forbids skipping)")
			}
			t.Skip("skipping: " + msg)
		}
	}
}

// Engine is a private dockerd.
type Engine struct {
	Dir  string // short root of all its files (unix socket paths are limited to 108 bytes)
	Host string // unix://…/d.sock, for DOCKER_HOST
	// Started is when the current dockerd process was started.
	Started     time.Time
	cmd         *exec.Cmd
	log         *os.File
	args        []string // extra dockerd flags
	liveRestore bool     // start with --live-restore (SetLiveRestore)
}

// StartEngine starts a dockerd of its own and stops it (removing every
// container, plugin and mount it made) when t ends.
func StartEngine(t testing.TB, dockerdArgs ...string) *Engine {
	t.Helper()
	dir, err := os.MkdirTemp("", "tse")
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{Dir: dir, Host: "unix://" + filepath.Join(dir, "d.sock")}
	for _, a := range dockerdArgs {
		if a == "--live-restore" {
			e.liveRestore = true // see SetLiveRestore
		} else {
			e.args = append(e.args, a)
		}
	}
	e.log, err = os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(t); e.removeAll() })
	e.start(t)
	return e
}

// ExecRoot is dockerd's --exec-root (its /var/run/docker): runtime state
// and the containers' netns files.
func (e *Engine) ExecRoot() string { return filepath.Join(e.Dir, "exec") }

// DataRoot is dockerd's --data-root (its /var/lib/docker).
func (e *Engine) DataRoot() string { return filepath.Join(e.Dir, "data") }

// SetLiveRestore makes the next start of dockerd use --live-restore (on)
// or not. The running dockerd keeps its setting: a restart stops under the
// old one and restores under the new one.
func (e *Engine) SetLiveRestore(on bool) { e.liveRestore = on }

// start starts dockerd and waits until its API answers.
func (e *Engine) start(t testing.TB) {
	t.Helper()
	e.launch(t)
	if _, err := e.WaitAPI(60 * time.Second); err != nil {
		t.Fatalf("dockerd did not come up: %v\n%s", err, e.LogTail(30))
	}
}

// launch starts the dockerd process with the same flags, data-root and
// exec-root every time, without waiting for anything, and records
// [Engine.Started].
func (e *Engine) launch(t testing.TB) {
	t.Helper()
	args := append([]string{
		"--data-root", e.DataRoot(),
		"--exec-root", e.ExecRoot(),
		"--pidfile", filepath.Join(e.Dir, "dockerd.pid"),
		"-H", e.Host,
		"--bridge", "none",
	}, e.args...)
	if e.liveRestore {
		args = append(args, "--live-restore")
	}
	fmt.Fprintf(e.log, "=== enginetest: starting dockerd %s\n", strings.Join(args, " "))
	e.cmd = exec.Command("dockerd", args...)
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("starting dockerd: %v", err)
	}
	e.Started = time.Now()
}

// WaitAPI waits up to d for dockerd's API to serve a request (GET /_ping,
// each try bounded to 2 s: while dockerd restores its containers it accepts
// connections on its socket but answers nothing). It returns how long after
// [Engine.Started] the API answered.
func (e *Engine) WaitAPI(d time.Duration) (time.Duration, error) {
	err := netnstest.WaitFor(d, func() error { return e.Ping(2 * time.Second) })
	if err != nil {
		return 0, fmt.Errorf("engine API did not answer within %v of dockerd's start: %w", d, err)
	}
	return time.Since(e.Started), nil
}

// Ping asks dockerd's API (GET /_ping) for an answer within timeout.
func (e *Engine) Ping(timeout time.Duration) error {
	sock := strings.TrimPrefix(e.Host, "unix://")
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	res, err := c.Get("http://docker/_ping")
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /_ping: %s", res.Status)
	}
	return nil
}

// Restart stops dockerd and starts it again on the same dirs.
func (e *Engine) Restart(t testing.TB) {
	t.Helper()
	e.stopDaemon()
	e.start(t)
}

// LogTail returns the last n lines of dockerd's log (which includes the
// plugin's stdout).
func (e *Engine) LogTail(n int) string {
	b, _ := os.ReadFile(e.log.Name())
	lines := strings.Split(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Log returns dockerd's whole log.
func (e *Engine) Log() string {
	b, _ := os.ReadFile(e.log.Name())
	return string(b)
}

// Docker runs the docker CLI against this engine and returns its combined
// output.
func (e *Engine) Docker(ctx context.Context, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host, "DOCKER_CONFIG="+filepath.Join(e.Dir, "cli"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// MustDocker is Docker that fails t on error.
func (e *Engine) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.Docker(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// Stop removes all containers and plugins and stops dockerd. An engine
// whose API does not answer (stuck restoring, or killed) is killed with
// everything it started: containerd, shims, containers, the plugin.
func (e *Engine) Stop(t testing.TB) {
	defer e.killAll()
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	if err := e.Ping(10 * time.Second); err != nil {
		fmt.Fprintf(e.log, "=== enginetest: API not answering at cleanup (%v): killing the engine\n", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if ids, err := e.Docker(ctx, "ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		e.Docker(ctx, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	if nets, err := e.Docker(ctx, "network", "ls", "-q", "--filter", "driver=tslink:latest"); err == nil {
		for _, n := range strings.Fields(nets) {
			e.Docker(ctx, "network", "rm", n)
		}
	}
	e.Docker(ctx, "plugin", "disable", "-f", "tslink:latest")
	e.stopDaemon()
}

// stopDaemon stops dockerd with SIGTERM, as `systemctl stop docker` does,
// and waits for it to exit; after 30 s it kills dockerd's process group and
// returns an error saying so.
func (e *Engine) stopDaemon() error {
	if e.cmd == nil || e.cmd.Process == nil {
		return nil
	}
	fmt.Fprintf(e.log, "=== enginetest: SIGTERM to dockerd %d\n", e.cmd.Process.Pid)
	e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { e.cmd.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("dockerd %d did not exit within 30 s of SIGTERM: killed", e.cmd.Process.Pid)
		syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	e.cmd = nil
	return err
}

func (e *Engine) removeAll() {
	// Unmount what dockerd left (netns files, overlay layers, plugin rootfs).
	e.unmountAll()
	deleteEngineLinks()
	e.log.Close()
	os.RemoveAll(e.Dir)
}
