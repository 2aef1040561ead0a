package stack

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	wgdevice "github.com/tailscale/wireguard-go/device"
	"tailscale.com/envknob"
)

// portMapperSetting is tailscale's envknob that turns off the port mapper
// (UPnP, NAT-PMP and PCP requests to the LAN's gateway, tailscale.com
// net/portmapper). Each node would run its own on every netcheck and could
// ask the gateway for a mapping per container; containers do not need one.
const portMapperSetting = "TS_DISABLE_PORTMAPPER"

var processDefaultsOnce sync.Once

// receiveBatchSize is the most UDP messages one receive of a node's
// wireguard-go receive routine takes (patched wireguard-go's
// device.MaxReceiveBatchSize; unpatched: 128). Each of a node's three
// receive routines holds this many 64 KiB buffers for its lifetime. With
// UDP GRO, one message read carries up to 64 coalesced datagrams (the
// kernel's UDP_GRO_CNT_MAX), which net/batching splits into the receive's
// other messages: 64 holds one such message (patched net/batching reads
// one message, not two, into a receive of fewer than 128:
// docs/batching-patch.md).
const receiveBatchSize = 64

// applyProcessDefaults sets, once per process and before the first node,
// the switches that hold for every node: log upload (see
// [AllowLogUpload]), the port mapper off unless the plugin's environment
// sets TS_DISABLE_PORTMAPPER itself, and wireguard-go's batch caps
// (docs/wireguard-go-patch.md), unless [KeepFullPacketBatches] was called.
// It also starts [releaseWhenFreeHeapPilesUp] for the process's life and
// makes every node's netmon read interfaces through
// [registerInterfaceGetter].
func applyProcessDefaults() {
	processDefaultsOnce.Do(func() {
		applyLogPolicy()
		if _, set := os.LookupEnv(portMapperSetting); !set {
			envknob.Setenv(portMapperSetting, "1")
		}
		go releaseWhenFreeHeapPilesUp()
		registerInterfaceGetter()
		if fullPacketBatches.Load() {
			return
		}
		wgdevice.MaxBatchSize = tunBatchSize
		wgdevice.MaxReceiveBatchSize = receiveBatchSize
	})
}

// PacketBatchSetting is the plugin setting that chooses wireguard-go's
// batch sizes: "small" (the default: tslink's caps) or "full" (see
// [KeepFullPacketBatches]).
const PacketBatchSetting = "TSLINK_PACKET_BATCH"

var fullPacketBatches atomic.Bool

// KeepFullPacketBatches makes every node of this process use wireguard-go's
// batch sizes as tailscale.com ships them (128 packets per receive and per
// TUN read) instead of tslink's caps: about 16 MiB more heap
// per node (docs/wireguard-go-patch.md). Call it before the first [Start];
// the choice is process-wide because wireguard-go's caps are.
func KeepFullPacketBatches() { fullPacketBatches.Store(true) }

// freedMemory coalesces [releaseFreedMemory] calls.
var freedMemory struct {
	mu      sync.Mutex
	begun   atomic.Uint64 // releases begun so far
	covered uint64        // the number of the last finished release, under mu
}

// releaseFreedMemory returns the process's freed heap to the OS before a
// node starts ([releaseBeforeStart]) and after a burst of starts
// (debug.FreeOSMemory: a GC, then every free page released).
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
func releaseFreedMemory() { releaseFreedMemoryOver(0) }

// releaseFreedMemoryOver is [releaseFreedMemory], skipped when, once the
// caller's turn has come, the heap keeps less than minFree bytes of free
// pages.
func releaseFreedMemoryOver(minFree uint64) {
	arrived := freedMemory.begun.Load()
	freedMemory.mu.Lock()
	defer freedMemory.mu.Unlock()
	if freedMemory.covered > arrived || heapFreeKept() < minFree {
		return
	}
	seq := freedMemory.begun.Add(1)
	debug.FreeOSMemory()
	freedMemory.covered = seq
}

// releaseWorthwhile is the free heap, kept by the runtime and resident,
// below which a node starts without [releaseFreedMemory]: the most the
// node's buffers could reuse (and so keep resident) instead of taking
// released pages.
const releaseWorthwhile = 8 << 20

// startReleaseWait bounds how long a node start waits for
// [releaseBeforeStart]'s release. A forced GC of a multi-GiB heap takes
// about a tenth of a second on an idle host but seconds on a starved one,
// where every Join would otherwise spend them from its budget (and wait
// behind the release of the Join before it).
const startReleaseWait = time.Second

// releaseBeforeStart runs [releaseFreedMemory] before a node start when the
// heap keeps at least [releaseWorthwhile] of free pages (as after nodes
// were removed); a heap with less has nothing worth a forced GC. It waits
// for the release at most [startReleaseWait]; a longer release goes on in
// the background (the node's buffers then partly reuse kept pages). It
// returns how long it waited.
func releaseBeforeStart() time.Duration {
	if heapFreeKept() < releaseWorthwhile {
		return 0
	}
	began := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		releaseFreedMemoryOver(releaseWorthwhile)
	}()
	select {
	case <-done:
	case <-time.After(startReleaseWait):
	}
	return time.Since(began)
}

// heapFreeKept reads the runtime's free heap pages that are still backed by
// memory (runtime/metrics /memory/classes/heap/free:bytes: free and
// eligible to be returned to the OS but not returned).
func heapFreeKept() uint64 {
	return runtimeMetrics("/memory/classes/heap/free:bytes")[0]
}

// runtimeMetrics reads the named uint64 runtime/metrics, in order (0 for
// one the runtime does not offer). Reading them does not stop the world.
func runtimeMetrics(names ...string) []uint64 {
	s := make([]metrics.Sample, len(names))
	for i, name := range names {
		s[i].Name = name
	}
	metrics.Read(s)
	values := make([]uint64, len(s))
	for i, v := range s {
		if v.Value.Kind() == metrics.KindUint64 {
			values[i] = v.Value.Uint64()
		}
	}
	return values
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
	lastNodeStart.Store(time.Now().UnixNano())
	settleRelease.mu.Lock()
	defer settleRelease.mu.Unlock()
	if settleRelease.timer == nil {
		settleRelease.timer = time.AfterFunc(startSettleDelay, releaseFreedMemory)
		return
	}
	settleRelease.timer.Reset(startSettleDelay)
}

// Thresholds of [releaseWhenFreeHeapPilesUp]: how often it looks, how long
// after the last node start, and the least heap beyond the live heap that
// it returns.
const (
	freeHeapCheckInterval = 30 * time.Second
	freeHeapQuietAfter    = time.Minute
	freeHeapPileUp        = 64 << 20
)

// lastNodeStart is when a node last finished its start (Unix nanoseconds).
var lastNodeStart atomic.Int64

// releaseWhenFreeHeapPilesUp runs for the process's life: every
// freeHeapCheckInterval it returns the freed heap to the OS
// ([releaseFreedMemory]: a forced GC, then every free page released)
// when no node started for freeHeapQuietAfter and the heap beyond the live
// heap of the last GC (garbage not collected yet, and free pages the
// runtime keeps resident) is at least freeHeapPileUp. During a burst of
// starts, [releaseBeforeStart] and [releaseFreedMemorySoon] release
// instead. The Go runtime lets the heap grow to twice the live heap
// (GOGC=100) before it collects, keeps freed pages up to that goal, and the
// live heap counts every node's unwritten packet buffers: with many nodes,
// netmap updates after the last start would otherwise keep the plugin's RSS
// near that goal for as long as it runs.
func releaseWhenFreeHeapPilesUp() {
	for range time.Tick(freeHeapCheckInterval) {
		if time.Since(time.Unix(0, lastNodeStart.Load())) < freeHeapQuietAfter {
			continue
		}
		if heapBeyondLive() >= freeHeapPileUp {
			releaseFreedMemory()
		}
	}
}

// heapBeyondLive reads how much more the heap holds than the live heap of
// the last GC (runtime/metrics /gc/heap/live:bytes): objects allocated
// since, live or not (/memory/classes/heap/objects:bytes minus live), and
// free pages not returned to the OS (/memory/classes/heap/free:bytes).
func heapBeyondLive() uint64 {
	m := runtimeMetrics("/gc/heap/live:bytes", "/memory/classes/heap/objects:bytes", "/memory/classes/heap/free:bytes")
	if held := m[1] + m[2]; held > m[0] {
		return held - m[0]
	}
	return 0
}
