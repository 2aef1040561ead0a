package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/tslink/tslink/test/netnstest"
)

// Kinds of container networking measured side by side.
const (
	kindTslink = "tslink" // a tslink network: one tsnet node per container in the plugin
	// kindTslinkFull is tslink with the plugin set to TSLINK_PACKET_BATCH=full:
	// wireguard-go's batches as tailscale ships them, the unchanged build's
	// data path (throughput round only).
	kindTslinkFull = "tslink-full"
	kindAnchor     = "anchor" // one tailscaled with a kernel TUN in each container, on a bridge network
	kindBridge     = "bridge" // a plain Docker bridge network, no tailnet (the baseline / limit)
)

// sizes are what one run measures.
type sizes struct {
	Full          bool
	StartNs       []int         // containers started concurrently, per start/memory round
	Idle          time.Duration // idle wait before memory and idle-CPU readings (full: magicsock's 45 s session timeout, as scaleSettle)
	Settle        time.Duration // wait after removing a round's containers
	TransferMiB   int64
	WarmupMiB     int64
	TransferRuns  int           // transfers per path and kind; the median is reported
	ScaleN        int           // 0: no scale round
	ScaleParallel int           // docker run -d in flight at once in the scale round
	ScaleSettle   time.Duration // wait after the last container answered, before the idle reading
	ScaleIdle     time.Duration
	// The history round: HistoryCycles `docker run -d`/`docker rm -f`
	// cycles, HistoryParallel at a time, then start rounds of 1 and
	// HistoryN containers. 0 cycles: no history round.
	HistoryCycles, HistoryParallel, HistoryN int
}

// scaleSettle is the full scale round's wait between the last reachability
// check and the idle reading: tailscale's magicsock keeps heartbeating a
// peer and re-STUNning (netcheck) for sessionActiveTimeout (45 s in
// v1.102.5) after the last packet, so a node is idle only that long after
// the checks' traffic.
const scaleSettle = 60 * time.Second

func benchSizes() sizes {
	s := sizes{StartNs: []int{1}, Idle: time.Second, Settle: time.Second, TransferMiB: 16, WarmupMiB: 2, TransferRuns: 1,
		HistoryCycles: 5, HistoryParallel: 5, HistoryN: 3}
	if os.Getenv("TSLINK_BENCH") == "full" {
		s = sizes{Full: true, StartNs: []int{1, 10, 30}, Idle: 45 * time.Second, Settle: 5 * time.Second, TransferMiB: 1024, WarmupMiB: 128, TransferRuns: 3,
			ScaleN: 100, ScaleParallel: 10, ScaleSettle: scaleSettle, ScaleIdle: 60 * time.Second,
			HistoryCycles: 300, HistoryParallel: 10, HistoryN: 30}
	}
	if v := os.Getenv("TSLINK_BENCH_N"); v != "" {
		s.StartNs = nil
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.Atoi(f); err == nil && n > 0 {
				s.StartNs = append(s.StartNs, n)
			}
		}
	}
	if n, err := strconv.Atoi(os.Getenv("TSLINK_BENCH_SCALE")); err == nil {
		s.ScaleN = n
		s.ScaleParallel = max(1, min(10, n))
		s.ScaleSettle = max(s.ScaleSettle, 2*time.Second)
		s.ScaleIdle = max(s.ScaleIdle, 5*time.Second)
	}
	if d, err := time.ParseDuration(os.Getenv("TSLINK_BENCH_SCALE_SETTLE")); err == nil && d > 0 {
		s.ScaleSettle = d
	}
	if n, err := strconv.Atoi(os.Getenv("TSLINK_BENCH_HISTORY")); err == nil && n >= 0 {
		s.HistoryCycles = n
		s.HistoryParallel = max(1, min(10, n))
	}
	if n, err := strconv.Atoi(os.Getenv("TSLINK_BENCH_HISTORY_N")); err == nil && n > 1 {
		s.HistoryN = n
	}
	if n, err := strconv.ParseInt(os.Getenv("TSLINK_BENCH_MIB"), 10, 64); err == nil && n > 0 {
		s.TransferMiB, s.WarmupMiB = n, max(1, n/8)
	}
	if d, err := time.ParseDuration(os.Getenv("TSLINK_BENCH_IDLE")); err == nil && d > 0 {
		s.Idle = d
	}
	return s
}

// kinds returns the kinds a round compares, in the round's order, less
// those TSLINK_BENCH_KINDS (e.g. "tslink" or "tslink,bridge"; default all)
// leaves out: a targeted run measures one kind without the others.
func kinds(order ...string) []string {
	v := os.Getenv("TSLINK_BENCH_KINDS")
	if v == "" {
		return order
	}
	return slices.DeleteFunc(order, func(k string) bool { return !slices.Contains(strings.Split(v, ","), k) })
}

// phaseOn reports whether a round runs
// (TSLINK_BENCH_PHASES=start,throughput,history,scale; default all).
// TSLINK_BENCH_N, _SCALE, _HISTORY (cycles), _HISTORY_N, _MIB and _IDLE (a
// Go duration) override the sizes.
func phaseOn(name string) bool {
	v := os.Getenv("TSLINK_BENCH_PHASES")
	return v == "" || slices.Contains(strings.Split(v, ","), name)
}

// TestBenchReport rewrites the report from docs/bench/results.json
// (TSLINK_BENCH_REPORT=1; for changes to the report's form without
// measuring again).
func TestBenchReport(t *testing.T) {
	if os.Getenv("TSLINK_BENCH_REPORT") != "1" {
		t.Skip("set TSLINK_BENCH_REPORT=1 to rewrite docs/benchmarks.md from docs/bench/results.json")
	}
	dir := cmp.Or(os.Getenv("TSLINK_BENCH_OUT"), filepath.Join(netnstest.ModuleRoot(), "docs"))
	raw, err := os.ReadFile(filepath.Join(dir, "bench", "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r results
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
}

// TestBench runs every round and writes the report. With TSLINK_BENCH=full
// (make bench) it writes docs/benchmarks.md and docs/bench/ in the module;
// otherwise (make test) a smoke size into a temporary dir, or
// TSLINK_BENCH_OUT.
func TestBench(t *testing.T) {
	sz := benchSizes()
	began := time.Now()
	l := newLab(t)
	r := &results{Sizes: sz, Machine: describeMachine(), LoadBefore: loadavg(), Began: began}
	var err error
	if r.PluginPID, err = findPluginPID(l.engine.StateDir()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(sz.Idle)
	r.PluginBase, _ = processMemory(r.PluginPID)
	t.Logf("lab ready in %v; plugin pid %d, RSS %d KiB, PSS %d KiB with no container", time.Since(began).Round(time.Millisecond), r.PluginPID, r.PluginBase.RSS, r.PluginBase.PSS)

	if phaseOn("start") {
		for _, n := range sz.StartNs {
			for _, kind := range kinds(kindTslink, kindBridge, kindAnchor) {
				r.startRound(l, kind, n)
			}
		}
	}
	if phaseOn("throughput") {
		paired := len(kinds(kindTslink, kindTslinkFull)) == 2
		for _, kind := range kinds(kindBridge, kindTslink, kindTslinkFull, kindAnchor) {
			switch {
			case paired && kind == kindTslink:
				r.pairedThroughputRound(l)
			case paired && kind == kindTslinkFull:
				// measured with tslink
			default:
				r.throughputRound(l, kind)
			}
		}
	}
	if phaseOn("history") && sz.HistoryCycles > 0 {
		r.historyRound(l)
	}
	if phaseOn("scale") && sz.ScaleN > 0 {
		r.scaleRound(l)
	}
	r.LoadAfter = loadavg()
	if dir := os.Getenv("TSLINK_BENCH_PROFILES"); dir != "" {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "dockerd-and-plugin.log"), []byte(l.engine.Log()), 0o644)
	}
	r.Took = time.Since(began)

	out := os.Getenv("TSLINK_BENCH_OUT")
	if out == "" {
		out = t.TempDir()
		if sz.Full {
			out = filepath.Join(netnstest.ModuleRoot(), "docs")
		}
	}
	if err := r.write(out); err != nil {
		t.Fatalf("writing the report: %v", err)
	}
	t.Logf("report written to %s (%v)", filepath.Join(out, "benchmarks.md"), r.Took.Round(time.Second))
}

// startRound starts n containers of kind concurrently, waits until each
// answers HTTP, measures the network stack's memory and idle CPU, and
// removes them.
func (r *results) startRound(l *lab, kind string, n int) {
	m := r.measureStart(l, kind, namePrefix[kind], n)
	r.Starts = append(r.Starts, m.rows...)
	r.StartSummaries = append(r.StartSummaries, m.summary)
	if m.memory != nil {
		r.Memory = append(r.Memory, *m.memory)
	}
}

// namePrefix starts the names of a kind's containers (their hostnames, by
// which the laptop finds a node at control): distinct per kind, so that a
// round never finds an earlier round's node.
var namePrefix = map[string]string{kindTslink: "t", kindTslinkFull: "f", kindAnchor: "a", kindBridge: "b"}

// startMeasure is what one start round measured: a row per container,
// their summary, and the memory reading (nil for the bridge).
type startMeasure struct {
	rows    []startRow
	summary startSummary
	memory  *memRow
}

// measureStart starts n containers of kind named prefix<n>-<i>
// concurrently, waits until each answers HTTP, measures the network stack's
// memory and idle CPU, and removes them.
func (r *results) measureStart(l *lab, kind, prefix string, n int) startMeasure {
	t := l.t
	if kind != kindBridge {
		r.freshTailnet(l)
	}
	before := r.pluginMemory()
	rows, names, all := l.startContainers(kind, prefix, n, n)
	failed := 0
	for _, row := range rows {
		if !row.OK {
			failed++
		}
	}
	sum := summarize(kind, n, rows, all)
	res := startMeasure{rows: rows, summary: sum}
	t.Logf("start %s N=%d (%s…): run -d returned median %.2fs max %.2fs; reachable median %.2fs max %.2fs; all %d/%d reachable %.2fs after the first run",
		kind, n, prefix, sum.RunMedian, sum.RunMax, sum.ReachMedian, sum.ReachMax, n-failed, n, all)
	if kind != kindBridge {
		m := l.idleReading(kind, names, r.Sizes.Idle, r.PluginPID)
		if kind == kindTslink {
			l.saveProfiles(fmt.Sprintf("%s-%s-n%d", kind, prefix, n))
		}
		m.Before = before
		m.Running = n - failed
		res.memory = &m
		t.Logf("memory %s N=%d: RSS %d KiB, PSS %d KiB (before %d/%d), idle CPU %.2f%% of a core", kind, n, m.Mem.RSS, m.Mem.PSS, before.RSS, before.PSS, m.IdleCPUPct)
	}
	l.removeContainers(names, r.Sizes.Settle)
	return res
}

// freshTailnet starts each full-size round on a tailnet holding only the
// laptop; smoke runs keep theirs (a handful of nodes) to stay quick.
func (r *results) freshTailnet(l *lab) {
	if r.Sizes.Full || len(l.control.Nodes()) > 10 {
		l.freshTailnet()
	}
}

func (r *results) pluginMemory() memKiB {
	m, _ := processMemory(r.PluginPID)
	return m
}

// startContainers runs n containers (at most parallel at once) and returns
// one row per container, their names and the seconds from the first
// `docker run -d` until the last container answered.
func (l *lab) startContainers(kind, prefix string, n, parallel int) ([]startRow, []string, float64) {
	t0 := time.Now()
	rows := make([]startRow, n)
	names := make([]string, n)
	slots := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range n {
		name := fmt.Sprintf("%s%d-%03d", prefix, n, i)
		names[i] = name
		wg.Go(func() {
			slots <- struct{}{}
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
			defer cancel()
			began := time.Now()
			reached := make(chan time.Time, 1)
			_, err := l.engine.Docker(ctx, l.runArgs(kind, name, i)...)
			returned := time.Now()
			// Probe from the moment `docker run -d` returned, as a user
			// would. Probing earlier distorts what it measures: on the
			// bridge a failed neighbour entry delays the first answer by up
			// to a second; on the tailnet a packet sent before the laptop
			// knows the new peer's DERP home starts a WireGuard handshake
			// that is dropped and retried only 5 s later (see
			// TestStartTimeline).
			go func() { reached <- l.waitReachable(ctx, kind, name, i) }()
			<-slots
			row := startRow{Kind: kind, N: n, Name: name, RunReturned: returned.Sub(began).Seconds()}
			if err != nil {
				row.Err = err.Error()
				cancel()
			}
			if at := <-reached; !at.IsZero() {
				row.OK = true
				row.Reachable = at.Sub(began).Seconds()
				row.SinceFirst = at.Sub(t0).Seconds()
			}
			rows[i] = row
		})
	}
	wg.Wait()
	var last float64
	for _, row := range rows {
		if !row.OK {
			l.t.Logf("%s %s not reachable: %s", kind, row.Name, row.Err)
		}
		last = max(last, row.SinceFirst)
	}
	return rows, names, last
}

// bridgeIP is the static address of the i-th container on the bridge
// network (known before it starts, as a tslink node's is once it is at
// control).
func bridgeIP(i int) string { return fmt.Sprintf("10.240.%d.%d", 1+i/250, 2+i%250) }

func (l *lab) runArgs(kind, name string, i int) []string {
	httpd := []string{image, "httpd", "-f", "-p", "8080", "-h", "/www"}
	switch kind {
	case kindTslink, kindTslinkFull:
		return append([]string{"run", "-d", "--name", name, "--network", tslinkNet}, httpd...)
	case kindBridge:
		return append([]string{"run", "-d", "--name", name, "--network", bridgeNet, "--ip", bridgeIP(i)}, httpd...)
	}
	// What a tailscaled-per-container setup runs: the app, and tailscaled
	// with a kernel TUN in the same netns, logged in with the auth key.
	script := fmt.Sprintf(`httpd -p 8080 -h /www
mkdir -p /tmp/tsd-%[1]s
tailscaled --statedir=/tmp/tsd-%[1]s --state=mem: --socket=/tmp/tsd.sock --tun=tailscale0 --port=0 --no-logs-no-support >/tmp/tailscaled.log 2>&1 &
until tailscale --socket=/tmp/tsd.sock up --login-server=%[2]s --authkey=%[3]s --hostname=%[1]s --accept-dns=false --netfilter-mode=off --timeout=60s >>/tmp/up.log 2>&1; do sleep 0.1; done
wait`, name, l.control.URL(), authKey)
	return []string{"run", "-d", "--name", name, "--network", bridgeNet, "--ip", bridgeIP(i),
		"--cap-add", "NET_ADMIN", "--device", "/dev/net/tun", "-e", "TS_NO_LOGS_NO_SUPPORT=true",
		anchorImage, "sh", "-c", script}
}

// waitReachable polls the container's httpd every 50 ms until it answers
// (from the laptop over the tailnet, or from the host on the bridge) and
// returns when it did; zero when ctx ended first.
func (l *lab) waitReachable(ctx context.Context, kind, name string, i int) time.Time {
	addr := bridgeIP(i)
	dial := hostDial
	if kind != kindBridge {
		addr = ""
		dial = l.laptop.NS.Dial
	}
	for ctx.Err() == nil {
		if addr == "" {
			addr = l.tailnetIP(name)
		}
		if addr != "" && httpHello(ctx, dial, net.JoinHostPort(addr, "8080")) == nil {
			return time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return time.Time{}
}

// tailnetIP is the node's IPv4 at control, or "" before it registered.
func (l *lab) tailnetIP(hostname string) string {
	for _, n := range l.control.NodesByHostname(hostname) {
		for _, ip := range n.IPs {
			if ip.Is4() {
				return ip.String()
			}
		}
	}
	return ""
}

// idleReading measures the network stack of kind while its containers
// idle: the plugin process for tslink, every container's tailscaled for
// the anchor.
func (l *lab) idleReading(kind string, names []string, window time.Duration, pluginPID int) memRow {
	if pid, err := findPluginPID(l.engine.StateDir()); err == nil && pid != pluginPID {
		l.t.Logf("the plugin was restarted: pid %d, was %d", pid, pluginPID)
		pluginPID = pid
	}
	pids := []int{pluginPID}
	if kind == kindAnchor {
		pids = nil
		for _, pid := range anchorPIDs(names) {
			pids = append(pids, pid)
		}
		if len(pids) != len(names) {
			l.t.Logf("found %d tailscaled processes for %d anchor containers", len(pids), len(names))
		}
	}
	cpu := func() (ticks int64) {
		for _, pid := range pids {
			v, _ := processCPUTicks(pid)
			ticks += v
		}
		return ticks
	}
	c0, t0 := cpu(), time.Now()
	time.Sleep(window)
	c1, t1 := cpu(), time.Now()
	row := memRow{Kind: kind, N: len(names), Processes: len(pids),
		IdleCPUPct: 100 * float64(c1-c0) / clockTicks / t1.Sub(t0).Seconds()}
	for _, pid := range pids {
		m, _ := processMemory(pid)
		row.Mem = row.Mem.add(m)
	}
	return row
}

func (l *lab) removeContainers(names []string, settle time.Duration) {
	for chunk := range slices.Chunk(names, 50) {
		l.engine.Docker(context.Background(), append([]string{"rm", "-f"}, chunk...)...)
	}
	// The plugin returns freed memory to the OS 3 s after the last
	// container left; full runs let the next round start from there.
	time.Sleep(settle)
}

// throughputRound sends TransferMiB from a container to the laptop (host,
// for the bridge) and to a second container, after a warm-up transfer,
// TransferRuns times. For tslink-full it restarts the plugin with
// TSLINK_PACKET_BATCH=full first and with small again after.
func (r *results) throughputRound(l *lab, kind string) {
	if kind == kindTslinkFull {
		r.PluginPID = l.setPacketBatch("full")
		defer func() { r.PluginPID = l.setPacketBatch("small") }()
	}
	names, paths, ok := r.throughputContainers(l, kind)
	defer l.removeContainers(names, r.Sizes.Settle)
	if !ok {
		return
	}
	runs := map[string][]tputRow{}
	for range max(1, r.Sizes.TransferRuns) {
		r.transferEach(l, kind, names[0], paths, runs)
	}
	r.addMedians(kind, paths, runs)
}

// pairedThroughputRound measures tslink and tslink-full on the same two
// tslink containers, switching the plugin's TSLINK_PACKET_BATCH between
// them in the order small, full, full, small, small, full, … (TransferRuns
// transfers per path each) so that both kinds meet the machine's other
// load alike. Each switch restarts the plugin, which brings the
// containers' nodes back (recovery) under the new setting; the transfers
// wait until both answer the laptop again.
func (r *results) pairedThroughputRound(l *lab) {
	t := l.t
	names, paths, ok := r.throughputContainers(l, kindTslink)
	defer l.removeContainers(names, r.Sizes.Settle)
	if !ok {
		return
	}
	setting := "small"
	defer func() {
		if setting != "small" {
			r.PluginPID = l.setPacketBatch("small")
		}
	}()
	runs := map[string][]tputRow{}
	order := []string{kindTslink, kindTslinkFull, kindTslinkFull, kindTslink}
	for i := range 2 * max(1, r.Sizes.TransferRuns) {
		kind := order[i%len(order)]
		want := "small"
		if kind == kindTslinkFull {
			want = "full"
		}
		if want != setting {
			r.PluginPID = l.setPacketBatch(want)
			setting = want
			for j, name := range names {
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				at := l.waitReachable(ctx, kindTslink, name, j)
				cancel()
				if at.IsZero() {
					t.Errorf("throughput: %s did not answer the laptop again after the plugin restarted with %s=%s", name, packetBatchSetting, want)
					return
				}
			}
		}
		r.transferEach(l, kind, names[0], paths, runs)
	}
	r.addMedians(kindTslink, paths, runs)
	r.addMedians(kindTslinkFull, paths, runs)
}

// throughputPath is one measured path: its name, the receiver's address
// and the receiver's netns ("" for the lab netns).
type throughputPath struct{ name, dst, ns string }

// throughputContainers starts the sender and the receiver of a throughput
// round (on a fresh tailnet but for the bridge) and returns their names
// and the paths to measure; ok is false if they do not answer.
func (r *results) throughputContainers(l *lab, kind string) (names []string, paths []throughputPath, ok bool) {
	if kind != kindBridge {
		r.freshTailnet(l)
	}
	rows, names, _ := l.startContainers(kind, "p"+namePrefix[kind], 2, 2)
	for _, row := range rows {
		if !row.OK {
			l.t.Errorf("throughput %s: %s not reachable: %s", kind, row.Name, row.Err)
			return names, nil, false
		}
	}
	receiver := names[1]
	if kind == kindBridge {
		return names, []throughputPath{{"container->host", bridgeGW, ""}, {"container->container", bridgeIP(1), l.containerNetNS(receiver)}}, true
	}
	return names, []throughputPath{{"container->laptop", l.laptopIP, l.laptop.NS.Path}, {"container->container", l.tailnetIP(receiver), l.containerNetNS(receiver)}}, true
}

// transferEach makes one warm-up and one measured transfer from sender on
// each path, adding the measured ones to runs under kind and path name.
func (r *results) transferEach(l *lab, kind, sender string, paths []throughputPath, runs map[string][]tputRow) {
	t := l.t
	for _, p := range paths {
		if _, err := l.transfer(sender, p.dst, p.ns, r.Sizes.WarmupMiB); err != nil {
			t.Errorf("throughput %s %s warm-up: %v", kind, p.name, err)
			continue
		}
		row, err := l.transfer(sender, p.dst, p.ns, r.Sizes.TransferMiB)
		if err != nil {
			t.Errorf("throughput %s %s: %v", kind, p.name, err)
			continue
		}
		runs[kind+" "+p.name] = append(runs[kind+" "+p.name], row)
		t.Logf("throughput %s %s: %d MiB in %.2fs = %.1f MB/s, %.2f CPU-s/GB (machine)", kind, p.name, row.MiB, row.Seconds, row.MBps, row.CPUPerGB)
	}
}

// addMedians records kind's median transfer of each path in runs.
func (r *results) addMedians(kind string, paths []throughputPath, runs map[string][]tputRow) {
	for _, p := range paths {
		if rs := runs[kind+" "+p.name]; len(rs) > 0 {
			row := medianTransfer(rs)
			row.Kind, row.Path = kind, p.name
			r.Throughput = append(r.Throughput, row)
		}
	}
}

// medianTransfer returns the transfer of median MB/s among runs (the lower
// middle one of an even count), with Runs and the runs' MB/s range set.
func medianTransfer(runs []tputRow) tputRow {
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b tputRow) int { return cmp.Compare(a.MBps, b.MBps) })
	m := sorted[(len(sorted)-1)/2]
	m.Runs, m.MinMBps, m.MaxMBps = len(sorted), sorted[0].MBps, sorted[len(sorted)-1].MBps
	return m
}

// packetBatchSetting is the plugin setting choosing wireguard-go's batch
// sizes (stack.PacketBatchSetting, read by cmd/tslink at start): small
// (default) or full.
const packetBatchSetting = "TSLINK_PACKET_BATCH"

// setPacketBatch restarts the plugin with packetBatchSetting=value
// (`docker plugin set` needs it disabled; -f because the tslink network
// uses it) and returns the new plugin process's PID. The plugin restores
// its networks when enabled again (the engine-restart design).
func (l *lab) setPacketBatch(value string) int {
	t := l.t
	l.docker("plugin", "disable", "-f", plugin)
	l.docker("plugin", "set", plugin, packetBatchSetting+"="+value)
	l.docker("plugin", "enable", plugin)
	var pid int
	err := netnstest.WaitFor(30*time.Second, func() (err error) {
		pid, err = findPluginPID(l.engine.StateDir())
		return err
	})
	if err != nil {
		t.Fatalf("the plugin after setting %s=%s: %v", packetBatchSetting, value, err)
	}
	t.Logf("plugin restarted with %s=%s: pid %d", packetBatchSetting, value, pid)
	return pid
}

// transfer sends mib MiB of zeros from a socket opened inside the sender
// container's netns to a Go listener at dst in netns nsPath ("" for the lab
// netns), and times the receiving side from accept to the last byte, with
// the whole machine's CPU time over the same interval. Both ends are Go
// (256 KiB writes) so the path, not a tool, is what is measured.
func (l *lab) transfer(sender, dst, nsPath string, mib int64) (tputRow, error) {
	var ln net.Listener
	listen := func() (err error) { ln, err = net.Listen("tcp", ":0"); return err }
	var err error
	if nsPath == "" {
		err = listen()
	} else {
		err = ns.WithNetNSPath(nsPath, func(ns.NetNS) error { return listen() })
	}
	if err != nil {
		return tputRow{}, err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	want := mib << 20
	type received struct {
		row tputRow
		err error
	}
	got := make(chan received, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- received{err: err}
			return
		}
		defer c.Close()
		cpu0, t0 := readMachineCPU(), time.Now()
		n, err := io.CopyN(io.Discard, c, want)
		secs := time.Since(t0).Seconds()
		cpu1 := readMachineCPU()
		gb := float64(n) / 1e9
		got <- received{row: tputRow{MiB: mib, Seconds: secs, MBps: float64(n) / 1e6 / secs, CPUPerGB: cpu0.busySeconds(cpu1) / gb}, err: err}
	}()
	var conn net.Conn
	err = ns.WithNetNSPath(l.containerNetNS(sender), func(ns.NetNS) (err error) {
		conn, err = net.DialTimeout("tcp", net.JoinHostPort(dst, strconv.Itoa(port)), 10*time.Second)
		return err
	})
	if err != nil {
		return tputRow{}, fmt.Errorf("connecting from %s to %s: %w", sender, dst, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 256<<10)
	for sent := int64(0); sent < want; {
		n, err := conn.Write(buf[:min(int64(len(buf)), want-sent)])
		sent += int64(n)
		if err != nil {
			return tputRow{}, fmt.Errorf("sending: %w after %d bytes", err, sent)
		}
	}
	res := <-got
	return res.row, res.err
}

// scaleRound starts ScaleN containers on one tslink network, ScaleParallel
// at a time, checks all answer, lets the plugin settle for ScaleSettle and
// reads its RSS and idle CPU over ScaleIdle; a plugin restart shows as a
// new PID or as a panic in the engine's log (which holds the plugin's
// stderr).
func (r *results) scaleRound(l *lab) {
	sz := r.Sizes
	r.freshTailnet(l)
	pidBefore, logBefore := r.PluginPID, len(l.engine.Log())
	began := time.Now()
	profiled := l.profileBurst(fmt.Sprintf("%s-scale-n%d-burst", kindTslink, sz.ScaleN), 60)
	rows, names, all := l.startContainers(kindTslink, "s", sz.ScaleN, sz.ScaleParallel)
	<-profiled
	row := scaleRow{N: sz.ScaleN, Parallel: sz.ScaleParallel, AllReachable: all, PluginPIDBefore: pidBefore}
	for _, s := range rows {
		if s.OK {
			row.Reachable++
		}
	}
	r.Starts = append(r.Starts, rows...)
	time.Sleep(sz.ScaleSettle)
	m := l.idleReading(kindTslink, names, sz.ScaleIdle, r.PluginPID)
	row.Mem, row.IdleCPUPct, row.IdleWindow, row.SettleWait = m.Mem, m.IdleCPUPct, sz.ScaleIdle.Seconds(), sz.ScaleSettle.Seconds()
	row.BackendCallMaxMs = l.backendCallMaxMs()
	l.saveProfiles(fmt.Sprintf("%s-scale-n%d", kindTslink, sz.ScaleN))
	l.saveCPUProfile(fmt.Sprintf("%s-scale-n%d-idle", kindTslink, sz.ScaleN), 25)
	row.PluginPIDAfter, _ = findPluginPID(l.engine.StateDir())
	row.PluginPanics = panicLines(l.engine.Log()[logBefore:])
	if row.PluginPIDAfter != 0 && row.PluginPIDAfter != pidBefore {
		r.PluginPID = row.PluginPIDAfter
	}
	r.Scale = &row
	l.t.Logf("scale: %d/%d reachable, %d docker run failed, all within %.1fs (%v with checks); plugin pid %d -> %d, %d panic lines; plugin RSS %d KiB, PSS %d KiB, idle CPU %.2f%% of a core over %v after %v; longest LocalBackend call %d ms",
		row.Reachable, row.N, failedRuns(rows), all, time.Since(began).Round(time.Second), pidBefore, row.PluginPIDAfter, len(row.PluginPanics),
		m.Mem.RSS, m.Mem.PSS, m.IdleCPUPct, sz.ScaleIdle, sz.ScaleSettle, row.BackendCallMaxMs)
	for _, f := range groupFailures(rows) {
		l.t.Logf("scale failures: %d× %s", f.Count, f.Reason)
	}
	l.removeContainers(names, r.Sizes.Settle)
}

// historyRound runs HistoryCycles create/remove cycles of tslink
// containers, HistoryParallel at a time (each: `docker run -d`, wait until
// it answers the laptop, `docker rm -f`), then start rounds of 1 and
// HistoryN containers with their memory readings: the plugin's history
// must not make new nodes dearer.
func (r *results) historyRound(l *lab) {
	sz := r.Sizes
	t := l.t
	r.freshTailnet(l)
	h := historyRow{Cycles: sz.HistoryCycles, Parallel: sz.HistoryParallel, PluginPIDBefore: r.PluginPID}
	logBefore := len(l.engine.Log())
	began := time.Now()
	rows := make([]startRow, sz.HistoryCycles)
	slots := make(chan struct{}, sz.HistoryParallel)
	var wg sync.WaitGroup
	for i := range sz.HistoryCycles {
		name := fmt.Sprintf("hc-%03d", i)
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
			defer cancel()
			row := startRow{Kind: kindTslink, Name: name}
			t0 := time.Now()
			_, err := l.engine.Docker(ctx, l.runArgs(kindTslink, name, i)...)
			row.RunReturned = time.Since(t0).Seconds()
			if err != nil {
				row.Err = err.Error()
			} else if at := l.waitReachable(ctx, kindTslink, name, i); !at.IsZero() {
				row.OK, row.Reachable = true, at.Sub(t0).Seconds()
			}
			if _, err := l.engine.Docker(context.Background(), "rm", "-f", name); err != nil {
				t.Logf("history: %v", err)
			}
			rows[i] = row
		})
	}
	wg.Wait()
	h.Seconds = time.Since(began).Seconds()
	time.Sleep(sz.Settle) // as after every round's removal
	for _, row := range rows {
		if row.OK {
			h.Reachable++
		}
	}
	h.FailedRuns, h.Failures = failedRuns(rows), groupFailures(rows)
	h.PluginPIDAfter, _ = findPluginPID(l.engine.StateDir())
	h.PluginPanics = panicLines(l.engine.Log()[logBefore:])
	t.Logf("history: %d create/remove cycles, %d at a time, in %.0fs: %d answered the laptop, %d docker run failed; plugin pid %d -> %d",
		h.Cycles, h.Parallel, h.Seconds, h.Reachable, h.FailedRuns, h.PluginPIDBefore, h.PluginPIDAfter)
	for _, f := range h.Failures {
		t.Logf("history failures: %d× %s", f.Count, f.Reason)
	}
	if h.PluginPIDAfter != 0 {
		r.PluginPID = h.PluginPIDAfter
	}
	for _, n := range []int{1, sz.HistoryN} {
		m := r.measureStart(l, kindTslink, "h", n)
		h.Summaries = append(h.Summaries, m.summary)
		if m.memory != nil {
			h.Memory = append(h.Memory, *m.memory)
		}
	}
	r.History = &h
}

// panicLines are the lines of an engine log excerpt that show a Go panic
// or fatal error (the plugin's stderr reaches dockerd's log).
func panicLines(log string) []string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "panic:") || strings.Contains(line, "fatal error:") {
			out = append(out, line)
		}
	}
	return out
}

// backendCallMaxMs reads the plugin's longest LocalBackend call latency so
// far (GET /debug/vars, backendCallMaxMs); -1 if it cannot.
func (l *lab) backendCallMaxMs() int64 {
	b, err := l.engine.PluginGet("/debug/vars")
	if err != nil {
		l.t.Logf("plugin vars: %v", err)
		return -1
	}
	var v struct {
		BackendCallMaxMs int64 `json:"backendCallMaxMs"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		l.t.Logf("plugin vars %q: %v", b, err)
		return -1
	}
	return v.BackendCallMaxMs
}
