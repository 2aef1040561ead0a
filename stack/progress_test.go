package stack

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"tailscale.com/types/logger"
)

func TestControlProgressFollowsLoginSteps(t *testing.T) {
	var lines []string
	var p controlProgress
	logf := p.tap(func(format string, args ...any) { lines = append(lines, format) })
	if got := p.describe(time.Now()); got != "" || p.controlAccepted() {
		t.Fatalf("before any answer: describe %q, accepted %v; want \"\", false", got, p.controlAccepted())
	}
	logf("some other backend line %d", 1)
	control := logger.WithPrefix(logf, "control: ")
	control("control server key from %s: ts2021=%s, legacy=%v", "http://10.238.0.1:1", "[k1]", "[k2]")
	if got := p.describe(time.Now()); !strings.Contains(got, "the registration was not sent yet") {
		t.Errorf("after the key: describe %q", got)
	}
	control("RegisterReq: onode=%v node=%v fup=%v nks=%v", "", "[n1]", false, false)
	if got := p.describe(time.Now()); !strings.Contains(got, "is pending") || p.controlAccepted() {
		t.Errorf("after the request: describe %q, accepted %v", got, p.controlAccepted())
	}
	control("RegisterReq: got response; nodeKeyExpired=%v, machineAuthorized=%v; authURL=%v", false, true, false)
	if got := p.describe(time.Now()); !strings.Contains(got, "control accepted the registration") || !p.controlAccepted() {
		t.Errorf("after the answer: describe %q, accepted %v", got, p.controlAccepted())
	}
	if len(lines) != 4 {
		t.Errorf("the tapped logger passed on %d lines; want 4", len(lines))
	}

	for _, c := range []struct {
		expired, authorized, url bool
	}{{true, true, false}, {false, false, false}, {false, true, true}} {
		var q controlProgress
		lf := logger.WithPrefix(q.tap(logger.Discard), "control: ")
		lf("RegisterReq: onode=%v node=%v fup=%v nks=%v", "", "[n1]", false, false)
		lf("RegisterReq: got response; nodeKeyExpired=%v, machineAuthorized=%v; authURL=%v", c.expired, c.authorized, c.url)
		if q.controlAccepted() {
			t.Errorf("nodeKeyExpired=%v machineAuthorized=%v authURL=%v counted as accepted", c.expired, c.authorized, c.url)
		}
	}
}

// TestLoginLogMarkersInTailscale checks that the tailscale.com this build
// uses still logs the login steps controlProgress looks for.
func TestLoginLogMarkersInTailscale(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "tailscale.com").Output()
	if err != nil {
		t.Skipf("go list -m tailscale.com: %v", err)
	}
	file := filepath.Join(strings.TrimSpace(string(out)), "control", "controlclient", "direct.go")
	src, err := os.ReadFile(file)
	if err != nil {
		t.Skipf("tailscale.com source not at hand: %v", err)
	}
	for _, m := range []string{logControlKey, logRegisterSent, logRegisterAnswered, "nodeKeyExpired=%v, machineAuthorized=%v; authURL=%v"} {
		if !strings.Contains(string(src), m) {
			t.Errorf("%s no longer logs %q", file, m)
		}
	}
}

func TestStartPhasesString(t *testing.T) {
	p := startPhases{tun: 20 * time.Millisecond, memoryRelease: time.Millisecond, tsnetStart: 3140 * time.Millisecond}
	if got, want := p.String(), "TUN 20ms, tsnet start 3.1s"; got != want {
		t.Errorf("String = %q; want %q", got, want)
	}
	if got, want := p.total(), 3161*time.Millisecond; got != want {
		t.Errorf("total = %v; want %v", got, want)
	}
	if got := (startPhases{}).String(); got != "nothing over 10ms" {
		t.Errorf("zero String = %q", got)
	}
}

var heapSink [][]byte

// TestReleaseBeforeStartOnlyWhenWorthwhile: a heap keeping a node's worth
// of free pages is released before a start; right after that, with nothing
// to release, a start does not wait for a forced GC.
func TestReleaseBeforeStartOnlyWhenWorthwhile(t *testing.T) {
	for range 256 {
		b := make([]byte, 64<<10)
		b[0] = 1 // resident
		heapSink = append(heapSink, b)
	}
	heapSink = nil
	runtime.GC()
	if kept := heapFreeKept(); kept < releaseWorthwhile {
		t.Skipf("the runtime already returned the freed heap (%d KiB kept)", kept>>10)
	}
	releaseBeforeStart()
	// A release that outlasted startReleaseWait goes on in the background.
	deadline := time.Now().Add(10 * time.Second)
	for heapFreeKept() >= releaseWorthwhile && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if kept := heapFreeKept(); kept >= releaseWorthwhile {
		t.Fatalf("%d KiB of free heap kept after the release", kept>>10)
	}
	if waited := releaseBeforeStart(); waited != 0 {
		t.Errorf("waited %v with nothing to release; want no release", waited)
	}
}
