package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

func TestContainerIsATailnetNode(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	// Join asks the Docker API nothing: the plugin's only requests are the
	// pings that end once the engine serves its API.
	var apiBefore uint64
	if err := netnstest.WaitFor(10*time.Second, func() error {
		v := l.pluginVars()
		apiBefore = v.DockerAPIRequests
		if v.EngineRestoring {
			return context.DeadlineExceeded
		}
		return nil
	}); err != nil {
		t.Fatalf("the plugin still counts the engine as restoring: %+v", l.pluginVars())
	}
	// The first instruction prints tailscale0's address, then httpd serves.
	l.docker("run", "-d", "--name", "web", "--network", "tn", image, "sh", "-c",
		"ip -4 -o addr show dev tailscale0; ip -4 route show dev tailscale0; exec httpd -f -p 8080 -h /www")
	logs := ""
	netnstest.WaitFor(5*time.Second, func() error {
		logs = l.docker("logs", "web")
		if !strings.Contains(logs, "100.100.100.100 dev tailscale0") {
			return context.DeadlineExceeded
		}
		return nil
	})
	if !strings.Contains(logs, "inet 100.") || !strings.Contains(logs, "100.100.100.100 dev tailscale0") {
		t.Fatalf("at the first instruction tailscale0 had no 100.x address and route:\n%s", logs)
	}
	ip4 := l.tsIP("web", "-4")
	ip6 := l.tsIP("web", "-6")
	nodes := l.control.NodesByHostname("web")
	if len(nodes) != 1 || nodes[0].IPs[0].String() != ip4 {
		t.Fatalf("control's nodes named web: %+v; want one with %s", nodes, ip4)
	}

	// Laptop -> container: ping and HTTP over the tailnet, IPv4 and IPv6.
	if out, err := l.laptop.NS.Exec(context.Background(), "busybox", "ping", "-c", "1", "-W", "5", ip4); err != nil {
		t.Errorf("laptop ping %s: %v\n%s", ip4, err, out)
	}
	for _, u := range []string{"http://" + ip4 + ":8080/", "http://[" + ip6 + "]:8080/"} {
		var body string
		err := netnstest.WaitFor(15*time.Second, func() (err error) {
			body, err = httpGetFrom(l.laptop.NS, u)
			return err
		})
		if err != nil || !strings.Contains(body, "hello from the container") {
			t.Errorf("laptop GET %s: %q %v", u, body, err)
		}
	}

	// Container -> laptop over the tailnet; container -> internet via NAT.
	lln := l.laptop.NS.Listen(t, "tcp", ":9090")
	go serveHello(lln, "hello from the laptop")
	laptop4 := l.laptop.IPv4(t).String()
	if out, err := l.httpGetIn("web", laptop4, "9090"); err != nil || !strings.Contains(out, "hello from the laptop") {
		t.Errorf("container -> laptop: %q %v", out, err)
	}
	if out, err := l.httpGetIn("web", internetAddr, "80"); err != nil || !strings.Contains(out, "hello from the internet") {
		t.Errorf("container -> internet: %q %v", out, err)
	}

	// Stop: the ephemeral node logs out.
	before := l.control.RegisterRequests()
	l.docker("stop", "-t", "1", "web")
	if got := l.control.RegisterRequests() - before; got < 1 {
		t.Errorf("no logout reached control on docker stop")
	}
	if n := l.control.NodesByHostname("web"); len(n) != 0 {
		t.Errorf("ephemeral node still at control after docker stop (control deletes it on logout): %+v", n)
	}
	l.docker("rm", "web")
	if v := l.pluginVars(); v.DockerAPIRequests != apiBefore {
		t.Errorf("the plugin made %d Docker API requests while a container joined and left", v.DockerAPIRequests-apiBefore)
	}
	l.docker("network", "rm", "tn")
	l.noLeftovers()
	if strings.Contains(l.engine.Log(), testAuthKey) {
		t.Errorf("the auth key appears in dockerd's log")
	}
}
