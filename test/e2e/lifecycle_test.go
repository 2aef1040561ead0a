package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// firstInstructionRuns is how many `docker run`s check that tailscale0 is
// ready at the container's first instruction.
const firstInstructionRuns = 50

func TestTailscale0ReadyAtFirstInstruction(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	ready := 0
	var misses []string
	began := time.Now()
	for i := range firstInstructionRuns {
		out, err := l.engine.Docker(context.Background(), "run", "--rm", "--network", "tn", image,
			"ip", "-o", "addr", "show", "dev", "tailscale0")
		if err == nil && strings.Contains(out, "inet 100.") {
			ready++
		} else {
			misses = append(misses, fmt.Sprintf("run %d: %v %q", i, err, out))
		}
	}
	t.Logf("tailscale0 had its 100.x address at the first instruction in %d of %d runs (%v per run)", ready, firstInstructionRuns, (time.Since(began) / firstInstructionRuns).Round(time.Millisecond))
	if ready < firstInstructionRuns-1 {
		t.Errorf("ready in %d of %d runs; want at least %d:\n%s", ready, firstInstructionRuns, firstInstructionRuns-1, strings.Join(misses, "\n"))
	}
	l.docker("network", "rm", "tn")
	l.noLeftovers()
}

func TestPluginEnvDefaults(t *testing.T) {
	l := newLab(t, "TS_AUTHKEY="+testAuthKey, "TS_CONTROL_URL=$CONTROL")
	// No key and no control URL: only the opt-in to the lab's plain http.
	l.docker("network", "create", "-d", plugin, "--opt", "ts.insecure-control=true", "envnet")
	l.docker("run", "-d", "--name", "envc", "--network", "envnet", "--label", "ts.hostname=from-env", image, "sleep", "300")
	if out := l.docker("exec", "envc", "ip", "-4", "-o", "addr", "show", "dev", "tailscale0"); !strings.Contains(out, "inet 100.") {
		t.Fatalf("no tailnet address: %q", out)
	}
	if n := l.control.NodesByHostname("from-env"); len(n) != 1 {
		t.Errorf("control has %d nodes named from-env; want 1", len(n))
	}
	l.docker("rm", "-f", "envc")
	inspect := l.docker("network", "inspect", "envnet")
	if strings.Contains(inspect, testAuthKey) {
		t.Errorf("key from the plugin env shows in network inspect")
	}
}

func TestPublishInternalAndNames(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	l.docker("run", "-d", "--name", "pub", "--network", "tn", "-p", "18080:8080", image, "httpd", "-f", "-p", "8080", "-h", "/www")
	l.docker("run", "-d", "--name", "peer", "--network", "tn", image, "sleep", "3600")

	// -p publishes on the host (the lab netns), reachable from the laptop's underlay.
	var body string
	err := netnstest.WaitFor(10*time.Second, func() (err error) {
		body, err = httpGetFrom(l.laptop.NS, "http://"+netnstest.LabAddr+":18080/")
		return err
	})
	if err != nil || !strings.Contains(body, "hello from the container") {
		t.Errorf("published port: %q %v", body, err)
	}
	// Containers of the network reach each other by name on eth0.
	if out, err := l.engine.Docker(context.Background(), "exec", "peer", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 pub 8080"); err != nil || !strings.Contains(out, "hello from the container") {
		t.Errorf("peer -> pub by name: %q %v", out, err)
	}

	// --internal: no internet, tailnet still works.
	l.createNetwork("internal", "--internal")
	l.docker("run", "-d", "--name", "inner", "--network", "internal", image, "httpd", "-f", "-p", "8080", "-h", "/www")
	if out, _ := l.engine.Docker(context.Background(), "exec", "inner", "ip", "route"); strings.Contains(out, "default") {
		t.Errorf("internal container has a default route:\n%s", out)
	}
	if out, err := l.httpGetIn("inner", internetAddr, "80"); err == nil && strings.Contains(out, "internet") {
		t.Errorf("internal container reached the internet: %q", out)
	}
	ip := l.tsIP("inner", "-4")
	err = netnstest.WaitFor(15*time.Second, func() (err error) {
		body, err = httpGetFrom(l.laptop.NS, "http://"+ip+":8080/")
		return err
	})
	if err != nil || !strings.Contains(body, "hello from the container") {
		t.Errorf("laptop -> internal container over the tailnet: %q %v", body, err)
	}
}

func TestIdentityKeptAcrossRestartAndRecreate(t *testing.T) {
	l := newLab(t)
	l.createNetwork("keep", "--opt", "ts.ephemeral=false")
	run := func() string {
		l.docker("run", "-d", "--name", "db", "--network", "keep", "--label", "ts.hostname=database", image, "sleep", "3600")
		return l.tsIP("db", "-4")
	}
	first := run()
	l.docker("restart", "-t", "1", "db")
	if got := l.tsIP("db", "-4"); got != first {
		t.Errorf("after docker restart: %s; want %s", got, first)
	}
	l.docker("rm", "-f", "db")
	if got := run(); got != first {
		t.Errorf("after rm and run again: %s; want %s", got, first)
	}
	if n := l.control.NodesByHostname("database"); len(n) != 1 {
		t.Errorf("control has %d nodes named database; want 1", len(n))
	}
	if _, err := os.Stat(l.engine.StateDir() + "/by-hostname/database/tailscaled.state"); err != nil {
		t.Errorf("state not under by-hostname/database: %v", err)
	}
}

func TestConnectDisconnectLeaveNothing(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	l.docker("network", "create", "plain") // a bridge network, the container's first
	l.docker("run", "-d", "--name", "box", "--network", "plain", image, "sleep", "3600")
	l.docker("network", "connect", "tn", "box")
	ip := l.tsIP("box", "-4")
	if out, err := l.laptop.NS.Exec(context.Background(), "busybox", "ping", "-c", "1", "-W", "5", ip); err != nil {
		t.Errorf("laptop ping after connect: %v\n%s", err, out)
	}
	// tslink status, as the operator runs it on the host.
	status := l.tslinkStatus()
	if !strings.Contains(status, "box") || !strings.Contains(status, ip) || !strings.Contains(status, "Running") || strings.Contains(status, testAuthKey) {
		t.Errorf("tslink status:\n%s", status)
	}
	// A second tslink network is refused.
	l.createNetwork("tn2")
	if out, err := l.engine.Docker(context.Background(), "network", "connect", "tn2", "box"); err == nil || !strings.Contains(out, "one tslink network") {
		t.Errorf("second tslink network: err %v, %q; want a refusal", err, out)
	}
	l.docker("network", "disconnect", "tn", "box")
	if out, _ := l.engine.Docker(context.Background(), "exec", "box", "ip", "link"); strings.Contains(out, "tailscale0") {
		t.Errorf("tailscale0 left in the container after disconnect:\n%s", out)
	}
	l.docker("rm", "-f", "box")
	l.docker("network", "rm", "tn", "tn2", "plain")
	l.docker("plugin", "disable", plugin)
	l.noLeftovers()
	if status := l.tslinkStatus(); !strings.Contains(status, "plugin is not running") {
		t.Errorf("tslink status with the plugin disabled:\n%s", status)
	}
}

func TestPluginSurvivesDockerdRestart(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	l.engine.Restart(t)
	out, err := l.engine.Docker(context.Background(), "run", "--rm", "--network", "tn", image, "ip", "-4", "-o", "addr", "show", "dev", "tailscale0")
	if err != nil || !strings.Contains(out, "inet 100.") {
		t.Fatalf("after dockerd restart: %q %v", out, err)
	}
}
