package stack

import (
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/envknob"
)

// portMapperSetting is tailscale's envknob that turns off the port mapper
// (UPnP, NAT-PMP and PCP requests to the LAN's gateway, tailscale.com
// net/portmapper). Each node would run its own on every netcheck and could
// ask the gateway for a mapping per container; containers do not need one.
const portMapperSetting = "TS_DISABLE_PORTMAPPER"

var processDefaultsOnce sync.Once

// applyProcessDefaults sets, once per process and before the first node,
// the tailscale switches that hold for every node: log upload (see
// [AllowLogUpload]) and the port mapper off unless the plugin's
// environment sets TS_DISABLE_PORTMAPPER itself.
func applyProcessDefaults() {
	processDefaultsOnce.Do(func() {
		applyLogPolicy()
		if _, set := os.LookupEnv(portMapperSetting); !set {
			envknob.Setenv(portMapperSetting, "1")
		}
	})
}

// freedMemory coalesces [releaseFreedMemory] calls.
var freedMemory struct {
	mu      sync.Mutex
	begun   atomic.Uint64 // releases begun so far
	covered uint64        // the number of the last finished release, under mu
}

// releaseFreedMemory returns the process's freed heap to the OS before a
// node starts (debug.FreeOSMemory: a GC, then every free page released).
//
// A node allocates about 40 MiB of 64 KiB packet buffers at start
// (wireguard-go's receive and TUN readers, tstun), most of which it never
// writes while idle. The Go runtime zeroes a buffer taken from pages it
// freed but kept, which makes the buffer resident; a buffer taken from
// released pages stays off RAM until used. Without this, a node started
// after others were removed costs the plugin up to its full buffer size in
// RSS.
//
// Calls are serialized and coalesce: a caller that waited while another
// release ran returns once a release that began after it arrived has
// finished, so many starts at once cost about two releases, not one each.
func releaseFreedMemory() {
	arrived := freedMemory.begun.Load()
	freedMemory.mu.Lock()
	defer freedMemory.mu.Unlock()
	if freedMemory.covered > arrived {
		return
	}
	seq := freedMemory.begun.Add(1)
	debug.FreeOSMemory()
	freedMemory.covered = seq
}

// startSettleDelay is how long after the last node start
// [releaseFreedMemorySoon] waits: a new node's first netmaps, and each
// other node's netmap with it as a new peer, arrive in the seconds after
// its start and leave garbage behind.
const startSettleDelay = 5 * time.Second

var settleRelease struct {
	mu    sync.Mutex
	timer *time.Timer
}

// releaseFreedMemorySoon runs [releaseFreedMemory] once no node has started
// for [startSettleDelay]. The garbage of a burst of starts is otherwise
// kept resident by the Go runtime, whose heap goal (twice the live heap at
// GOGC=100) counts the nodes' untouched packet buffers as live.
func releaseFreedMemorySoon() {
	settleRelease.mu.Lock()
	defer settleRelease.mu.Unlock()
	if settleRelease.timer == nil {
		settleRelease.timer = time.AfterFunc(startSettleDelay, releaseFreedMemory)
		return
	}
	settleRelease.timer.Reset(startSettleDelay)
}
