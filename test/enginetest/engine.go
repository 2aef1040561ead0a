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
	cmd  *exec.Cmd
	log  *os.File
	args []string // extra dockerd flags
}

// StartEngine starts a dockerd of its own and stops it (removing every
// container, plugin and mount it made) when t ends.
func StartEngine(t testing.TB, dockerdArgs ...string) *Engine {
	t.Helper()
	dir, err := os.MkdirTemp("", "tse")
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{Dir: dir, Host: "unix://" + filepath.Join(dir, "d.sock"), args: dockerdArgs}
	e.log, err = os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(t); e.removeAll() })
	e.start(t)
	return e
}

func (e *Engine) start(t testing.TB) {
	t.Helper()
	args := append([]string{
		"--data-root", filepath.Join(e.Dir, "data"),
		"--exec-root", filepath.Join(e.Dir, "exec"),
		"--pidfile", filepath.Join(e.Dir, "dockerd.pid"),
		"-H", e.Host,
		"--bridge", "none",
	}, e.args...)
	e.cmd = exec.Command("dockerd", args...)
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("starting dockerd: %v", err)
	}
	err := netnstest.WaitFor(60*time.Second, func() error {
		_, err := e.Docker(context.Background(), "version", "--format", "{{.Server.Version}}")
		return err
	})
	if err != nil {
		t.Fatalf("dockerd did not come up: %v\n%s", err, e.LogTail(30))
	}
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

// Stop removes all containers and plugins and stops dockerd.
func (e *Engine) Stop(t testing.TB) {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	ctx := context.Background()
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

func (e *Engine) stopDaemon() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	e.cmd = nil
}

func (e *Engine) removeAll() {
	// Unmount what dockerd left (netns files, overlay layers, plugin rootfs).
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], e.Dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	e.log.Close()
	os.RemoveAll(e.Dir)
}
