package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/devcontrol"
	"github.com/tslink/tslink/test/netnstest"
)

// Targets of issue 11, and the bounds the tests assert (3× the target on
// this noisy machine).
const (
	apiBound     = 30 * time.Second  // target 10 s from the engine's start
	tailnetBound = 180 * time.Second // target 60 s from the engine's start (or control's return)
	controlAway  = 90 * time.Second  // control comes back this long after the engine started
)

// restartApp is a restart-policy container's process: an HTTP server on
// 8080 that stops at SIGTERM (a shell as PID 1 would ignore it, and every
// graceful engine stop would wait dockerd's 10 s for each container).
const restartApp = `trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait`

// restartCtr is a restart-policy container on a tslink network, and what it
// was before the engine went down.
type restartCtr struct {
	name, network, policy, hostname string
	persistent                      bool // its network has ts.ephemeral=false
	// twin is a container with the same restart policy on no network
	// (--network none): whether Docker itself restarts a container of this
	// policy after a given kind of restart.
	twin string

	ip     string // tailnet IPv4 before the restart
	nodeID int64  // its node at control before the restart
}

// sub is the lab seen from subtest t.
func (l *lab) sub(t *testing.T) *lab {
	c := *l
	c.t = t
	return &c
}

// startRestartContainers makes the two networks (persistent nodes with a
// fixed hostname, ephemeral nodes) and a restart-policy container on each.
func (l *lab) startRestartContainers() []*restartCtr {
	l.t.Helper()
	l.createNetwork("keep", "--opt", "ts.ephemeral=false")
	l.createNetwork("eph")
	cs := []*restartCtr{
		{name: "always", network: "keep", policy: "always", hostname: "keep-node", persistent: true},
		{name: "unless", network: "eph", policy: "unless-stopped", hostname: "eph-node"},
	}
	for _, c := range cs {
		l.docker("run", "-d", "--name", c.name, "--restart", c.policy, "--network", c.network,
			"--label", "ts.hostname="+c.hostname, image, "sh", "-c", restartApp)
		c.twin = "twin-" + c.name
		l.docker("run", "-d", "--name", c.twin, "--restart", c.policy, "--network", "none", image, "sh", "-c", restartApp)
	}
	return cs
}

// removeRestartContainers removes the containers and their networks.
func (l *lab) removeRestartContainers(cs []*restartCtr) {
	l.t.Helper()
	for _, c := range cs {
		l.docker("rm", "-f", c.name, c.twin)
	}
	l.docker("network", "rm", "keep", "eph")
}

// dockerRestarted reports whether Docker restarted c's twin (the same
// restart policy, no network). Call it once the API answers: dockerd
// serves its API only after it has started the restart-policy containers
// (a 2 s grace covers a start still being recorded). Docker
// 20.10 does not restart an unless-stopped container after a crash without
// live-restore: its restore stops the container it finds running, and that
// stop marks it as stopped by the user (HasBeenManuallyStopped).
func (l *lab) dockerRestarted(c *restartCtr) bool {
	_, err := l.waitRunning(&restartCtr{name: c.twin, policy: c.policy}, time.Now().Add(2*time.Second))
	return err == nil
}

// evidence is what a failure message carries: dockerd's errors and the
// plugin's warnings (without dockerd's start-up noise), the end of
// dockerd's log (which holds the plugin's output), and `tslink status`.
func (l *lab) evidence() string {
	var relevant []string
	for _, line := range strings.Split(grepLines(l.engine.Log(), "level=error", "level=warning", "level=WARN", "level=ERROR"), "\n") {
		if !containsAny(line, "devmapper", "blkio", "containerd config version", "cleanup warnings", "module=grpc") {
			relevant = append(relevant, line)
		}
	}
	return fmt.Sprintf("\n--- dockerd errors, plugin warnings and errors (last 25):\n%s\n--- dockerd log tail:\n%s\n--- tslink status:\n%s",
		lastLines(strings.Join(relevant, "\n"), 25), l.engine.LogTail(25), l.tslinkStatus())
}

func containsAny(s string, substrs ...string) bool {
	for _, sub := range substrs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tailnetIPNow returns the container's IPv4 on tailscale0, without waiting.
func (l *lab) tailnetIPNow(ctr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := l.engine.Docker(ctx, "exec", ctr, "ip", "-4", "-o", "addr", "show", "dev", "tailscale0")
	if err != nil {
		return "", err
	}
	_, after, ok := strings.Cut(out, "inet ")
	if !ok {
		return "", fmt.Errorf("%s: no IPv4 on tailscale0: %q", ctr, strings.TrimSpace(out))
	}
	ip, _, _ := strings.Cut(after, "/")
	return ip, nil
}

// answersLaptop checks, once, that the container's web server answers the
// laptop over the tailnet, and returns the container's tailnet IPv4.
func (l *lab) answersLaptop(ctr string) (string, error) {
	ip, err := l.tailnetIPNow(ctr)
	if err != nil {
		return "", err
	}
	got, err := l.laptopHTTP("http://"+ip+":8080/", "", 3*time.Second)
	if err == nil && !strings.HasPrefix(got, "200 hello from the container") {
		err = fmt.Errorf("got %q", got)
	}
	if err != nil {
		return "", fmt.Errorf("laptop -> %s (%s:8080): %w", ctr, ip, err)
	}
	return ip, nil
}

// waitTailnet polls until the container answers the laptop over the
// tailnet or deadline passes; it returns when it first answered, and the
// last failure before that (nil if the first try answered).
func (l *lab) waitTailnet(ctr string, deadline time.Time) (time.Time, string, error, error) {
	var lastFailure error
	for {
		ip, err := l.answersLaptop(ctr)
		if err == nil {
			return time.Now(), ip, lastFailure, nil
		}
		lastFailure = err
		if time.Now().After(deadline) {
			return time.Time{}, "", lastFailure, err
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// waitAllTailnet runs waitTailnet for every container at once and returns
// when each first answered.
func (l *lab) waitAllTailnet(cs []*restartCtr, deadline time.Time) ([]time.Time, []string, []error) {
	at, ips, errs := make([]time.Time, len(cs)), make([]string, len(cs)), make([]error, len(cs))
	lastFailures := make([]error, len(cs))
	done := make(chan struct{})
	began := time.Now()
	for i, c := range cs {
		go func() {
			at[i], ips[i], lastFailures[i], errs[i] = l.waitTailnet(c.name, deadline)
			done <- struct{}{}
		}()
	}
	for range cs {
		<-done
	}
	for i, c := range cs {
		if errs[i] == nil && at[i].Sub(began) > 15*time.Second {
			l.t.Logf("%s answered the laptop only %v after the wait began; the last failure before: %v\n%s",
				c.name, at[i].Sub(began).Round(100*time.Millisecond), lastFailures[i], l.nodeLog(c.hostname))
		}
	}
	return at, ips, errs
}

// nodeLog is the tslink lines and the last lines of a node's debug.log.
func (l *lab) nodeLog(hostname string) string {
	b, _ := os.ReadFile(filepath.Join(l.engine.StateDir(), "by-hostname", hostname, "debug.log"))
	return fmt.Sprintf("--- %s debug.log, tslink lines (last 20):\n%s\n--- last 15 lines:\n%s",
		hostname, lastLines(grepLines(string(b), "tslink:"), 20), lastLines(string(b), 15))
}

// waitRunning waits until dockerd reports the container running, without
// anyone starting it, and returns when it started (State.StartedAt). A
// failed start (State.Error) is final, since Docker does not retry a
// restart-policy container whose start failed at restore: it returns that
// error at once.
func (l *lab) waitRunning(c *restartCtr, deadline time.Time) (time.Time, error) {
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := l.engine.Docker(ctx, "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}} {{.State.FinishedAt}} {{.State.Status}} restarts={{.RestartCount}} error={{.State.Error}}", c.name)
		cancel()
		last = strings.TrimSpace(out)
		f := strings.Fields(last)
		if err == nil && len(f) > 2 && f[0] == "true" {
			return time.Parse(time.RFC3339Nano, f[1])
		}
		if err == nil && len(f) > 2 && !strings.HasSuffix(last, "error=") {
			// It ran before the restart (baseline), which cleared any
			// earlier error: this one is from the restore.
			return time.Time{}, fmt.Errorf("%s (--restart %s) failed to start and Docker does not retry it: %s", c.name, c.policy, last)
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s (--restart %s) not running: %s %v", c.name, c.policy, last, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// baseline makes sure every container runs and answers the laptop before a
// scenario (a failed scenario may have left one stopped) and records its
// tailnet IP and node.
func (l *lab) baseline(cs []*restartCtr) {
	l.t.Helper()
	if err := netnstest.WaitFor(30*time.Second, func() error { return l.engine.Ping(2 * time.Second) }); err != nil {
		l.t.Fatalf("before the scenario: engine API: %v%s", err, l.evidence())
	}
	for _, c := range cs {
		for _, name := range []string{c.name, c.twin} {
			if out, _ := l.engine.Docker(context.Background(), "inspect", "-f", "{{.State.Running}}", name); strings.TrimSpace(out) != "true" {
				l.t.Logf("before the scenario: %s is not running (the scenario before left it stopped): docker start", name)
				l.engine.Docker(context.Background(), "start", name)
			}
		}
	}
	_, ips, errs := l.waitAllTailnet(cs, time.Now().Add(60*time.Second))
	for i, c := range cs {
		if errs[i] != nil {
			l.t.Fatalf("before the scenario: %v%s", errs[i], l.evidence())
		}
		c.ip = ips[i]
		c.nodeID = 0
		for _, n := range l.control.NodesByHostname(c.hostname) {
			if n.Online && slices.ContainsFunc(n.IPs, func(a netip.Addr) bool { return a.String() == c.ip }) {
				c.nodeID = n.ID
			}
		}
		if c.nodeID == 0 {
			l.t.Fatalf("before the scenario: control has no online node %s with %s: %+v", c.hostname, c.ip, l.control.NodesByHostname(c.hostname))
		}
	}
}

// checkNodes checks control's view after a restart: a persistent
// container kept its node and 100.x; an ephemeral one has exactly one online
// node, the one with the container's current IP (a fresh one if
// freshEphemeral). ips are the containers' tailnet IPs now.
func (l *lab) checkNodes(cs []*restartCtr, ips []string, freshEphemeral bool) {
	l.t.Helper()
	for i, c := range cs {
		if ips[i] == "" {
			continue
		}
		if c.persistent && ips[i] != c.ip {
			l.t.Errorf("%s (ts.ephemeral=false): tailnet IP %s; want %s as before", c.name, ips[i], c.ip)
		}
		var last []devcontrol.Node
		err := netnstest.WaitFor(30*time.Second, func() error {
			last = l.control.NodesByHostname(c.hostname)
			var online []devcontrol.Node
			for _, n := range last {
				if n.Online {
					online = append(online, n)
				}
			}
			if len(online) != 1 {
				return fmt.Errorf("%d online nodes named %s; want 1", len(online), c.hostname)
			}
			if !slices.ContainsFunc(online[0].IPs, func(a netip.Addr) bool { return a.String() == ips[i] }) {
				return fmt.Errorf("the online node %s has %v, the container %s", c.hostname, online[0].IPs, ips[i])
			}
			switch {
			case c.persistent && online[0].ID != c.nodeID:
				return fmt.Errorf("persistent node %s is node %d; want node %d as before", c.hostname, online[0].ID, c.nodeID)
			case !c.persistent && freshEphemeral && online[0].ID == c.nodeID:
				return fmt.Errorf("ephemeral node %s is still node %d; want a fresh node (it logged out at the stop)", c.hostname, c.nodeID)
			}
			return nil
		})
		if err != nil {
			l.t.Errorf("control: %v; nodes: %+v", err, last)
		}
	}
}

// restartScenario is one way the engine goes down and comes back.
type restartScenario struct {
	name        string
	liveRestore bool
	restart     func(testing.TB)
	// freshEphemeral: the ephemeral node logged out at the stop, so its
	// container must come back with a new node.
	freshEphemeral bool
}

// TestEngineRestart takes one engine with restart-policy containers on a
// persistent and an ephemeral tslink network through a graceful restart, a
// crash (SIGKILL of dockerd) and a simulated reboot, without live-restore
// and then with it: the API answers, every container runs without anyone
// starting it and answers the laptop over the tailnet, the persistent node
// keeps its 100.x, the ephemeral one has a node and control one online node
// for it.
func TestEngineRestart(t *testing.T) {
	l := newLab(t)
	cs := l.startRestartContainers()
	e := l.engine
	scenarios := []restartScenario{
		{name: "graceful", restart: e.RestartGracefully, freshEphemeral: true},
		{name: "crash", restart: e.RestartAfterCrash},
		{name: "reboot", restart: e.Reboot},
		// live-restore from here on; a reboot switches it on, since its stop
		// side does not depend on it.
		{name: "reboot-live-restore", liveRestore: true, restart: e.Reboot},
		{name: "graceful-live-restore", liveRestore: true, restart: e.RestartGracefully},
		{name: "crash-live-restore", liveRestore: true, restart: e.RestartAfterCrash},
	}
	for _, sc := range scenarios {
		if !t.Run(sc.name, func(t *testing.T) { l.sub(t).restartScenario(sc, cs) }) {
			if err := e.Ping(5 * time.Second); err != nil {
				t.Fatalf("after %s the engine API does not answer (%v): the other scenarios cannot run", sc.name, err)
			}
		}
	}
	l.removeRestartContainers(cs)
	l.noLeftovers()
}

func (l *lab) restartScenario(sc restartScenario, cs []*restartCtr) {
	t := l.t
	l.baseline(cs)
	l.engine.SetLiveRestore(sc.liveRestore)
	sc.restart(t)
	started := l.engine.Started
	api, err := l.engine.WaitAPI(apiBound)
	if err != nil {
		t.Fatalf("%s: %v%s", sc.name, err, l.evidence())
	}
	// Each container is followed on its own, so that one that is slow or
	// stays down does not delay the others' measurements.
	type result struct {
		notRestarted bool // by Docker: its twin stays down too
		running      time.Duration
		tailnetAt    time.Time
		ip           string
		lastFailure  error
		err          error
	}
	results := make([]result, len(cs))
	done := make(chan struct{})
	for i, c := range cs {
		go func() {
			defer func() { done <- struct{}{} }()
			r := &results[i]
			if !l.dockerRestarted(c) {
				r.notRestarted = true
				return
			}
			at, err := l.waitRunning(c, started.Add(tailnetBound))
			if err != nil {
				r.err = err
				return
			}
			r.running = at.Sub(started)
			r.tailnetAt, r.ip, r.lastFailure, err = l.waitTailnet(c.name, started.Add(tailnetBound))
			if err != nil {
				r.err = fmt.Errorf("%s not on the tailnet within %v of the engine's start: %w", c.name, tailnetBound, err)
			}
		}()
	}
	for range cs {
		<-done
	}
	var back []*restartCtr
	var ips []string
	for i, c := range cs {
		r := results[i]
		switch {
		case r.notRestarted:
			// Not tslink's to decide: the same container without a network
			// stays down too.
			out, _ := l.engine.Docker(context.Background(), "inspect", "-f", "{{.State.Status}} {{.State.Running}}", c.name)
			t.Logf("%s: Docker did not restart --restart %s containers (%s stays down too); %s: %s", sc.name, c.policy, c.twin, c.name, strings.TrimSpace(out))
			t.Logf("restart-timing scenario=%s live-restore=%v container=%s policy=%s ephemeral=%v api=%s running=not-restarted-by-docker tailnet=-",
				sc.name, sc.liveRestore, c.name, c.policy, !c.persistent, secs(api))
		case r.err != nil:
			t.Errorf("%s: %v%s", sc.name, r.err, l.evidence())
		default:
			if r.tailnetAt.Sub(started) > 20*time.Second {
				t.Logf("%s: %s answered the laptop only %v after the engine started; the last failure before: %v\n%s",
					sc.name, c.name, r.tailnetAt.Sub(started).Round(100*time.Millisecond), r.lastFailure, l.nodeLog(c.hostname))
			}
			t.Logf("restart-timing scenario=%s live-restore=%v container=%s policy=%s ephemeral=%v api=%s running=%s tailnet=%s",
				sc.name, sc.liveRestore, c.name, c.policy, !c.persistent, secs(api), runningSecs(r.running), secs(r.tailnetAt.Sub(started)))
			back = append(back, c)
			ips = append(ips, r.ip)
		}
	}
	cs = back
	l.checkNodes(cs, ips, sc.freshEphemeral)
}

// secs formats d as seconds with one decimal, for the parseable timing line.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s" }

// runningSecs is secs, or "kept" for a container that ran through the
// restart (live-restore).
func runningSecs(d time.Duration) string {
	if d <= 0 {
		return "kept"
	}
	return secs(d)
}

// TestEngineRestartControlUnreachable restarts the engine while control is
// down, in two forms: connections refused (devcontrol's control server
// stopped, DERP still up) and packets dropped so connects hang (an nftables
// drop of control's port for the lab's own processes: the host cannot
// reach control, the laptop can). Control comes back 90 s after the engine
// started. Meanwhile the containers run and `tslink status` says control is
// unreachable and that it retries, and an interactive `docker run` (the
// engine no longer restoring) still fails with the clear error; after
// control's return every container is on the tailnet, the persistent node
// with its IP, the ephemeral one with a fresh node.
func TestEngineRestartControlUnreachable(t *testing.T) {
	l := newLab(t)
	cs := l.startRestartContainers()
	u, err := url.Parse(l.control.URL())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	for _, form := range []string{"refused", "dropped"} {
		ok := t.Run(form, func(t *testing.T) {
			sl := l.sub(t)
			sl.baseline(cs)
			var controlBack func()
			if form == "refused" {
				l.control.StopControl()
				controlBack = func() {
					if err := l.control.StartControl(); err != nil {
						t.Fatalf("restarting control: %v", err)
					}
				}
			} else {
				controlBack = netnstest.DropLocalTCPPort(t, port)
			}
			t.Cleanup(controlBack) // idempotent; a failed subtest leaves control up
			sl.controlUnreachableAtBoot(form, cs, controlBack)
		})
		if !ok {
			if err := l.engine.Ping(5 * time.Second); err != nil {
				t.Fatalf("after %s the engine API does not answer (%v): the other form cannot run", form, err)
			}
		}
	}
	l.removeRestartContainers(cs)
	l.noLeftovers()
}

func (l *lab) controlUnreachableAtBoot(form string, cs []*restartCtr, controlBack func()) {
	t := l.t
	scenario := "control-" + form
	l.engine.RestartGracefully(t)
	started := l.engine.Started
	api, err := l.engine.WaitAPI(apiBound)
	if err != nil {
		t.Fatalf("%s: %v%s", scenario, err, l.evidence())
	}
	running := make([]time.Duration, len(cs))
	for i, c := range cs {
		at, err := l.waitRunning(c, started.Add(60*time.Second))
		if err != nil {
			t.Errorf("%s: with control down: %v%s", scenario, err, l.evidence())
			continue
		}
		running[i] = at.Sub(started)
	}
	// tslink status names the reason and that it retries.
	var status string
	err = netnstest.WaitFor(60*time.Second, func() error {
		status = l.tslinkStatus()
		for _, c := range cs {
			line := ""
			for _, ln := range strings.Split(status, "\n") {
				if strings.HasPrefix(ln, c.name+" ") {
					line = ln
				}
			}
			if !strings.Contains(line, "control server unreachable") || !strings.Contains(strings.ToLower(line), "retrying") {
				return fmt.Errorf("%s: status line %q does not say control is unreachable and retrying", c.name, line)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: tslink status with control down: %v\n%s", scenario, err, status)
	}
	// Once the engine serves its API it is no longer restoring: an
	// interactive docker run fails clearly instead of starting a container
	// whose node may never come.
	err = netnstest.WaitFor(30*time.Second, func() error {
		if l.pluginVars().EngineRestoring {
			return fmt.Errorf("the plugin still counts the engine as restoring")
		}
		return nil
	})
	if err != nil {
		t.Errorf("%s: %v%s", scenario, err, l.evidence())
	} else {
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		name := "interactive-" + form
		out, err := l.engine.Docker(ctx, "run", "--name", name, "--network", "keep", "--label", "ts.hostname="+name, image, "true")
		cancel()
		if err == nil || !strings.Contains(out, "control server unreachable") {
			t.Errorf("%s: interactive docker run with control down: err %v after %v: %q; want it to fail with \"control server unreachable\"", scenario, err, time.Since(began).Round(time.Second), out)
		} else {
			t.Logf("%s: interactive docker run failed after %v: %s", scenario, time.Since(began).Round(100*time.Millisecond), strings.TrimSpace(out))
		}
		l.engine.Docker(context.Background(), "rm", "-f", name)
	}
	if wait := time.Until(started.Add(controlAway)); wait > 0 {
		time.Sleep(wait)
	}
	controlBack()
	back := time.Now()
	at, ips, errs := l.waitAllTailnet(cs, back.Add(tailnetBound))
	for i, c := range cs {
		if errs[i] != nil {
			t.Errorf("%s: %s not on the tailnet within %v of control's return: %v%s", scenario, c.name, tailnetBound, errs[i], l.evidence())
			continue
		}
		t.Logf("restart-timing scenario=%s live-restore=false container=%s policy=%s ephemeral=%v api=%s running=%s control-back=%s tailnet-after-control=%s",
			scenario, c.name, c.policy, !c.persistent, secs(api), runningSecs(running[i]), secs(back.Sub(started)), secs(at[i].Sub(back)))
	}
	l.checkNodes(cs, ips, true)
}
