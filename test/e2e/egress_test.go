package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// TestExitNodeByLabel: the laptop offers an exit node (wired to the
// internet host, masquerading there), control approves it. `docker run
// --label ts.exit-node=laptop` gives a container whose internet traffic
// leaves through the laptop: the internet host sees the laptop's address,
// not the Docker host's; its `-p` published port still answers through
// eth1; and ts.exit-node naming a node that offers none fails the run,
// naming it.
func TestExitNodeByLabel(t *testing.T) {
	l := newLab(t)
	const laptopOnInet = "10.243.0.1"
	const server = "203.0.113.10" // the internet host, reached through the laptop or through the lab's routing
	netnstest.Run(t, "ip", "-n", l.internet.Name, "addr", "add", server+"/32", "dev", "lo")
	netnstest.Run(t, "ip", "route", "replace", server+"/32", "via", internetAddr)
	l.laptop.LinkTo(t, l.internet, laptopOnInet, "10.243.0.2", server)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := l.laptop.Tailscale(ctx, "set", "--advertise-exit-node"); err != nil {
		t.Fatalf("laptop --advertise-exit-node: %v %s", err, out)
	}
	exitRoutes := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	if err := netnstest.WaitFor(10*time.Second, func() error {
		n := l.control.NodesByHostname("laptop")
		if len(n) != 1 {
			return nil
		}
		return l.control.ApproveRoutes(n[0].NodeKey, exitRoutes)
	}); err != nil {
		t.Fatal(err)
	}
	l.createNetwork("tn")

	// A node that is no exit node: the run fails naming it.
	l.docker("run", "-d", "--name", "plain", "--network", "tn", image, "sleep", "3600")
	out, err := l.engine.Docker(ctx, "run", "--rm", "--network", "tn", "--label", "ts.exit-node=plain", image, "true")
	if err == nil || !strings.Contains(out, "exit node not offered") || !strings.Contains(out, "ts.exit-node=plain") {
		t.Errorf("run with a node that is no exit node: %v %s", err, out)
	}

	l.docker("run", "-d", "--name", "ex", "--network", "tn", "--label", "ts.exit-node=laptop", "-p", "18081:8080", image, "httpd", "-f", "-p", "8080", "-h", "/www")
	var body string
	err = netnstest.WaitFor(15*time.Second, func() (err error) {
		body, err = l.httpGetIn("ex", server, "80")
		if err == nil && !strings.Contains(body, "hello from the internet, "+laptopOnInet+":") {
			err = fmt.Errorf("the internet host saw %q", body)
		}
		return err
	})
	if err != nil {
		t.Errorf("internet through the exit node: %v; want the laptop's %s, not the host's", err, laptopOnInet)
	} else {
		t.Logf("through the exit node: %s", strings.TrimSpace(body[strings.LastIndex(body, "hello"):]))
	}
	if body, err := l.httpGetIn("plain", server, "80"); err != nil || strings.Contains(body, laptopOnInet) {
		t.Errorf("a container without the label left through the exit node, or not at all: %q %v", body, err)
	}
	// -p publishes on the host: replies leave by eth1, not the exit node.
	err = netnstest.WaitFor(10*time.Second, func() (err error) {
		body, err = httpGetFrom(l.laptop.NS, "http://"+netnstest.LabAddr+":18081/")
		return err
	})
	if err != nil || !strings.Contains(body, "hello from the container") {
		t.Errorf("published port of the exit-node container: %q %v", body, err)
	}
	if out, _ := l.engine.Docker(ctx, "exec", "ex", "ip", "rule"); !strings.Contains(out, "lookup 5372") {
		t.Errorf("exit node rules in the container:\n%s", out)
	}
	if t.Failed() {
		pid := strings.TrimSpace(l.docker("inspect", "-f", "{{.State.Pid}}", "ex"))
		out, _ := exec.Command("nsenter", "-t", pid, "-n", "sh", "-c", "ip rule; ip route show table all | grep -v local; ip -s link; nft list ruleset; sysctl -a 2>/dev/null | grep -e rp_filter -e forward").CombinedOutput()
		t.Logf("container netns:\n%s", out)
		st, _ := l.laptop.Tailscale(ctx, "status")
		t.Logf("laptop: %s", st)
		out, _ = l.laptop.NS.Exec(ctx, "sh", "-c", "ip rule; ip route show table all | grep -v local; nft list ruleset; sysctl net.ipv4.ip_forward; ip -s link")
		t.Logf("laptop netns:\n%s", out)
		t.Logf("laptop log:\n%s", grepLines(l.laptop.LogTail(400), "rop", "xit", "filter", "100.64.0."))
		b, _ := os.ReadFile(filepath.Join(l.engine.StateDir(), "by-hostname", "ex", "debug.log"))
		t.Logf("ex debug.log:\n%s", grepLines(string(b), "xit", "onfig", "drop", "ilter", "ROUTE", "route"))
	}
}
