package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// stormRounds is how many rounds TestTimeoutStormWhileControlHoldsMaps
// runs: TSLINK_STORM_ROUNDS (make soak sets 10), else 2.
func stormRounds() int {
	if n, err := strconv.Atoi(os.Getenv("TSLINK_STORM_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// TestTimeoutStormWhileControlHoldsMaps: 30 containers start at once while
// control holds every node's first map response; half of them give up
// (ts.timeout=2s) while control has accepted their nodes and their first
// netmap is about to arrive, the moment at which closing a node made
// tailscale's magicsock panic the plugin (docs/bench/plugin-panic.txt). The
// failures reach `docker run` promptly, the others come up, the plugin
// neither panics nor restarts, every failed node leaves control (ephemeral:
// logged out by its teardown) and nothing is left behind. Each round reuses
// the names of the one before, so new Joins meet the previous round's
// nodes still closing.
//
// The failing half carries a serve label: a node control accepted is kept
// at its ts.timeout (its addresses follow the netmap), except when it has
// something to serve, which needs its addresses; so those Joins fail
// exactly when the node is logged in and waits for its netmap. ts.timeout=2s
// waits at most 3.75 s for Running (the rest of Start's reserve), so the
// hold is longer than that.
func TestTimeoutStormWhileControlHoldsMaps(t *testing.T) {
	l := newLab(t)
	const (
		n        = 30
		hold     = 5 * time.Second
		failWant = "no Tailscale address from control yet"
	)
	l.createNetwork("quick", "--opt", "ts.timeout=2s")
	l.createNetwork("patient")
	// Warm up (first Join pays for lazily created state), then hold.
	l.docker("run", "--rm", "--network", "patient", "--label", "ts.hostname=warm", image, "true")
	pid := l.pluginPID()
	if pid == 0 {
		t.Fatal("plugin process not found")
	}
	l.control.HoldFirstMapResponse(hold)

	quick := func(i int) bool { return i%2 == 0 }
	for round := range stormRounds() {
		began := time.Now()
		var wg sync.WaitGroup
		outs, errs, took := make([]string, n), make([]error, n), make([]time.Duration, n)
		for i := range n {
			args := []string{"run", "-d", "--name", fmt.Sprintf("st%02d", i)}
			if quick(i) {
				args = append(args, "--network", "quick", "--label", "ts.serve.80=http:8080")
			} else {
				args = append(args, "--network", "patient")
			}
			args = append(args, image, "httpd", "-f", "-p", "8080", "-h", "/www")
			wg.Go(func() {
				start := time.Now()
				outs[i], errs[i] = l.engine.Docker(context.Background(), args...)
				took[i] = time.Since(start)
			})
		}
		wg.Wait()
		if p := l.pluginPID(); p != pid {
			t.Fatalf("round %d: plugin pid %d, was %d: the plugin restarted; its stderr:\n%s", round, p, pid, lastLines(grepLines(l.engine.Log(), "panic", "goroutine ", ".go:", "level=error plugin="), 150))
		}
		// On a loaded host a quick node may still see its netmap in time,
		// or not yet have control's answer to its registration (the
		// timeout then reads "node not ready" with the registration
		// pending, or "control server unreachable" if control had not
		// answered at all); the round counts only if most of them
		// failed while logged in.
		var slowestFail time.Duration
		heldFailures := 0
		for i := range n {
			name := fmt.Sprintf("st%02d", i)
			switch {
			case quick(i) && errs[i] == nil:
				t.Logf("round %d: %s (ts.timeout=2s, first netmap held %v) started anyway", round, name, hold)
			case quick(i) && strings.Contains(outs[i], failWant):
				heldFailures++
				slowestFail = max(slowestFail, took[i])
			case quick(i) && (strings.Contains(outs[i], "control server unreachable") || strings.Contains(outs[i], "is pending")):
				t.Logf("round %d: %s timed out before its registration was seen: %s", round, name, strings.TrimSpace(outs[i]))
				slowestFail = max(slowestFail, took[i])
			case quick(i):
				t.Errorf("round %d: %s failed with %q; want %q", round, name, strings.TrimSpace(outs[i]), failWant)
			case errs[i] != nil:
				t.Errorf("round %d: %s: %v: %s", round, name, errs[i], outs[i])
			}
		}
		if heldFailures < n/4 {
			t.Errorf("round %d: only %d of %d ts.timeout=2s runs failed waiting for their held netmap; the round did not test closing them", round, heldFailures, n/2)
		}
		// ts.timeout plus Start's reserve, plus dockerd's own work for
		// 30 starts on a small machine; far from dockerd's 30 s.
		if slowestFail > 15*time.Second {
			t.Errorf("round %d: a failing docker run took %v; want the error promptly", round, slowestFail.Round(time.Millisecond))
		}
		for i := range n {
			if !quick(i) {
				l.tsIP(fmt.Sprintf("st%02d", i), "-4")
			}
		}
		t.Logf("round %d: %d failed waiting for their netmap (slowest after %v), %d up, %v", round, heldFailures, slowestFail.Round(time.Millisecond), n/2, time.Since(began).Round(time.Millisecond))
		// Every failed node is torn down (after its netmap) and logs out.
		err := netnstest.WaitFor(30*time.Second, func() error {
			for i := range n {
				if !quick(i) || errs[i] == nil {
					continue
				}
				if nodes := l.control.NodesByHostname(fmt.Sprintf("st%02d", i)); len(nodes) != 0 {
					return fmt.Errorf("st%02d still registered at control: %+v", i, nodes)
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("round %d: %v", round, err)
		}
		names := make([]string, 0, n)
		for i := range n {
			names = append(names, fmt.Sprintf("st%02d", i))
		}
		l.docker(append([]string{"rm", "-f"}, names...)...)
		if p := l.pluginPID(); p != pid {
			t.Fatalf("round %d: plugin pid %d, was %d: the plugin restarted; its stderr:\n%s", round, p, pid, lastLines(grepLines(l.engine.Log(), "panic", "goroutine ", ".go:", "level=error plugin="), 150))
		}
	}
	if log := l.engine.Log(); strings.Contains(log, "panic") {
		t.Errorf("plugin log mentions a panic:\n%s", grepLines(log, "panic"))
	}
	t.Logf("plugin's longest LocalBackend call: %d ms", l.pluginVars().BackendCallMaxMs)
	l.control.HoldFirstMapResponse(0)
	l.docker("network", "rm", "quick", "patient")
	l.noLeftovers()
}
