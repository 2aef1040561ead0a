// Package netnstest is the root-only test lab: private network namespaces,
// the local tailnet (devcontrol) and "the user's laptop", a real tailscaled
// built from the pinned tailscale.com module.
//
// # Topology
//
// [Main] re-executes the test binary in a fresh network namespace (unshare
// --net), so nothing a test does can reach or disturb the machine's own
// networks. Inside it:
//
//	test process netns ("lab")             laptop netns (tslink-lap-<pid>)
//	  lo 127.0.0.1                           lo
//	  lab-lap 10.238.0.1/24  <--- veth --->  eth0 10.238.0.2/24
//	  devcontrol: control, DERP, STUN          tailscaled (kernel TUN tailscale0)
//	  on 10.238.0.1                            tailscale up --login-server http://10.238.0.1:…
//	  tsnet nodes (stack.Node)
//	                                         container netns (tslink-ctr-<pid>-<n>)
//	                                           lo, tailscale0 (moved in by stack.Node.Attach)
//
// 10.238.0.0/24 exists only on these veths, inside the private netns. It is a
// private range on purpose: Tailscale's control client never falls back to
// Noise-over-HTTPS on port 443 for an http:// control URL on a private or
// loopback address (control/ts2021), and devcontrol speaks plain HTTP only.
//
// Tests that need root call [RequireRoot], which skips with a message when not
// root, unless TSLINK_REQUIRE_ROOT_TESTS=1 (set by .ci/run) turns the skip
// into a failure.
package netnstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

const (
	// LabAddr is the lab netns's address on the laptop veth; devcontrol
	// listens here.
	LabAddr = "10.238.0.1"
	// LaptopAddr is the laptop's underlay address.
	LaptopAddr = "10.238.0.2"

	envInLab   = "TSLINK_IN_LAB_NETNS"
	envRequire = "TSLINK_REQUIRE_ROOT_TESTS"
)

// Main runs the package's tests, as root inside a private network namespace
// with lo up; not as root it just runs them (root tests then skip). Call it
// from TestMain.
func Main(m *testing.M) {
	if os.Getuid() != 0 || os.Getenv(envInLab) == "1" || os.Getenv("TSLINK_HELPER") != "" {
		if os.Getenv(envInLab) == "1" {
			if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "netnstest: lo up: %v %s\n", err, out)
				os.Exit(1)
			}
		}
		code := m.Run()
		runAtExit()
		os.Exit(code)
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "netnstest:", err)
		os.Exit(1)
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--", exe}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), envInLab+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "netnstest: re-exec under unshare --net:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

var (
	atExitMu sync.Mutex
	atExit   []func()
)

// AtExit registers fn to run after all tests of the binary (for files shared
// between tests, such as built binaries), when [Main] is used.
func AtExit(fn func()) {
	atExitMu.Lock()
	defer atExitMu.Unlock()
	atExit = append(atExit, fn)
}

func runAtExit() {
	atExitMu.Lock()
	defer atExitMu.Unlock()
	for _, fn := range atExit {
		fn()
	}
}

// RequireRoot skips t unless it runs as root in the private lab netns;
// with TSLINK_REQUIRE_ROOT_TESTS=1 it fails instead of skipping.
func RequireRoot(t testing.TB) {
	t.Helper()
	var why string
	switch {
	case runtime.GOOS != "linux":
		why = "needs Linux network namespaces"
	case os.Getuid() != 0:
		why = "needs root (network namespaces, TUN devices); run `make test` as root"
	case os.Getenv(envInLab) != "1":
		why = "needs the private lab netns: call netnstest.Main from TestMain"
	}
	for _, tool := range []string{"ip", "unshare"} {
		if why == "" {
			if _, err := exec.LookPath(tool); err != nil {
				why = "needs " + tool + " (iproute2/util-linux)"
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv(envRequire) == "1" {
		t.Fatalf("root test cannot run: %s (TSLINK_REQUIRE_ROOT_TESTS=1 forbids skipping)", why)
	}
	t.Skipf("skipping root test: %s", why)
}

// Run runs a command, failing t with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var nsSeq atomic.Int64

// NetNS is a named network namespace made by a test.
type NetNS struct {
	Name string
	Path string // /run/netns/<Name>
}

// NewNetNS creates a named netns with lo up and removes it when t ends.
func NewNetNS(t testing.TB, prefix string) *NetNS {
	t.Helper()
	name := fmt.Sprintf("tslink-%s-%d-%d", prefix, os.Getpid(), nsSeq.Add(1))
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return &NetNS{Name: name, Path: filepath.Join("/run/netns", name)}
}

// Exec runs a command inside the netns.
func (n *NetNS) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
}

// Do runs fn on a thread inside the netns; sockets fn opens stay there.
func (n *NetNS) Do(fn func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return fn() })
}

// Listen opens a listener inside the netns.
func (n *NetNS) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial dials from inside the netns.
func (n *NetNS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// WaitFor polls try every 100 ms until it returns nil or d passes, and
// returns the last error.
func WaitFor(d time.Duration, try func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
