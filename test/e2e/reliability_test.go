package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// pluginGet fetches path from the plugin's status socket.
func (l *lab) pluginGet(path string) string {
	b, err := l.engine.PluginGet(path)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// pluginVars are the plugin's resource counters (GET /debug/vars).
type pluginVars struct {
	Goroutines, FDs     int
	RSSKiB, HeapLiveKiB int64
	RSSAnonKiB          int64
	MemoryReleases      uint64
	Threads             int
	StackSysKiB         uint64
	RuntimeMetaKiB      uint64
	RSSPeakKiB          int64
	HeapSpansKiB        uint64
	HeapFreeKiB         uint64
	DockerAPIRequests   uint64
	EngineRestoring     bool
	BackendCallMaxMs    int64
}

func (l *lab) pluginVars() (v pluginVars) {
	l.t.Helper()
	b, err := l.engine.PluginGet("/debug/vars")
	if err != nil {
		l.t.Fatalf("plugin vars: %v", err)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		l.t.Fatalf("plugin vars %q: %v", b, err)
	}
	return v
}

func TestThirtyConcurrentRuns(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	const n = 30
	began := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = l.engine.Docker(context.Background(), "run", "-d", "--name", fmt.Sprintf("c%02d", i), "--network", "tn", image, "httpd", "-f", "-p", "8080", "-h", "/www")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("run %d: %v", i, err)
		}
	}
	t.Logf("%d concurrent docker run -d returned after %v", n, time.Since(began).Round(time.Millisecond))
	seen := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("c%02d", i)
		ip := l.tsIP(name, "-4")
		if other, dup := seen[ip]; dup {
			t.Errorf("%s and %s share %s", name, other, ip)
		}
		seen[ip] = name
		if nodes := l.control.NodesByHostname(name); len(nodes) != 1 {
			t.Errorf("control has %d nodes named %s", len(nodes), name)
		}
	}
	for ip, name := range seen {
		err := netnstest.WaitFor(20*time.Second, func() error {
			body, err := httpGetFrom(l.laptop.NS, "http://"+ip+":8080/")
			if err == nil && !strings.Contains(body, "hello") {
				err = fmt.Errorf("body %q", body)
			}
			return err
		})
		if err != nil {
			t.Errorf("laptop -> %s (%s): %v", name, ip, err)
		}
	}
	t.Logf("all %d reachable from the laptop %v after the first docker run", n, time.Since(began).Round(time.Millisecond))
	names := make([]string, 0, n)
	for i := range n {
		names = append(names, fmt.Sprintf("c%02d", i))
	}
	l.docker(append([]string{"rm", "-f"}, names...)...)
	// On a loaded host dockerd was seen to refuse the network's removal
	// ("has active endpoints") right after rm -f of 30 returned; the
	// endpoints must go within seconds.
	removed := time.Now()
	err := netnstest.WaitFor(30*time.Second, func() error {
		_, err := l.engine.Docker(context.Background(), "network", "rm", "tn")
		return err
	})
	if err != nil {
		t.Fatalf("docker network rm tn: %v", err)
	}
	if d := time.Since(removed); d > time.Second {
		t.Logf("the network could be removed only %v after rm -f returned", d.Round(time.Millisecond))
	}
	l.noLeftovers()
}

// TestSameHostnameTwiceIsRefused: replicas of one ts.hostname (compose
// deploy.replicas, here three docker runs): one runs, the others fail fast
// naming it and register nothing at control (the refusal comes before any
// node starts).
func TestSameHostnameTwiceIsRefused(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	l.docker("run", "-d", "--name", "first", "--network", "tn", "--label", "ts.hostname=shared", image, "sleep", "3600")
	registers := l.control.RegisterRequests()
	for _, name := range []string{"second", "third"} {
		began := time.Now()
		out, err := l.engine.Docker(context.Background(), "run", "-d", "--name", name, "--network", "tn", "--label", "ts.hostname=shared", image, "sleep", "3600")
		took := time.Since(began)
		if err == nil || !strings.Contains(out, "already used by running container first") {
			t.Fatalf("%s container with the same hostname: err %v, %q; want a refusal naming first", name, err, out)
		}
		t.Logf("%s refused in %v", name, took.Round(time.Millisecond))
		if took > 10*time.Second {
			t.Errorf("%s refused after %v; want fast", name, took)
		}
	}
	if got := l.control.RegisterRequests() - registers; got != 0 {
		t.Errorf("refused replicas sent %d register requests to control; want 0", got)
	}
	if n := l.control.NodesByHostname("shared"); len(n) != 1 {
		t.Errorf("control has %d nodes named shared; want 1", len(n))
	}
	l.docker("rm", "-f", "third")
	l.docker("rm", "-f", "first")
	l.docker("start", "second")
	if ip := l.tsIP("second", "-4"); ip == "" {
		t.Error("second has no tailnet address once first is gone")
	}
}

func TestCrashLoopingContainerLeaksNothing(t *testing.T) {
	l := newLab(t)
	l.createNetwork("keep", "--opt", "ts.ephemeral=false")
	// Warm up once so the plugin's lazily created state does not count.
	l.docker("run", "--rm", "--network", "keep", "--label", "ts.hostname=warm", image, "true")
	before := l.pluginVars()
	l.docker("run", "-d", "--name", "crashy", "--restart", "always", "--network", "keep", "--label", "ts.hostname=crashy", image, "sh", "-c", "sleep 0.3; exit 1")
	time.Sleep(20 * time.Second)
	restarts := l.docker("inspect", "-f", "{{.RestartCount}}", "crashy")
	l.docker("rm", "-f", "crashy")
	if n := l.control.NodesByHostname("crashy"); len(n) != 1 {
		t.Errorf("control has %d nodes named crashy after %s restarts; want 1", len(n), restarts)
	}
	var after pluginVars
	netnstest.WaitFor(10*time.Second, func() error {
		after = l.pluginVars()
		if after.Goroutines > before.Goroutines+5 || after.FDs > before.FDs+2 {
			return fmt.Errorf("not settled")
		}
		return nil
	})
	t.Logf("%s restarts; plugin goroutines %d -> %d, fds %d -> %d, RSS %d -> %d KiB", restarts, before.Goroutines, after.Goroutines, before.FDs, after.FDs, before.RSSKiB, after.RSSKiB)
	if after.Goroutines > before.Goroutines+5 || after.FDs > before.FDs+2 {
		t.Errorf("plugin grew: goroutines %d -> %d, fds %d -> %d", before.Goroutines, after.Goroutines, before.FDs, after.FDs)
	}
	l.docker("network", "rm", "keep")
	l.noLeftovers()
}

func TestControlOutage(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn", "--opt", "ts.timeout=4s")
	_, echo := l.echoContainer("svc", "tn", "before")
	l.control.StopControl()
	// Traffic between connected nodes continues without control.
	for i := range 5 {
		if err := echo(fmt.Sprintf("during %d", i)); err != nil {
			t.Fatalf("traffic stopped with control down: %v", err)
		}
		time.Sleep(time.Second)
	}
	// A container started now fails clearly within its wait.
	began := time.Now()
	out, err := l.engine.Docker(context.Background(), "run", "--rm", "--network", "tn", "--label", "ts.hostname=during", image, "true")
	if err == nil || !strings.Contains(out, "control server unreachable") || time.Since(began) > 15*time.Second {
		t.Errorf("docker run with control down: err %v after %v: %q", err, time.Since(began), out)
	}
	if err := l.control.StartControl(); err != nil {
		t.Fatal(err)
	}
	// Nodes reconnect: svc is online at control again, new containers work.
	err = netnstest.WaitFor(60*time.Second, func() error {
		if n := l.control.NodesByHostname("svc"); len(n) != 1 || !n[0].Online {
			return fmt.Errorf("svc not back online at control: %+v", n)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if err := echo("after"); err != nil {
		t.Errorf("traffic after control returned: %v", err)
	}
	out = l.docker("run", "--rm", "--network", "tn", "--label", "ts.hostname=after", image, "ip", "-4", "-o", "addr", "show", "dev", "tailscale0")
	if !strings.Contains(out, "inet 100.") {
		t.Errorf("container after control returned: %q", out)
	}
}

func TestDockerdRestartWithLiveRestore(t *testing.T) {
	l := newLabWith(t, []string{"--live-restore"})
	l.createNetwork("tn")
	ip, echo := l.echoContainer("svc", "tn", "before")
	began := time.Now()
	l.engine.Restart(t)
	t.Logf("dockerd restarted in %v", time.Since(began).Round(time.Millisecond))
	if err := netnstest.WaitFor(10*time.Second, func() error { return echo("after") }); err != nil {
		t.Fatalf("connection after dockerd restart: %v", err)
	}
	t.Logf("traffic on the old connection %v after the restart began", time.Since(began).Round(time.Millisecond))
	if got := l.tsIP("svc", "-4"); got != ip {
		t.Errorf("IP after restart %s; want %s", got, ip)
	}
	out := l.docker("run", "--rm", "--network", "tn", image, "ip", "-4", "-o", "addr", "show", "dev", "tailscale0")
	if !strings.Contains(out, "inet 100.") {
		t.Errorf("new container after dockerd restart: %q", out)
	}
}

// soakCycles is how many create/start/stop/remove cycles TestSoak runs:
// TSLINK_SOAK_CYCLES (make soak sets 300), else a smoke size.
func soakCycles() int {
	if n, err := strconv.Atoi(os.Getenv("TSLINK_SOAK_CYCLES")); err == nil && n > 0 {
		return n
	}
	return 10
}

func TestSoak(t *testing.T) {
	// TSLINK_SOAK_HEAP=<file> saves heap profiles before and after; the
	// plugin samples allocations only when asked (cmd/tslink), and its
	// profiler's records then add to the RSS the soak measures.
	var env []string
	if os.Getenv("TSLINK_SOAK_HEAP") != "" {
		env = append(env, "TSLINK_HEAP_PROFILE=1")
	}
	l := newLab(t, env...)
	l.createNetwork("soak")
	cycles := soakCycles()
	// The plugin's RSS climbs to a plateau over the first few dozen cycles
	// (Go heap arenas, wireguard-go buffer pools); leaks show as growth
	// after that, so the baseline is taken after a tenth of the cycles.
	warm := max(1, min(30, cycles/10))
	cycle := func(i int) {
		name := fmt.Sprintf("soak%d", i)
		l.docker("create", "--name", name, "--network", "soak", image, "sleep", "3600")
		l.docker("start", name)
		l.docker("stop", "-t", "0", name)
		l.docker("rm", name)
	}
	for i := range warm {
		cycle(i)
	}
	// Both figures are taken once the plugin has returned freed memory to
	// the OS (3 s after the last container left), so they compare settled
	// states, not a moment in the middle of a cycle.
	settled := func(since uint64) (v pluginVars) {
		err := netnstest.WaitFor(15*time.Second, func() error {
			if v = l.pluginVars(); v.MemoryReleases <= since {
				return fmt.Errorf("no memory release yet (%d)", v.MemoryReleases)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("plugin did not release memory after the last container left: %v", err)
		}
		time.Sleep(time.Second) // the kernel's RSS count follows the madvise
		return l.pluginVars()
	}
	releasesBefore := l.pluginVars().MemoryReleases
	if p := os.Getenv("TSLINK_SOAK_HEAP"); p != "" {
		l.pluginGet("/debug/pprof/heap?gc=1") // two GCs: sync.Pool victims go too
		os.WriteFile(p+".before", []byte(l.pluginGet("/debug/pprof/heap?gc=1")), 0o644)
	}
	before := settled(releasesBefore)
	// Settled readings every soakCheckpoint cycles show whether RSS keeps
	// growing or levels off.
	const soakCheckpoint = 60
	var paused time.Duration
	began := time.Now()
	for i := warm; i < cycles; i++ {
		cycle(i)
		if done := i + 1 - warm; done%soakCheckpoint == 0 && i+1 < cycles {
			pause := time.Now()
			v := settled(l.pluginVars().MemoryReleases)
			paused += time.Since(pause)
			t.Logf("soak: after %d cycles: RSS %d KiB (%+.1f%%), anonymous %d KiB, runtime metadata %d KiB, heap spans %d KiB",
				i+1, v.RSSKiB, 100*float64(v.RSSKiB-before.RSSKiB)/float64(before.RSSKiB), v.RSSAnonKiB, v.RuntimeMetaKiB, v.HeapSpansKiB)
		}
	}
	took := time.Since(began) - paused
	// Releases also happen mid-run when a cycle takes longer than the
	// release delay; wait for the one after the last container left.
	after := settled(l.pluginVars().MemoryReleases)
	netnstest.WaitFor(10*time.Second, func() error {
		after = l.pluginVars()
		if after.Goroutines > before.Goroutines || after.FDs > before.FDs {
			return fmt.Errorf("not settled")
		}
		return nil
	})
	if p := os.Getenv("TSLINK_SOAK_HEAP"); p != "" {
		l.pluginGet("/debug/pprof/heap?gc=1")
		os.WriteFile(p, []byte(l.pluginGet("/debug/pprof/heap?gc=1")), 0o644)
	}
	t.Logf("soak: live heap %d -> %d KiB", before.HeapLiveKiB, after.HeapLiveKiB)
	t.Logf("soak: %d cycles (after %d warm-up) in %v (%v each); plugin goroutines %d -> %d, fds %d -> %d, RSS %d -> %d KiB (%+.1f%%)",
		cycles-warm, warm, took.Round(time.Millisecond), (took / time.Duration(max(1, cycles-warm))).Round(time.Millisecond),
		before.Goroutines, after.Goroutines, before.FDs, after.FDs, before.RSSKiB, after.RSSKiB, 100*float64(after.RSSKiB-before.RSSKiB)/float64(before.RSSKiB))
	if after.Goroutines > before.Goroutines+2 || after.FDs > before.FDs+2 {
		t.Errorf("plugin leaked: goroutines %d -> %d, fds %d -> %d\n%s", before.Goroutines, after.Goroutines, before.FDs, after.FDs, l.pluginGet("/debug/pprof/goroutine?debug=1"))
	}
	t.Logf("soak: anonymous RSS %d -> %d KiB (%+.1f%%), file-backed RSS %d -> %d KiB",
		before.RSSAnonKiB, after.RSSAnonKiB, 100*float64(after.RSSAnonKiB-before.RSSAnonKiB)/float64(before.RSSAnonKiB),
		before.RSSKiB-before.RSSAnonKiB, after.RSSKiB-after.RSSAnonKiB)
	t.Logf("soak: threads %d -> %d, Go stacks %d -> %d KiB, runtime metadata %d -> %d KiB, heap spans %d -> %d KiB, free heap still mapped %d -> %d KiB; peak RSS %d KiB",
		before.Threads, after.Threads, before.StackSysKiB, after.StackSysKiB, before.RuntimeMetaKiB, after.RuntimeMetaKiB,
		before.HeapSpansKiB, after.HeapSpansKiB, before.HeapFreeKiB, after.HeapFreeKiB, after.RSSPeakKiB)
	if cycles >= 100 && float64(after.RSSKiB) > 1.1*float64(before.RSSKiB) {
		t.Errorf("plugin RSS grew more than 10%%: %d -> %d KiB\n%s", before.RSSKiB, after.RSSKiB, grepLines(l.engine.Log(), "memory released"))
	}
	l.docker("network", "rm", "soak")
	l.noLeftovers()
}
