package stack

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/ipn"
)

// TestTailnetRequiringLogs: with network flow logs on in the tailnet
// (devcontrol gives the data-plane-audit-logs capability) and log upload
// off, Start fails fast with an error naming the plugin setting; once the
// requirement is gone the same persistent node starts (tsnet's start sets
// WantRunning=true over the WantRunning=false ipnlocal saved) and, while it
// runs, stops and resumes as the requirement comes and goes; with log
// upload allowed the node runs under the requirement. (tsnet uploads nothing from a test binary, and
// sends logs to log.tailscale.com regardless of TS_LOG_TARGET, so where
// the logs go is not tested here.)
func TestTailnetRequiringLogs(t *testing.T) {
	l := newLab(t)
	l.control.SetRequireClientLogs(true)
	cfg := l.config("logged")
	cfg.Ephemeral = false
	start := func() (*Node, time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cfg.EndpointID = randomID()
		began := time.Now()
		n, err := Start(ctx, cfg)
		return n, time.Since(began), err
	}

	applyLogPolicy()
	n, took, err := start()
	if err == nil {
		n.Close(context.Background())
		t.Fatalf("node started in a tailnet requiring logs with log upload off")
	}
	if !errors.Is(err, ErrLogsRequired) || !strings.Contains(err.Error(), "requires client logging") || !strings.Contains(err.Error(), LogUploadSetting+"=1") {
		t.Errorf("error %q: want ErrLogsRequired naming %s=1", err, LogUploadSetting)
	}
	if took > 5*time.Second {
		t.Errorf("failed after %v, want fast", took)
	}
	t.Logf("failed after %v: %v", took.Round(time.Millisecond), err)

	// The requirement gone: the same state dir runs again.
	l.control.SetRequireClientLogs(false)
	n, took, err = start()
	if err != nil {
		t.Fatalf("after the requirement was lifted: %v\nlogs:\n%s", err, l.logs)
	}
	prefs, err := n.LocalClient().GetPrefs(context.Background())
	if err != nil || !prefs.WantRunning {
		t.Errorf("prefs WantRunning after restart: %v, %v", prefs != nil && prefs.WantRunning, err)
	}
	if st := n.Status(); st.State != ipn.Running.String() {
		t.Errorf("after restart, node state %s (last error %q), want Running", st.State, st.LastErr)
	}
	t.Logf("the same node started in %v once the requirement was gone", took.Round(time.Millisecond))

	// While it runs: the requirement turned on stops it with the clear
	// error; turned off, the node asks control again and runs.
	defer func(d time.Duration) { logsRetryInterval = d }(logsRetryInterval)
	logsRetryInterval = time.Second
	l.control.SetRequireClientLogs(true)
	if err := waitFor(10*time.Second, func() error {
		if st := n.Status(); !strings.HasPrefix(st.LastErr, ErrLogsRequired.Error()) {
			return fmt.Errorf("state %s, last error %q", st.State, st.LastErr)
		}
		return nil
	}); err != nil {
		t.Errorf("running node, requirement on: %v", err)
	}
	l.control.SetRequireClientLogs(false)
	if err := waitFor(15*time.Second, func() error {
		if st := n.Status(); st.State != ipn.Running.String() || st.LastErr != "" {
			return fmt.Errorf("state %s, last error %q", st.State, st.LastErr)
		}
		return nil
	}); err != nil {
		t.Errorf("running node, requirement off again: %v", err)
	}
	n.Close(context.Background())

	// Log upload allowed (tailscale's switch is process-wide; restored after).
	envknob.Setenv("TS_NO_LOGS_NO_SUPPORT", "")
	t.Cleanup(func() { envknob.SetNoLogsNoSupport() })
	l.control.SetRequireClientLogs(true)
	n, _, err = start()
	if err != nil {
		t.Fatalf("with log upload allowed: %v", err)
	}
	defer n.Close(context.Background())
	time.Sleep(time.Second) // the capability arrives with the netmap; give it a moment
	if st := n.Status(); st.State != ipn.Running.String() {
		t.Errorf("with log upload allowed, node state %s (last error %q), want Running", st.State, st.LastErr)
	}
}
