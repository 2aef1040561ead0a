package stack

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// LocalBackend call latency. tailscale's ipnlocal deadlock watchdog
// (ipn/ipnlocal/watchdog.go in v1.102.5) panics the whole process when a
// watched LocalBackend lock stays held for about 35 s, so how long a call
// waits on a node's backend under load is worth knowing. Every running node
// times one cheap call that takes the backend's mutex (LocalAPI GET prefs:
// LocalBackend.Prefs) once per [backendProbeInterval]; [BackendCallMax] is
// the longest seen in the process, a probe still waiting included.

// backendProbeInterval is how often each node's backend is probed.
const backendProbeInterval = time.Second

var (
	backendCallMax atomic.Int64 // nanoseconds
	backendProbes  sync.Map     // *Node -> time.Time: probes in flight
)

// BackendCallMax returns the longest LocalBackend call latency seen by the
// probes of this process's nodes so far, counting probes still waiting.
func BackendCallMax() time.Duration {
	longest := time.Duration(backendCallMax.Load())
	now := time.Now()
	backendProbes.Range(func(_, v any) bool {
		longest = max(longest, now.Sub(v.(time.Time)))
		return true
	})
	return longest
}

// probeBackend times a LocalBackend call once per backendProbeInterval until
// ctx ends.
func (n *Node) probeBackend(ctx context.Context) {
	t := time.NewTicker(backendProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		began := time.Now()
		backendProbes.Store(n, began)
		_, err := n.lc.GetPrefs(ctx)
		took := time.Since(began)
		backendProbes.Delete(n)
		if err != nil {
			continue // closing: ctx ended the call
		}
		for {
			old := backendCallMax.Load()
			if int64(took) <= old || backendCallMax.CompareAndSwap(old, int64(took)) {
				break
			}
		}
	}
}
