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
// waits on a node's backend under load is worth knowing. Running nodes time
// one cheap call that takes the backend's mutex (LocalAPI GET prefs:
// LocalBackend.Prefs): each node every [backendProbeWait], which is
// [backendProbeInterval] while the process has at most
// [backendProbesPerInterval] nodes and longer beyond, so that all nodes
// together make about that many probes per interval: a probe is a LocalAPI
// HTTP round trip with JSON, and at idle, one per node per second is most
// of what the plugin does (docs/bench/notes.md).
// [BackendCallMax] is the longest seen in the process, a probe still
// waiting included, so a lock held for the watchdog's 35 s shows while
// each node is probed more often than that (every 10 s at 100 nodes).

const (
	backendProbeInterval     = time.Second
	backendProbesPerInterval = 10
)

var (
	backendCallMax atomic.Int64 // nanoseconds
	backendProbes  sync.Map     // *Node -> time.Time: probes in flight
	probedNodes    atomic.Int64 // nodes running probeBackend
)

// backendProbeWait is how long a node waits between its probes: the
// interval, stretched so that the process's nodes together make
// backendProbesPerInterval probes per interval.
func backendProbeWait() time.Duration {
	nodes := probedNodes.Load()
	if nodes <= backendProbesPerInterval {
		return backendProbeInterval
	}
	return time.Duration(nodes) * backendProbeInterval / backendProbesPerInterval
}

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

// probeBackend times a LocalBackend call every [backendProbeWait] until ctx
// ends.
func (n *Node) probeBackend(ctx context.Context) {
	probedNodes.Add(1)
	defer probedNodes.Add(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(backendProbeWait()):
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
