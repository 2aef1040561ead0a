package netnstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tailscale.com/ipn/ipnstate"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// TailscaleBinaries builds tailscaled and tailscale from the tools module
// (test/tools: tailscale.com as released, without the main module's patched
// wireguard-go) once per test binary and returns the directory holding them. The Go build cache keeps this fast
// after the first time.
func TailscaleBinaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir = filepath.Join(os.TempDir(), fmt.Sprintf("tslink-tsbin-%d", os.Getpid()))
		AtExit(func() { os.RemoveAll(binDir) })
		cmd := exec.Command("go", "build", "-o", binDir+"/", "tailscale.com/cmd/tailscaled", "tailscale.com/cmd/tailscale")
		cmd.Dir = filepath.Join(ModuleRoot(), "test", "tools")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building tailscaled: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// ModuleRoot returns the directory of go.mod above the working directory (a
// test's package dir), for building the project's binaries.
func ModuleRoot() string {
	dir, _ := os.Getwd()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
	}
	return dir
}

// Laptop is the user's other machine: tailscaled with a kernel TUN in its
// own netns, logged in to the lab's control server.
type Laptop struct {
	NS       *NetNS
	Hostname string
	bin      string
	dir      string
	cmd      *exec.Cmd
}

// NewLaptop creates the laptop netns, wires it to the lab netns
// (10.238.0.1 <-> 10.238.0.2, so [LabAddr] exists once it returns) and starts
// tailscaled there, logged out. [Laptop.Up] logs it in. Everything stops when
// t ends.
func NewLaptop(t testing.TB) *Laptop {
	t.Helper()
	bin := TailscaleBinaries(t)
	lns := NewNetNS(t, "lap")
	hostVeth := fmt.Sprintf("lab%d", nsSeq.Add(1))
	Run(t, "ip", "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", lns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostVeth).Run() })
	Run(t, "ip", "addr", "add", LabAddr+"/24", "dev", hostVeth)
	Run(t, "ip", "link", "set", hostVeth, "up")
	Run(t, "ip", "-n", lns.Name, "addr", "add", LaptopAddr+"/24", "dev", "eth0")
	Run(t, "ip", "-n", lns.Name, "link", "set", "eth0", "up")

	l := &Laptop{NS: lns, Hostname: "laptop", bin: bin, dir: t.TempDir()}
	l.cmd = exec.Command("ip", "netns", "exec", lns.Name, filepath.Join(bin, "tailscaled"),
		"--state="+filepath.Join(l.dir, "tailscaled.state"),
		"--socket="+l.socket(),
		"--statedir="+l.dir,
		"--tun=tailscale0",
		"--port=0",
		"--no-logs-no-support",
	)
	l.cmd.Env = append(os.Environ(), "TS_NO_LOGS_NO_SUPPORT=true")
	logf, err := os.Create(filepath.Join(l.dir, "tailscaled.log"))
	if err != nil {
		t.Fatal(err)
	}
	l.cmd.Stdout, l.cmd.Stderr = logf, logf
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("starting laptop tailscaled: %v", err)
	}
	t.Cleanup(func() {
		l.cmd.Process.Kill()
		l.cmd.Wait()
		logf.Close()
	})
	if err := WaitFor(10*time.Second, func() error { _, err := os.Stat(l.socket()); return err }); err != nil {
		t.Fatalf("laptop tailscaled did not start: %v", err)
	}
	return l
}

// Up runs `tailscale up` on the laptop against controlURL with authKey.
func (l *Laptop) Up(t testing.TB, controlURL, authKey string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := l.Tailscale(ctx, "up", "--login-server="+controlURL, "--authkey="+authKey,
		"--hostname="+l.Hostname, "--accept-dns=false", "--netfilter-mode=off", "--timeout=25s"); err != nil {
		log, _ := os.ReadFile(filepath.Join(l.dir, "tailscaled.log"))
		t.Fatalf("laptop tailscale up: %v\n%s\ntailscaled log tail:\n%s", err, out, tail(log, 40))
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (l *Laptop) socket() string { return filepath.Join(l.dir, "tailscaled.sock") }

// Tailscale runs the tailscale CLI against the laptop's tailscaled.
func (l *Laptop) Tailscale(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(l.bin, "tailscale"), append([]string{"--socket=" + l.socket()}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Status returns `tailscale status --json`.
func (l *Laptop) Status(t testing.TB) *ipnstate.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := l.Tailscale(ctx, "status", "--json")
	if err != nil {
		t.Fatalf("tailscale status: %v\n%s", err, out)
	}
	var st ipnstate.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("parsing tailscale status: %v", err)
	}
	return &st
}

// IPv4 returns the laptop's Tailscale IPv4 address.
func (l *Laptop) IPv4(t testing.TB) netip.Addr {
	for _, ip := range l.Status(t).TailscaleIPs {
		if ip.Is4() {
			return ip
		}
	}
	t.Fatal("laptop has no Tailscale IPv4")
	return netip.Addr{}
}

// IPv6 returns the laptop's Tailscale IPv6 address.
func (l *Laptop) IPv6(t testing.TB) netip.Addr {
	for _, ip := range l.Status(t).TailscaleIPs {
		if ip.Is6() {
			return ip
		}
	}
	t.Fatal("laptop has no Tailscale IPv6")
	return netip.Addr{}
}
