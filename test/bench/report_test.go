package bench

import (
	"cmp"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// startRow is one container of a start round; times are seconds from its
// own `docker run -d`.
type startRow struct {
	Kind        string
	N           int
	Name        string
	RunReturned float64 // docker run -d returned
	Reachable   float64 // its httpd first answered (laptop over the tailnet; host for bridge)
	SinceFirst  float64 // Reachable, counted from the round's first docker run
	OK          bool
	Err         string
}

type startSummary struct {
	Kind                  string
	N, Failed             int
	RunMedian, RunMax     float64
	ReachMedian, ReachMax float64
	AllReachable          float64 // first docker run -d until the last container answered
}

func summarize(kind string, n int, rows []startRow, all float64) startSummary {
	s := startSummary{Kind: kind, N: n, AllReachable: all}
	var run, reach []float64
	for _, r := range rows {
		run = append(run, r.RunReturned)
		if r.OK {
			reach = append(reach, r.Reachable)
		} else {
			s.Failed++
		}
	}
	s.RunMedian, s.RunMax = median(run), slices.Max(run)
	if len(reach) > 0 {
		s.ReachMedian, s.ReachMax = median(reach), slices.Max(reach)
	}
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// memRow is the network stack's memory with N idle containers.
type memRow struct {
	Kind       string
	N          int
	Running    int    // containers of the round that answered (failed starts hold no node)
	Processes  int    // 1 (the plugin) or N tailscaleds
	Mem        memKiB // summed over Processes
	Before     memKiB // the plugin before the round's containers started
	IdleCPUPct float64
}

type tputRow struct {
	Kind, Path string
	MiB        int64
	Seconds    float64
	MBps       float64 // 10^6 bytes per second
	CPUPerGB   float64 // whole machine's busy CPU-seconds per 10^9 bytes
	// Runs transfers were made; this row is the median one, and
	// MinMBps..MaxMBps their range.
	Runs             int
	MinMBps, MaxMBps float64
}

type scaleRow struct {
	N, Parallel, Reachable int
	AllReachable           float64
	Mem                    memKiB
	IdleCPUPct, IdleWindow float64
	SettleWait             float64 // seconds between the last answer and the idle window
	// The plugin's PID before and after the round (0: not found) and the
	// engine log's panic lines during it: a restart shows in either.
	PluginPIDBefore, PluginPIDAfter int
	PluginPanics                    []string
	// BackendCallMaxMs is the plugin's longest LocalBackend call latency
	// (each node probed every second up to 10 nodes, about 10 probes a
	// second across the process beyond) from its start to the end of the
	// round; tailscale's deadlock watchdog panics at about 35 s.
	BackendCallMaxMs int64
}

// scaleStarts are the scale round's rows in r.Starts (named s<N>-<i>).
func (r *results) scaleStarts() []startRow {
	if r.Scale == nil {
		return nil
	}
	return slices.DeleteFunc(slices.Clone(r.Starts), func(s startRow) bool {
		return s.Kind != kindTslink || s.N != r.Scale.N || !strings.HasPrefix(s.Name, fmt.Sprintf("s%d-", r.Scale.N))
	})
}

// failedRuns counts the rows whose `docker run -d` returned an error.
func failedRuns(rows []startRow) int {
	n := 0
	for _, s := range rows {
		if s.Err != "" {
			n++
		}
	}
	return n
}

// notAnswered is the failure reason of a container that started but never
// answered the laptop.
const notAnswered = "started, but never answered the laptop"

// restarted reports whether the plugin process changed or panicked during
// the round.
func (s *scaleRow) restarted() bool {
	return s.PluginPIDAfter != s.PluginPIDBefore || len(s.PluginPanics) > 0
}

// historyRow is the history round: create/remove cycles, then start
// rounds on the plugin that ran them.
type historyRow struct {
	Cycles, Parallel      int
	Reachable, FailedRuns int
	Failures              []failureGroup
	Seconds               float64
	PluginPIDBefore       int
	PluginPIDAfter        int
	PluginPanics          []string
	Summaries             []startSummary // start rounds after the cycles (N=1 and HistoryN)
	Memory                []memRow
}

func (h *historyRow) memory(n int) *memRow {
	for i := range h.Memory {
		if m := &h.Memory[i]; m.N == n {
			return m
		}
	}
	return nil
}

// failureGroup is how many containers of a round failed for one reason.
type failureGroup struct {
	Reason     string
	Count      int
	Containers []string
}

var (
	hexID        = regexp.MustCompile(`[0-9a-f]{12,}`)
	helpHint     = regexp.MustCompile(`\s*See 'docker run --help'\.?|\s*Run 'docker run --help' for more information`)
	dockerPrefix = regexp.MustCompile(`^docker run [^:]*: `)
)

// groupFailures groups a round's failed containers by reason: the `docker
// run` error (the daemon's message when it gave one; IDs and the
// container's name blanked so that equal causes group), or [notAnswered].
// Largest group first.
func groupFailures(rows []startRow) []failureGroup {
	var groups []failureGroup
	for _, row := range rows {
		if row.OK {
			continue
		}
		reason := notAnswered
		if row.Err != "" {
			reason = dockerPrefix.ReplaceAllString(row.Err, "")
			if i := strings.Index(reason, "Error response from daemon: "); i >= 0 {
				reason = reason[i:]
			}
			reason = helpHint.ReplaceAllString(reason, "")
			reason = strings.ReplaceAll(reason, row.Name, "<name>")
			reason = hexID.ReplaceAllString(reason, "…")
			reason = strings.Join(strings.Fields(reason), " ")
		}
		i := slices.IndexFunc(groups, func(g failureGroup) bool { return g.Reason == reason })
		if i < 0 {
			groups = append(groups, failureGroup{Reason: reason})
			i = len(groups) - 1
		}
		groups[i].Count++
		groups[i].Containers = append(groups[i].Containers, row.Name)
	}
	slices.SortStableFunc(groups, func(a, b failureGroup) int { return cmp.Compare(b.Count, a.Count) })
	return groups
}

// deadlockWatchdogMs is when tailscale's ipnlocal deadlock watchdog panics
// the process over a held LocalBackend lock (armed after 5 s, fires 30 s
// later: ipn/ipnlocal/watchdog.go, v1.102.5).
const deadlockWatchdogMs = 35_000

type results struct {
	Sizes                 sizes
	Machine               []string
	LoadBefore, LoadAfter string
	Began                 time.Time
	Took                  time.Duration
	PluginPID             int
	PluginBase            memKiB // no container yet
	Starts                []startRow
	StartSummaries        []startSummary
	Memory                []memRow
	Throughput            []tputRow
	Scale                 *scaleRow
	History               *historyRow
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func describeMachine() []string {
	out := func(name string, args ...string) string {
		b, _ := exec.Command(name, args...).Output()
		return strings.TrimSpace(string(b))
	}
	var memTotal string
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if kib, err := strconv.ParseFloat(f[1], 64); err == nil {
			memTotal = fmt.Sprintf("%.1f GiB", kib/1024/1024)
		}
	}
	var model string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	return []string{
		"CPUs (nproc): " + out("nproc") + " (" + model + ")",
		"memory: " + memTotal,
		"kernel: " + out("uname", "-sr"),
		"Docker: " + out("dockerd", "--version"),
		"Go: " + strings.TrimPrefix(out("go", "version"), "go version "),
		"tailscale.com: v1.102.5 (go.mod); anchor tailscaled built from it",
	}
}

func (r *results) summary(kind string, n int) *startSummary {
	for i := range r.StartSummaries {
		if s := &r.StartSummaries[i]; s.Kind == kind && s.N == n {
			return s
		}
	}
	return nil
}

func (r *results) memory(kind string, n int) *memRow {
	for i := range r.Memory {
		if m := &r.Memory[i]; m.Kind == kind && m.N == n {
			return m
		}
	}
	return nil
}

func (r *results) tput(kind, pathPrefix string) *tputRow {
	for i := range r.Throughput {
		if t := &r.Throughput[i]; t.Kind == kind && strings.HasPrefix(t.Path, pathPrefix) {
			return t
		}
	}
	return nil
}

// write puts benchmarks.md in dir and the CSV files and plots in dir/bench.
func (r *results) write(dir string) error {
	data := filepath.Join(dir, "bench")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	if err := r.writeCSVs(data); err != nil {
		return err
	}
	if err := r.plotStart(filepath.Join(data, "start.png")); err != nil {
		return err
	}
	if err := r.plotMemory(filepath.Join(data, "memory.png")); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(data, "results.json"), raw, 0o644); err != nil {
		return err
	}
	notes, _ := os.ReadFile(filepath.Join(data, "notes.md"))
	return os.WriteFile(filepath.Join(dir, "benchmarks.md"), []byte(r.markdown(string(notes))), 0o644)
}

func writeCSV(path string, rows [][]string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.WriteAll(rows)
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func ff(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }

func (r *results) writeCSVs(dir string) error {
	start := [][]string{{"kind", "n", "container", "run_returned_s", "reachable_s", "reachable_since_first_run_s", "ok", "error"}}
	for _, s := range r.Starts {
		start = append(start, []string{s.Kind, fmt.Sprint(s.N), s.Name, ff(s.RunReturned), ff(s.Reachable), ff(s.SinceFirst), fmt.Sprint(s.OK), s.Err})
	}
	mem := [][]string{{"kind", "n", "processes", "rss_kib", "pss_kib", "plugin_rss_before_kib", "plugin_pss_before_kib", "plugin_rss_no_container_kib", "idle_cpu_pct_of_core"}}
	for _, m := range r.Memory {
		mem = append(mem, []string{m.Kind, fmt.Sprint(m.N), fmt.Sprint(m.Processes), fmt.Sprint(m.Mem.RSS), fmt.Sprint(m.Mem.PSS), fmt.Sprint(m.Before.RSS), fmt.Sprint(m.Before.PSS), fmt.Sprint(r.PluginBase.RSS), ff(m.IdleCPUPct)})
	}
	tput := [][]string{{"kind", "path", "mib", "seconds", "mb_per_s", "machine_cpu_s_per_gb", "runs", "min_mb_per_s", "max_mb_per_s"}}
	for _, t := range r.Throughput {
		tput = append(tput, []string{t.Kind, t.Path, fmt.Sprint(t.MiB), ff(t.Seconds), ff(t.MBps), ff(t.CPUPerGB), fmt.Sprint(t.Runs), ff(t.MinMBps), ff(t.MaxMBps)})
	}
	scale := [][]string{{"n", "parallel", "reachable", "failed_runs", "all_reachable_s", "plugin_rss_kib", "plugin_pss_kib", "plugin_idle_cpu_pct_of_core", "idle_window_s", "settle_s", "plugin_pid_before", "plugin_pid_after", "panic_lines", "longest_backend_call_ms"}}
	failures := [][]string{{"round", "count", "reason", "containers"}}
	if s := r.Scale; s != nil {
		scale = append(scale, []string{fmt.Sprint(s.N), fmt.Sprint(s.Parallel), fmt.Sprint(s.Reachable), fmt.Sprint(failedRuns(r.scaleStarts())), ff(s.AllReachable), fmt.Sprint(s.Mem.RSS), fmt.Sprint(s.Mem.PSS), ff(s.IdleCPUPct), ff(s.IdleWindow), ff(s.SettleWait),
			fmt.Sprint(s.PluginPIDBefore), fmt.Sprint(s.PluginPIDAfter), fmt.Sprint(len(s.PluginPanics)), fmt.Sprint(s.BackendCallMaxMs)})
		for _, g := range groupFailures(r.scaleStarts()) {
			failures = append(failures, []string{"scale", fmt.Sprint(g.Count), g.Reason, strings.Join(g.Containers, " ")})
		}
	}
	history := [][]string{{"cycles", "parallel", "reachable", "failed_runs", "seconds", "plugin_pid_before", "plugin_pid_after", "panic_lines", "n_after", "all_reachable_s", "plugin_rss_kib", "plugin_pss_kib", "idle_cpu_pct_of_core"}}
	if h := r.History; h != nil {
		for _, m := range h.Memory {
			all := math.NaN()
			for _, s := range h.Summaries {
				if s.N == m.N {
					all = s.AllReachable
				}
			}
			history = append(history, []string{fmt.Sprint(h.Cycles), fmt.Sprint(h.Parallel), fmt.Sprint(h.Reachable), fmt.Sprint(h.FailedRuns), ff(h.Seconds),
				fmt.Sprint(h.PluginPIDBefore), fmt.Sprint(h.PluginPIDAfter), fmt.Sprint(len(h.PluginPanics)), fmt.Sprint(m.N), ff(all), fmt.Sprint(m.Mem.RSS), fmt.Sprint(m.Mem.PSS), ff(m.IdleCPUPct)})
		}
		for _, g := range h.Failures {
			failures = append(failures, []string{"history", fmt.Sprint(g.Count), g.Reason, strings.Join(g.Containers, " ")})
		}
	}
	for name, rows := range map[string][][]string{"start.csv": start, "memory.csv": mem, "throughput.csv": tput, "scale.csv": scale, "history.csv": history, "failures.csv": failures} {
		if err := writeCSV(filepath.Join(dir, name), rows); err != nil {
			return err
		}
	}
	return nil
}

var kindTitles = map[string]string{
	kindTslink:     "tslink (tsnet nodes in the plugin)",
	kindAnchor:     "anchor (tailscaled + kernel TUN per container)",
	kindBridge:     "bridge (no tailnet)",
	kindTslinkFull: "tslink-full (plugin set to TSLINK_PACKET_BATCH=full)",
}

func (r *results) plotStart(path string) error {
	p := plot.New()
	p.Title.Text = "Start: first docker run -d until all N containers answer HTTP"
	p.X.Label.Text = "containers started concurrently (N)"
	p.Y.Label.Text = "seconds"
	var args []any
	for _, kind := range []string{kindTslink, kindAnchor, kindBridge} {
		var pts plotter.XYs
		for _, s := range r.StartSummaries {
			if s.Kind == kind {
				pts = append(pts, plotter.XY{X: float64(s.N), Y: s.AllReachable})
			}
		}
		if len(pts) > 0 {
			args = append(args, kindTitles[kind], pts)
		}
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return err
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Y.Min = 0
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

func (r *results) plotMemory(path string) error {
	p := plot.New()
	p.Title.Text = "Memory of the Tailscale side with N idle containers"
	p.X.Label.Text = "idle containers (N)"
	p.Y.Label.Text = "MiB"
	var tsRSS, tsPSS, anRSS, anPSS plotter.XYs
	for _, m := range r.Memory {
		x := float64(m.N)
		switch m.Kind {
		case kindTslink:
			tsRSS = append(tsRSS, plotter.XY{X: x, Y: float64(m.Mem.RSS-r.PluginBase.RSS) / 1024})
			tsPSS = append(tsPSS, plotter.XY{X: x, Y: float64(m.Mem.PSS-r.PluginBase.PSS) / 1024})
		case kindAnchor:
			anRSS = append(anRSS, plotter.XY{X: x, Y: float64(m.Mem.RSS) / 1024})
			anPSS = append(anPSS, plotter.XY{X: x, Y: float64(m.Mem.PSS) / 1024})
		}
	}
	err := plotutil.AddLinePoints(p,
		"tslink plugin RSS growth", tsRSS, "tslink plugin PSS growth", tsPSS,
		"anchor: sum of tailscaled RSS", anRSS, "anchor: sum of tailscaled PSS", anPSS)
	if err != nil {
		return err
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Y.Min = 0
	return p.Save(7*vg.Inch, 4.5*vg.Inch, path)
}

func mib(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }
func num(v float64, decimals int) string {
	if math.IsNaN(v) {
		return "—"
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}
func secs(v float64) string { return fmt.Sprintf("%.2f", v) }
func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

func (r *results) markdown(notes string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Benchmarks: tslink against a tailscaled per container\n\n")
	p("Generated by `make bench` (test/bench, `TSLINK_BENCH=full`) on %s in %v; re-running it rewrites this file,\n", r.Began.UTC().Format("2006-01-02 15:04 MST"), r.Took.Round(time.Second))
	p("`docs/bench/*.csv` (raw figures, one row per container or transfer) and the plots. Hand-written findings live in\n")
	p("`docs/bench/notes.md` and are included at the end. Benchmarks report; they assert nothing.\n\n")
	p("## Machine\n\n")
	for _, m := range r.Machine {
		p("- %s\n", m)
	}
	p("- load average before the run: %s, after: %s (the machine may have been shared with other test runs;\n  a load above ~0.5 before the run means it was, and the figures are pessimistic)\n\n", r.LoadBefore, r.LoadAfter)
	p("## What is compared, in one run against the same devcontrol and laptop\n\n")
	p("- **tslink**: a tslink network; one tsnet node per container inside the plugin process, kernel TUN `tailscale0` in the container.\n")
	p("- **anchor**: what users run today: every container runs its own `tailscaled` with a kernel TUN (`--tun=tailscale0`,\n")
	p("  state in memory, `tailscale up --authkey`), built from the pinned tailscale.com, on a Docker bridge network\n")
	p("  (`--cap-add NET_ADMIN --device /dev/net/tun`), its app next to it in the same container. Its tailnet traffic leaves\n")
	p("  through Docker's NAT, as a sidecar's does.\n")
	p("- **tslink-full** (throughput only): tslink with the plugin set to `TSLINK_PACKET_BATCH=full`, wireguard-go's packet\n")
	p("  batches as tailscale ships them: the unchanged build's data path, for the throughput target.\n")
	p("- **bridge**: the same containers on a plain Docker bridge network with no tailnet: the start-time baseline and the\n")
	p("  throughput limit.\n\n")
	p("Every container runs busybox `httpd` on port 8080. All containers of a round are started with concurrent\n")
	p("`docker run -d`. A container is *reachable* when its httpd answers an HTTP GET: from the laptop netns (a real\n")
	p("tailscaled) to its Tailscale IPv4 for tslink and anchor (the address as control has it), from the host netns to its\n")
	p("static bridge address for bridge. Every kind is probed from the moment its `docker run -d` returned, every 50 ms with\n")
	p("a 300 ms connect timeout, as a user would connect. Probing earlier distorts the result: a packet the laptop sends\n")
	p("before it knows a new peer's DERP home starts a WireGuard handshake that is dropped and retried only 5 s later\n")
	p("(`TSLINK_BENCH_TIMELINE=1 go test -run TestStartTimeline ./test/bench` shows it), and a bridge address probed\n")
	p("before its container exists leaves a failed neighbour entry. A tailscaled started inside the container is still\n")
	p("registering when `docker run -d` returns, so the anchor can meet that 5 s retry; so would its users.\n\n")
	p("Each full-size round (tslink and anchor) starts on a fresh tailnet holding only the laptop: a new devcontrol, the\n")
	p("laptop logged in to it, the tslink network re-created. devcontrol deletes only logged-out ephemeral nodes (and\n")
	p("then builds every netmap itself), so otherwise every round's nodes would carry earlier rounds' leftovers as peers.\n")
	p("devcontrol is tailscale's testcontrol with a least interval of 800 ms between two netmaps to one node (headscale's\n")
	p("default batching delay), and it answers a node's update that changes only its own netcheck findings without waking\n")
	p("its peers: testcontrol alone sends every node a full netmap on every change of any node, where Tailscale's control\n")
	p("batches changes and sends deltas (docs/testcontrol-patch.md). The laptop and the anchors see the same control.\n\n")
	p("Commands: `make bench` (full sizes, ~%s); `make test` runs the same harness at N=1 with %d MiB transfers, a history\n", "40–50 min", 16)
	p("round of 5 cycles and N=3, and no scale round. Environment knobs: `TSLINK_BENCH_N=1,10,30`, `TSLINK_BENCH_MIB=1024`,\n")
	p("`TSLINK_BENCH_SCALE=100`, `TSLINK_BENCH_HISTORY=300` (cycles), `TSLINK_BENCH_HISTORY_N=30`,\n")
	p("`TSLINK_BENCH_PHASES=start,throughput,history,scale`, `TSLINK_BENCH_KINDS=tslink,tslink-full,anchor,bridge`,\n")
	p("`TSLINK_BENCH_OUT=dir`, `TSLINK_BENCH_PROFILES=dir` (the plugin's heap profile and counters at each tslink memory\n")
	p("reading, and dockerd's log with the plugin's), `TSLINK_BENCH_REPORT=1 go test -run TestBenchReport ./test/bench`\n")
	p("(re-render this file from `docs/bench/results.json`).\n\n")
	p("Issue 13's targets, which the last section states with this run's verdicts: ≤ 10 MiB RSS per additional idle\n")
	p("container at N=30, and the same after 300 create/remove cycles; throughput at least 90 %% of the unchanged build's\n")
	p("(*tslink-full*) in the same run; 100 containers 10 at a time all reachable from the laptop with 0 failed `docker run`,\n")
	p("no plugin restart and plugin idle CPU < 5 %% of a core over 60 s once settled, its RSS stated; N=30 all reachable\n")
	p("within 2× the bridge baseline of the same run and N=10 within 1.5×; the longest LocalBackend call during the\n")
	p("100-container round against tailscale's ~35 s deadlock watchdog.\n\n")

	p("## 1. Start time\n\n")
	p("Seconds. *all* = first `docker run -d` until the last of the N containers answered; *median/max* are per container,\n")
	p("from its own `docker run -d`; *run -d* is when `docker run -d` returned (median).\n\n")
	p("| N | tslink all | tslink median / max | tslink run -d | bridge all | bridge run -d | anchor all | anchor median / max | tslink ÷ bridge | tslink ÷ anchor |\n")
	p("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range r.Sizes.StartNs {
		ts, br, an := r.summary(kindTslink, n), r.summary(kindBridge, n), r.summary(kindAnchor, n)
		if ts == nil || br == nil || an == nil {
			continue
		}
		p("| %d | %s%s | %s / %s | %s | %s | %s | %s%s | %s / %s | %s | %s |\n", n,
			secs(ts.AllReachable), failed(ts), secs(ts.ReachMedian), secs(ts.ReachMax), secs(ts.RunMedian),
			secs(br.AllReachable), secs(br.RunMedian),
			secs(an.AllReachable), failed(an), secs(an.ReachMedian), secs(an.ReachMax),
			ratio(ts.AllReachable, br.AllReachable), ratio(ts.AllReachable, an.AllReachable))
	}
	if ts := r.summary(kindTslink, 1); ts != nil && ts.Failed == 0 {
		// Probing starts when run -d returned: an answer to the first
		// probes means the tailnet was ready then.
		p("\nN=1: `docker run -d` returned after %s s; the laptop's first probes then got an answer %s s later.\n", secs(ts.RunMedian), secs(ts.ReachMedian-ts.RunMedian))
	}
	p("\n![start time against N](bench/start.png)\n\n")

	p("## 2. Memory with N idle containers\n\n")
	p("tslink: the plugin process (RSS and PSS from `/proc/<pid>/smaps_rollup`, after %v idle); with no container it had\n", r.Sizes.Idle)
	p("RSS %s MiB, PSS %s MiB. *per container* = (figure at N − figure with no container) ÷ N; *per additional* = (figure at N\n", mib(r.PluginBase.RSS), mib(r.PluginBase.PSS))
	p("− figure at N=1) ÷ (N−1), N counting only containers that started. anchor: the sum over the N tailscaled processes (PSS shares their common text pages\n")
	p("fairly, so it is the honest per-container cost; RSS counts them N times). Idle CPU: %% of one core over the idle wait,\n")
	p("the plugin vs the sum of the tailscaleds.\n\n")
	p("| N | tslink RSS | tslink RSS / container | tslink RSS / additional | tslink PSS / container | anchor RSS total | anchor RSS / container | anchor PSS / container | anchor PSS ÷ tslink PSS per container | idle CPU tslink / anchor |\n")
	p("|---|---|---|---|---|---|---|---|---|---|\n")
	ts1 := r.memory(kindTslink, 1)
	for _, n := range r.Sizes.StartNs {
		ts, an := r.memory(kindTslink, n), r.memory(kindAnchor, n)
		if ts == nil || an == nil {
			continue
		}
		running := float64(cmp.Or(ts.Running, n))
		perTs := float64(ts.Mem.RSS-r.PluginBase.RSS) / running
		perTsPSS := float64(ts.Mem.PSS-r.PluginBase.PSS) / running
		add := "—"
		if ts1 != nil && running > 1 {
			add = mib(int64(float64(ts.Mem.RSS-ts1.Mem.RSS) / (running - 1)))
		}
		anPSS := float64(an.Mem.PSS) / float64(max(1, an.Processes))
		p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %.1f%% / %.1f%% |\n", n,
			mib(ts.Mem.RSS), mib(int64(perTs)), add, mib(int64(perTsPSS)),
			mib(an.Mem.RSS), mib(an.Mem.RSS/int64(max(1, an.Processes))), mib(int64(anPSS)),
			ratio(anPSS, perTsPSS), ts.IdleCPUPct, an.IdleCPUPct)
	}
	p("\nAll figures in MiB.\n\n![memory against N](bench/memory.png)\n\n")

	p("## 3. Throughput\n\n")
	p("%d MiB of zeros written (256 KiB writes) to a socket opened inside the sending container's netns, to a Go\n", r.Sizes.TransferMiB)
	p("listener that counts bytes in the laptop netns (the host netns for bridge) or in the second container's netns,\n")
	p("after a %d MiB warm-up on the same path, %d times; the table gives the median transfer (the MB/s range of all\n", r.Sizes.WarmupMiB, max(1, r.Sizes.TransferRuns))
	p("of them is in bench/throughput.csv). Both ends are the test process, so the path is measured, not a tool\n")
	p("(busybox `nc` copies in small chunks and was the bottleneck). MB/s = 10⁶ bytes/s from accept to the last byte;\n")
	p("CPU = the whole machine's busy CPU-seconds (/proc/stat) per 10⁹ bytes over the same interval (sender, receiver,\n")
	p("the network stack and anything else that ran).\n\n")
	p("*tslink-full* is the unchanged build's data path in the same run: the plugin disabled, `docker plugin set %s\n", plugin)
	p("TSLINK_PACKET_BATCH=full` (wireguard-go's packet batches as tailscale ships them), enabled. tslink and\n")
	p("tslink-full are measured on the same two tslink containers, the setting switched between transfers in the order\n")
	p("small, full, full, small, small, full (each switch restarts the plugin, whose recovery brings the nodes back under\n")
	p("the new setting), so that both meet the machine's other load alike; it is set back to `small` (the default:\n")
	p("capped batches) after.\n\n")
	p("| path | tslink MB/s | tslink-full MB/s | anchor MB/s | limit (bridge) MB/s | tslink ÷ tslink-full | tslink ÷ anchor | tslink ÷ limit | tslink CPU-s/GB | tslink-full CPU-s/GB | anchor CPU-s/GB | limit CPU-s/GB |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, path := range throughputPaths {
		ts, tf, an, br := r.tput(kindTslink, path.tailnet), r.tput(kindTslinkFull, path.tailnet), r.tput(kindAnchor, path.tailnet), r.tput(kindBridge, path.bridge)
		v := func(t *tputRow) (float64, float64) {
			if t == nil {
				return math.NaN(), math.NaN()
			}
			return t.MBps, t.CPUPerGB
		}
		tsM, tsC := v(ts)
		tfM, tfC := v(tf)
		anM, anC := v(an)
		brM, brC := v(br)
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", path.name, num(tsM, 0), num(tfM, 0), num(anM, 0), num(brM, 0),
			ratio(tsM, tfM), ratio(tsM, anM), ratio(tsM, brM), num(tsC, 1), num(tfC, 1), num(anC, 1), num(brC, 1))
	}
	p("\n")

	p("## 4. Scale\n\n")
	if s := r.Scale; s != nil {
		p("%d containers on one tslink network, `docker run -d` %d at a time: %d/%d reachable from the laptop, the last %.1f s\n", s.N, s.Parallel, s.Reachable, s.N, s.AllReachable)
		p("after the first run; %d `docker run -d` failed. Then, all idle, after a %.0f s wait for the plugin to settle:\n", failedRuns(r.scaleStarts()), s.SettleWait)
		p("plugin RSS %s MiB, PSS %s MiB, plugin CPU %.2f%% of one core over %.0f s", mib(s.Mem.RSS), mib(s.Mem.PSS), s.IdleCPUPct, s.IdleWindow)
		if s.Reachable == s.N {
			p(" (%s MiB RSS per container over the plugin with none)", mib((s.Mem.RSS-r.PluginBase.RSS)/int64(s.N)))
		}
		p(".\n\n")
		p("%s\n\n", restartSentence(s.PluginPIDBefore, s.PluginPIDAfter, s.PluginPanics))
		writeFailures(p, "The round's failures", groupFailures(r.scaleStarts()))
		p("Longest LocalBackend call latency (each node's backend probed every second up to 10 nodes, about 10 probes a second across the process beyond, from plugin start to the end of this round): %.2f s, against the ~%d s after which tailscale's deadlock watchdog panics the process.\n\n", float64(s.BackendCallMaxMs)/1000, deadlockWatchdogMs/1000)
	} else {
		p("Not measured in this run.\n\n")
	}

	p("## 5. History: memory of new nodes after create/remove cycles\n\n")
	if h := r.History; h != nil {
		p("%d cycles of `docker run -d` of a tslink container, wait until it answers the laptop, `docker rm -f`, %d cycles at a\n", h.Cycles, h.Parallel)
		p("time (in parallel to keep the round short), on one plugin process: %.0f s, %d/%d answered, %d `docker run -d` failed.\n", h.Seconds, h.Reachable, h.Cycles, h.FailedRuns)
		p("Then start rounds as in section 1 on the same plugin process (N=1, then N=%d), with the memory reading of section 2;\n", r.Sizes.HistoryN)
		p("*RSS / additional* = (RSS at N − RSS at N=1, both after the cycles) ÷ (N−1).\n\n")
		p("%s\n\n", restartSentence(h.PluginPIDBefore, h.PluginPIDAfter, h.PluginPanics))
		writeFailures(p, "The cycles' failures", h.Failures)
		p("| N | tslink all reachable (s) | plugin RSS (MiB) | RSS / additional (MiB) | RSS / additional before the cycles (section 2, MiB) | idle CPU |\n|---|---|---|---|---|---|\n")
		for _, m := range h.Memory {
			sum := "—"
			for _, s := range h.Summaries {
				if s.N == m.N {
					sum = secs(s.AllReachable) + failed(&s)
				}
			}
			p("| %d | %s | %s | %s | %s | %.1f%% |\n", m.N, sum, mib(m.Mem.RSS), perAdditional(h.memory(1), &m), perAdditional(r.memory(kindTslink, 1), r.memory(kindTslink, m.N)), m.IdleCPUPct)
		}
		p("\n")
	} else {
		p("Not measured in this run.\n\n")
	}

	r.writeTargets(p)
	if strings.TrimSpace(notes) != "" {
		p("%s\n", strings.TrimSpace(notes))
	}
	return b.String()
}

var throughputPaths = []struct{ name, tailnet, bridge string }{
	{"container → laptop (limit: container → host)", "container->laptop", "container->host"},
	{"container → container", "container->container", "container->container"},
}

// perAdditional is (RSS at m − RSS at one) ÷ (running containers − 1) in
// MiB, "—" when either is missing.
func perAdditional(one, m *memRow) string {
	if v, ok := perAdditionalKiB(one, m); ok {
		return mib(int64(v))
	}
	return "—"
}

func perAdditionalKiB(one, m *memRow) (float64, bool) {
	if one == nil || m == nil {
		return 0, false
	}
	running := float64(cmp.Or(m.Running, m.N))
	if running <= 1 {
		return 0, false
	}
	return float64(m.Mem.RSS-one.Mem.RSS) / (running - 1), true
}

func restartSentence(before, after int, panics []string) string {
	switch {
	case before == 0:
		return "Plugin restarts were not recorded."
	case after == 0:
		return "The plugin process was gone at the end of the round (PID " + strconv.Itoa(before) + " before)."
	case after != before:
		return fmt.Sprintf("**The plugin restarted** during the round (PID %d, then %d).", before, after)
	case len(panics) > 0:
		return fmt.Sprintf("The plugin kept its PID (%d) but the engine log shows %d panic line(s), the first: `%s`.", before, len(panics), panics[0])
	}
	return fmt.Sprintf("No plugin restart: the same plugin process (PID %d) before and after, no panic in the engine log.", before)
}

func writeFailures(p func(string, ...any), title string, groups []failureGroup) {
	if len(groups) == 0 {
		return
	}
	p("%s, by reason:\n\n| containers | reason | which |\n|---|---|---|\n", title)
	for _, g := range groups {
		which := g.Containers
		more := ""
		if len(which) > 5 {
			which, more = which[:5], fmt.Sprintf(" and %d more", len(g.Containers)-5)
		}
		p("| %d | %s | %s%s |\n", g.Count, strings.ReplaceAll(g.Reason, "|", `\|`), strings.Join(which, ", "), more)
	}
	p("\n")
}

// writeTargets states issue 13's targets, each with what this run measured
// and a verdict (— when the run did not measure it).
func (r *results) writeTargets(p func(string, ...any)) {
	p("## Targets\n\n")
	p("Issue 13's targets, each against this run's figures.\n\n")
	p("| target | measured | verdict |\n|---|---|---|\n")
	row := func(target, measured string, ok bool) { p("| %s | %s | %s |\n", target, measured, verdict(ok)) }
	unmeasured := func(target string) { p("| %s | not measured in this run | — |\n", target) }

	t := "≤ 10 MiB RSS per additional idle container at N=30"
	if ts, ts1 := r.memory(kindTslink, 30), r.memory(kindTslink, 1); ts != nil && ts1 != nil {
		add, _ := perAdditionalKiB(ts1, ts)
		per := float64(ts.Mem.RSS-r.PluginBase.RSS) / float64(cmp.Or(ts.Running, 30))
		row(t, fmt.Sprintf("%s MiB RSS per additional (%s MiB per container over none)%s", mib(int64(add)), mib(int64(per)), running(ts)), cmp.Or(ts.Running, ts.N) == ts.N && add <= 10*1024)
	} else {
		unmeasured(t)
	}
	if h := r.History; h != nil {
		t := fmt.Sprintf("the same after %d create/remove cycles (%d at a time), N=%d", h.Cycles, h.Parallel, r.Sizes.HistoryN)
		m, m1 := h.memory(r.Sizes.HistoryN), h.memory(1)
		if add, ok := perAdditionalKiB(m1, m); ok {
			row(t, fmt.Sprintf("%s MiB RSS per additional%s (%d/%d cycles answered, %d runs failed)", mib(int64(add)), running(m), h.Reachable, h.Cycles, h.FailedRuns),
				cmp.Or(m.Running, m.N) == m.N && add <= 10*1024)
		} else {
			unmeasured(t)
		}
	} else {
		unmeasured("the same after 300 create/remove cycles")
	}
	for _, path := range throughputPaths {
		t := "throughput ≥ 90 % of the unchanged build's (tslink-full), " + path.name
		if ts, tf := r.tput(kindTslink, path.tailnet), r.tput(kindTslinkFull, path.tailnet); ts != nil && tf != nil {
			row(t, fmt.Sprintf("%.0f vs %.0f MB/s (%s); %.1f vs %.1f CPU-s/GB", ts.MBps, tf.MBps, ratio(ts.MBps, tf.MBps), ts.CPUPerGB, tf.CPUPerGB), ts.MBps >= 0.9*tf.MBps)
		} else {
			unmeasured(t)
		}
	}
	if s := r.Scale; s != nil {
		pre := fmt.Sprintf("%d containers, %d at a time: ", s.N, s.Parallel)
		row(pre+"all reachable from the laptop", fmt.Sprintf("%d/%d (the last %.1f s after the first run)", s.Reachable, s.N, s.AllReachable), s.Reachable == s.N)
		failed := failedRuns(r.scaleStarts())
		row(pre+"0 failed `docker run`", fmt.Sprintf("%d failed (reasons in section 4)", failed), failed == 0)
		if s.PluginPIDBefore != 0 {
			row(pre+"no plugin restart", fmt.Sprintf("PID %d before, %d after; %d panic lines in the engine log", s.PluginPIDBefore, s.PluginPIDAfter, len(s.PluginPanics)), !s.restarted())
		} else {
			unmeasured(pre + "no plugin restart")
		}
		t := pre + "plugin idle CPU < 5 % of a core over 60 s once settled"
		measured := fmt.Sprintf("%.2f %% over %.0f s, after %.0f s to settle", s.IdleCPUPct, s.IdleWindow, s.SettleWait)
		if s.IdleWindow >= 60 {
			row(t, measured, s.IdleCPUPct < 5)
		} else {
			p("| %s | %s | — (the window is shorter than 60 s) |\n", t, measured)
		}
		p("| %splugin RSS at %d idle stated | %s MiB RSS, %s MiB PSS | stated |\n", pre, s.N, mib(s.Mem.RSS), mib(s.Mem.PSS))
	} else {
		unmeasured("100 containers, 10 at a time: 100/100 reachable, 0 failed `docker run`, no plugin restart, idle CPU < 5 % of a core over 60 s, RSS stated")
	}
	for _, c := range []struct {
		n     int
		limit float64
	}{{30, 2}, {10, 1.5}} {
		t := fmt.Sprintf("N=%d all reachable within %g× the bridge baseline of the same run", c.n, c.limit)
		if ts, br := r.summary(kindTslink, c.n), r.summary(kindBridge, c.n); ts != nil && br != nil {
			row(t, fmt.Sprintf("%s s%s vs %s s (%s)", secs(ts.AllReachable), failed(ts), secs(br.AllReachable), ratio(ts.AllReachable, br.AllReachable)),
				ts.Failed == 0 && ts.AllReachable <= c.limit*br.AllReachable)
		} else {
			unmeasured(t)
		}
	}
	t = fmt.Sprintf("longest LocalBackend call during the 100-container round well under the ~%d s deadlock watchdog (< ¼ of it)", deadlockWatchdogMs/1000)
	if s := r.Scale; s != nil && s.BackendCallMaxMs >= 0 {
		row(t, fmt.Sprintf("%.2f s (%d containers)", float64(s.BackendCallMaxMs)/1000, s.N), s.BackendCallMaxMs < deadlockWatchdogMs/4)
	} else {
		unmeasured(t)
	}
	p("\n")
}

// running notes a memory reading with fewer containers than the round
// started (a target at N needs all N).
func running(m *memRow) string {
	if m.Running == 0 || m.Running == m.N {
		return ""
	}
	return fmt.Sprintf("; only %d of %d started", m.Running, m.N)
}

func failed(s *startSummary) string {
	if s.Failed == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d of %d never answered)", s.Failed, s.N)
}
