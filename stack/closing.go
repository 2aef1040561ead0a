package stack

import (
	"context"
	"errors"
	"time"

	"tailscale.com/ipn"
)

// Closing a node safely (tailscale.com v1.102.5).
//
// magicsock panics (nil self in updateRelayServersSet, from SetFilter) when
// a node's first netmap is applied to an engine that was already closed:
// setNetworkMapInternal stores relayClientEnabled from the new self but not
// the self itself once the Conn is closed, and the SetFilter that follows
// dereferences the zero self. It happens when LocalBackend.Shutdown's wait
// for the control client's status queue (controlclient.Auto.Shutdown, at most
// 5 s) ends while that netmap is still being applied, as on a starved host.
// A Conn that applied a netmap while open keeps its self, so later netmaps
// cannot trigger it. The research notes (tsnet-memory.md §6) have the
// file:line trail. Hence:
//
//   - a node whose first netmap may still be in flight is closed only once
//     the IPN bus has shown its self node (SelfChange, sent by LocalBackend
//     after the netmap reached magicsock and the filter), bounded by
//     [firstNetmapWait];
//   - at most [maxConcurrentCloses] tsnet.Server.Close run at once in the
//     process, so a burst of removals does not starve the status queues
//     the closes wait on, while a queue of 100 removals still fits in
//     dockerd's 30 s per Leave (a close costs ~0.15 s of a loaded 2-core
//     host: docs/bench/notes.md). Closes of one node are ordered by its
//     state-dir lock, which a close releases last;
//   - a failed [Start] returns at once and does that in the background; the
//     caller learns when it is done from [TeardownDone], and the state-dir
//     lock is held until then, so a later Start of the same node cannot
//     overlap it.

// firstNetmapWait bounds how long a close waits for a node's first netmap.
// It stays well inside the plugin's close budget (Leave, 30 s at dockerd).
const firstNetmapWait = 8 * time.Second

// maxConcurrentCloses bounds the tsnet.Server.Close calls in flight in the
// process.
const maxConcurrentCloses = 4

var tsnetCloseSlots = make(chan struct{}, maxConcurrentCloses)

// closeTSNet closes the node's tsnet server, waiting for a slot among
// maxConcurrentCloses.
func (n *Node) closeTSNet() {
	queued := time.Now()
	tsnetCloseSlots <- struct{}{}
	defer func() { <-tsnetCloseSlots }()
	began := time.Now()
	n.srv.Close() // closes the TUN through wgengine
	n.logf("tslink: tsnet closed in %v (after %v behind other closes)", time.Since(began).Round(time.Millisecond), began.Sub(queued).Round(time.Millisecond))
}

// markSelfSeen records that the IPN bus showed the node's self node: its
// first netmap has been applied.
func (n *Node) markSelfSeen() {
	n.selfOnce.Do(func() { close(n.selfSeen) })
}

// markLoginRefused records that control refused the login (key rejected,
// interactive login wanted): no netmap can follow.
func (n *Node) markLoginRefused() {
	n.mu.Lock()
	n.loginRefused = true
	n.mu.Unlock()
}

// awaitFirstNetmap waits, up to firstNetmapWait, until the first netmap of a
// node control accepted has been applied (firstNetmapPending). It reports
// how long it waited and whether the netmap has been applied.
func (n *Node) awaitFirstNetmap() (waited time.Duration, arrived bool) {
	select {
	case <-n.selfSeen:
		return 0, true
	default:
	}
	if !n.firstNetmapPending() {
		return 0, false
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), firstNetmapWait)
	defer cancel()
	// The initial notify carries the self node if the netmap is already
	// there; otherwise the SelfChange of its arrival follows.
	w, err := n.lc.WatchIPNBus(ctx, ipn.NotifyInitialNetMap|ipn.NotifyNoNetMap)
	if err != nil {
		return time.Since(began), false
	}
	defer w.Close()
	for {
		nt, err := w.Next()
		if err != nil {
			return time.Since(began), false
		}
		if nt.SelfChange != nil {
			n.markSelfSeen()
			return time.Since(began), true
		}
	}
}

// safeTeardown waits for a pending first netmap (awaitFirstNetmap), then
// tears the node down (teardown, or teardownKeepingTUN for a failed
// adoption).
func (n *Node) safeTeardown(keepTUN bool) {
	if n.srv != nil {
		if waited, arrived := n.awaitFirstNetmap(); waited > 0 {
			if arrived {
				n.logf("tslink: closing after its first netmap arrived (waited %v)", waited.Round(time.Millisecond))
			} else {
				n.logf("tslink: closing without a netmap after waiting %v for it", waited.Round(time.Millisecond))
			}
		}
	}
	if keepTUN {
		n.teardownKeepingTUN()
	} else {
		n.teardown()
	}
}

// pendingTeardown is the error of a failed [Start] whose node is still
// being torn down in the background.
type pendingTeardown struct {
	err  error
	done chan struct{}
}

func (e *pendingTeardown) Error() string { return e.err.Error() }
func (e *pendingTeardown) Unwrap() error { return e.err }

// TeardownDone returns a channel closed once the node of the failed [Start]
// that returned err has released everything (TUN, tsnet, state-dir lock).
// For any other error, or nil, the channel is already closed.
func TeardownDone(err error) <-chan struct{} {
	var p *pendingTeardown
	if errors.As(err, &p) {
		return p.done
	}
	done := make(chan struct{})
	close(done)
	return done
}
