package stack

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/envknob"
	"tailscale.com/ipn"
	"tailscale.com/logtail"
)

// LogUploadSetting is the plugin setting (an environment variable of the
// plugin process) that allows log upload when set to "1".
const LogUploadSetting = "TSLINK_LOG_UPLOAD"

var (
	logUploadAllowed atomic.Bool
	logPolicyOnce    sync.Once
)

// AllowLogUpload lets every node of this process upload Tailscale's client
// logs (tsnet's backend log and, where the tailnet turns them on, network
// flow logs) to Tailscale's log service. Call it before the first [Start];
// the choice is process-wide because tailscale's switch is (envknob
// TS_NO_LOGS_NO_SUPPORT, read by ipnlocal, logpolicy and netlog). tsnet
// sends the logs to log.tailscale.com: it does not read TS_LOG_TARGET.
func AllowLogUpload() { logUploadAllowed.Store(true) }

// applyLogPolicy turns log upload off for the process unless
// [AllowLogUpload] was called: tslink keeps node logs local (debug.log).
//
// With upload off, logtail is switched off too (logtail.Disable,
// process-wide): tsnet builds a logtail logger for every node whatever
// TS_NO_LOGS_NO_SUPPORT says (tailscale.com tsnet startLogger), which
// would compress each backend log line and spool it to
// tailscaled.log*.txt in the node's state dir for an upload that never
// comes. The backend log still reaches [Config.Logf].
func applyLogPolicy() {
	logPolicyOnce.Do(func() {
		if !logUploadAllowed.Load() {
			envknob.SetNoLogsNoSupport()
			logtail.Disable()
		}
	})
}

// requiresLogging reports whether an IPN bus error message is ipnlocal's
// answer to the node capability tailcfg.CapabilityDataPlaneAuditLogs (the
// tailnet has network flow logs on) while log upload is off: the backend
// then saves WantRunning=false and stops. tsnet sets WantRunning=true at
// every start, so the same state dir runs again once the capability is gone.
func requiresLogging(msg string) bool {
	return strings.Contains(msg, "tailnet requires logging")
}

// logsRetryInterval is how often a node stopped by [requiresLogging] asks
// control again (a variable for tests).
var logsRetryInterval = 30 * time.Second

// resumeWhenLogsNotRequired starts, unless one runs, a goroutine that sets
// WantRunning=true every [logsRetryInterval] while the node's last error is
// [ErrLogsRequired]: a stopped backend no longer polls control, so it would
// not learn that the tailnet stopped requiring logs. If it still does, the
// backend stops again at once.
func (n *Node) resumeWhenLogsNotRequired(ctx context.Context) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.logsRetrying || n.closed {
		return
	}
	n.logsRetrying = true
	n.wg.Go(func() {
		defer func() {
			n.mu.Lock()
			n.logsRetrying = false
			n.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(logsRetryInterval):
			}
			n.mu.Lock()
			still := strings.HasPrefix(n.lastErr, ErrLogsRequired.Error()) && !n.closed
			n.mu.Unlock()
			if !still {
				return
			}
			ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := n.lc.EditPrefs(ectx, &ipn.MaskedPrefs{WantRunningSet: true, Prefs: ipn.Prefs{WantRunning: true}})
			cancel()
			if err != nil && ctx.Err() == nil {
				n.logf("tslink: asking control again whether the tailnet still requires logs: %v", err)
			}
		}
	})
}
