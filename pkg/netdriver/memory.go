package netdriver

import (
	"runtime"
	"runtime/debug"
	"time"
)

// memoryReleaseDelay coalesces memory releases after endpoints leave.
const memoryReleaseDelay = 3 * time.Second

func (d *Driver) releaseMemory() {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	// Stopped nodes' wireguard-go and tstun buffers sit in sync.Pools; a
	// pool's objects survive one GC as victims and go at the next, so two
	// GCs run before FreeOSMemory's own returns the heap.
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	d.releases.Add(1)
	d.log.Debug("memory released to the OS", "heap_live_kib", after.HeapAlloc>>10, "released_kib", (int64(after.HeapReleased)-int64(before.HeapReleased))>>10, "heap_sys_kib", after.HeapSys>>10)
}

// MemoryReleases counts the times freed memory was returned to the OS after
// endpoints left (one per quiet period of memoryReleaseDelay).
func (d *Driver) MemoryReleases() uint64 { return d.releases.Load() }

// scheduleMemoryRelease frees a stopped node's memory now and returns it to
// the OS a moment after the last one left. The Go runtime otherwise keeps
// freed heap mapped for minutes, so the plugin's RSS would stay at its
// high-water mark after a burst of containers.
func (d *Driver) scheduleMemoryRelease() {
	if d.collecting.CompareAndSwap(false, true) {
		go d.collectStoppedNodes()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.releaseTimer == nil {
		d.releaseTimer = time.AfterFunc(memoryReleaseDelay, d.releaseMemory)
		return
	}
	d.releaseTimer.Reset(memoryReleaseDelay)
}

// collectStoppedNodes runs the two garbage collections that free a stopped
// node's buffers. Most of a node's memory (wireguard-go's message buffers
// and tstun's) sits in its sync.Pools, which outlive the node by two GCs
// (live, then victim). Left to the pacer, those GCs come late, after the
// heap has doubled again, so containers cycling one at a time held several
// dead nodes at once (docs/reliability.md has the soak's numbers). The GCs
// scan little (the buffers hold no pointers); calls coalesce while one is
// pending.
func (d *Driver) collectStoppedNodes() {
	d.collecting.Store(false)
	runtime.GC()
	runtime.GC()
}
