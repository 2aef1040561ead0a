package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/test/enginetest"
	"github.com/tslink/tslink/test/netnstest"
)

// pluginPID finds this engine's tslink plugin process (the plugin runs in
// the host PID namespace, "pidhost": true).
func (l *lab) pluginPID() int {
	l.t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		env, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(env), "DOCKER_HOST="+l.engine.Host+"\x00") {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
		if strings.HasPrefix(string(cmd), "/tslink") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}

// echoContainer runs container name on network with a line echo server on
// port 7000, opens a TCP connection to it from the laptop over the tailnet,
// checks that first carries traffic, and returns the container's tailnet IP
// and the round-trip function of [lab.echoConn].
func (l *lab) echoContainer(name, network, first string) (string, func(string) error) {
	l.t.Helper()
	l.docker("run", "-d", "--name", name, "--network", network, image, "nc", "-ll", "-p", "7000", "-e", "cat")
	ip := l.tsIP(name, "-4")
	_, echo := l.echoConn(ip)
	if err := echo(first); err != nil {
		l.t.Fatalf("first round trip to %s: %v", name, err)
	}
	return ip, echo
}

// echoConn opens a TCP connection from the laptop to an echo server in the
// container and returns a function that round-trips one line on it.
func (l *lab) echoConn(ip string) (net.Conn, func(string) error) {
	l.t.Helper()
	var c net.Conn
	err := netnstest.WaitFor(15*time.Second, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err = l.laptop.NS.Dial(ctx, "tcp", net.JoinHostPort(ip, "7000"))
		return err
	})
	if err != nil {
		l.t.Fatalf("laptop -> %s:7000: %v", ip, err)
	}
	l.t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	return c, func(line string) error {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintln(c, line); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(got) != line {
			return fmt.Errorf("echo %q; want %q", got, line)
		}
		return nil
	}
}

func TestPluginRestartKeepsContainersOnTheTailnet(t *testing.T) {
	l := newLab(t)
	// Tagged, with control modelling tag ownership: a recovered node must ask
	// for the same tags, or control expires its key.
	l.control.SetTagOwners(map[string][]string{"tag:web": {"tag:web"}})
	l.createNetwork("tn", "--opt", "ts.tags=tag:web")
	ip, echo := l.echoContainer("svc", "tn", "before")
	// A served localhost-only app and MagicDNS must come back with the node.
	l.docker("run", "-d", "--name", "web", "--network", "tn", "--label", "ts.serve.80=http:8080", image, "sh", "-c", loopbackApp)
	webIP := l.tsIP("web", "-4")
	served := func() error {
		got, err := l.laptopHTTP("http://"+webIP+"/", "", 5*time.Second)
		if err == nil && !strings.HasPrefix(got, "200 hello") {
			err = fmt.Errorf("got %q", got)
		}
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		out, err := l.engine.Docker(context.Background(), "exec", "web", "nslookup", l.laptop.Hostname)
		if err != nil || !strings.Contains(out, l.laptop.IPv4(t).String()) {
			return fmt.Errorf("MagicDNS: %v: %s", err, out)
		}
		return nil
	}
	if err := netnstest.WaitFor(20*time.Second, served); err != nil {
		t.Fatal(err)
	}

	for _, how := range []string{"kill -9", "disable -f + enable", "disable -f + rm + create + enable"} {
		pid := l.pluginPID()
		if pid == 0 {
			t.Fatal("plugin process not found")
		}
		began := time.Now()
		ghost := ""
		switch how {
		case "kill -9":
			// What a first Join leaves when the plugin dies in it: a new dir
			// with its mark, a node key, tsnet's temporary state file and a
			// lock naming the dead holder. The restarted plugin removes it.
			ghost = filepath.Join(l.engine.StateDir(), "by-hostname", "ghost")
			os.MkdirAll(ghost, 0o700)
			if err := statedir.MarkFirstJoin(ghost); err != nil {
				t.Fatal(err)
			}
			for name, content := range map[string]string{statedir.StateFileName: "{}", statedir.StateFileName + ".tmp42": "{}", statedir.LockFileName: "container ghost (0123456789ab)\n"} {
				os.WriteFile(filepath.Join(ghost, name), []byte(content), 0o600)
			}
			syscall.Kill(pid, syscall.SIGKILL)
			// dockerd restarts a managed plugin whose process died.
			err := netnstest.WaitFor(15*time.Second, func() error {
				if p := l.pluginPID(); p == 0 || p == pid {
					return fmt.Errorf("no new plugin process")
				}
				return nil
			})
			if err != nil {
				t.Fatalf("dockerd did not restart the killed plugin: %v", err)
			}
		case "disable -f + enable":
			l.docker("plugin", "disable", "-f", plugin)
			l.docker("plugin", "enable", plugin)
		default: // a reinstall from the bundle, as `make plugin` does
			l.docker("plugin", "disable", "-f", plugin)
			l.docker("plugin", "rm", "-f", plugin)
			l.docker("plugin", "create", plugin, enginetest.PluginBundle(t))
			l.docker(append([]string{"plugin", "set", plugin}, l.engine.Settings()...)...)
			l.docker("plugin", "enable", plugin)
		}
		err := netnstest.WaitFor(20*time.Second, func() error { return echo("after " + how) })
		if err != nil {
			t.Fatalf("%s: the laptop's TCP connection did not survive: %v", how, err)
		}
		t.Logf("%s: established TCP connection carried traffic again %v after the plugin was stopped", how, time.Since(began).Round(time.Millisecond))
		if ghost != "" {
			if _, err := os.Stat(ghost); !os.IsNotExist(err) {
				t.Errorf("%s: the dir of a first Join the killed plugin left is still there (%v)", how, err)
			}
		}
		if got := l.tsIP("svc", "-4"); got != ip {
			t.Errorf("%s: tailnet IP %s; want %s", how, got, ip)
		}
		if err := netnstest.WaitFor(20*time.Second, served); err != nil {
			t.Errorf("%s: %v", how, err)
		}
	}
	if n := l.control.NodesByHostname("svc"); len(n) != 1 || strings.Join(n[0].Tags, ",") != "tag:web" || !n[0].Online {
		t.Errorf("after the restarts control has %+v; want one online node tagged tag:web", n)
	}
	// New containers still work, and stopping the adopted one cleans up.
	out := l.docker("run", "--rm", "--network", "tn", image, "ip", "-4", "-o", "addr", "show", "dev", "tailscale0")
	if !strings.Contains(out, "inet 100.") {
		t.Errorf("new container after recovery: %q", out)
	}
	l.docker("rm", "-f", "svc", "web")
	l.docker("network", "rm", "tn")
	l.noLeftovers()
}

// TestPluginUpgradeThroughRegistry installs the plugin from a registry and
// upgrades it to a new version the way users do (`docker plugin disable -f`,
// `docker plugin upgrade`, `docker plugin enable`): the running container
// keeps its tailnet IP and its established TCP connection.
func TestPluginUpgradeThroughRegistry(t *testing.T) {
	l := newLab(t)
	enginetest.StartRegistry(t)
	ref := func(v string) string { return enginetest.RegistryAddr + "/tslink:" + v }
	// Publish v1 and v2 (different binaries), as a release process would.
	for _, v := range []string{"v1", "v2"} {
		l.docker("plugin", "create", ref(v), enginetest.PluginBundleVersion(t, v))
		l.docker("plugin", "push", ref(v))
		l.docker("plugin", "rm", ref(v))
	}
	// Replace the harness's plugin with v1 from the registry, under the
	// same name.
	l.docker("plugin", "disable", "-f", plugin)
	l.docker("plugin", "rm", plugin)
	l.docker(append([]string{"plugin", "install", "--grant-all-permissions", "--disable", "--alias", plugin, ref("v1")}, l.engine.Settings()...)...)
	l.docker("plugin", "enable", plugin)

	l.createNetwork("tn")
	ip, echo := l.echoContainer("svc", "tn", "on v1")
	began := time.Now()
	l.docker("plugin", "disable", "-f", plugin)
	l.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", plugin, ref("v2"))
	// Docker 20.10 keeps the settings in `plugin inspect` across an upgrade
	// but mounts the new manifest's default source: set them again.
	l.docker(append([]string{"plugin", "set", plugin}, l.engine.Settings()...)...)
	l.docker("plugin", "enable", plugin)
	if err := netnstest.WaitFor(20*time.Second, func() error { return echo("on v2") }); err != nil {
		t.Fatalf("TCP connection across the upgrade: %v", err)
	}
	t.Logf("upgrade v1 -> v2: the established connection carried traffic again %v after disable began", time.Since(began).Round(time.Millisecond))
	if got := l.tsIP("svc", "-4"); got != ip {
		t.Errorf("IP after upgrade %s; want %s", got, ip)
	}
	if !strings.Contains(l.engine.Log(), "version=v2") {
		t.Errorf("the plugin running after the upgrade is not v2")
	}
}

// TestDamagedStateAfterPluginRestart damages what a restarted plugin recovers
// from: a node whose state dir was deleted logs in afresh and its container
// is back on the tailnet; a node whose state file is truncated cannot start,
// and `tslink status` shows it with the error instead of leaving it out.
func TestDamagedStateAfterPluginRestart(t *testing.T) {
	l := newLab(t)
	l.createNetwork("tn")
	l.echoContainer("gone", "tn", "before")
	l.docker("run", "-d", "--name", "broken", "--network", "tn", image, "sleep", "3600")
	l.tsIP("broken", "-4")

	l.docker("plugin", "disable", "-f", plugin)
	byHost := filepath.Join(l.engine.StateDir(), "by-hostname")
	if err := os.RemoveAll(filepath.Join(byHost, "gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(byHost, "broken", "tailscaled.state"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l.docker("plugin", "enable", plugin)

	err := netnstest.WaitFor(30*time.Second, func() error {
		// A fresh login may bring a new address: ask the container.
		_, after, ok := strings.Cut(l.docker("exec", "gone", "ip", "-4", "-o", "addr", "show", "dev", "tailscale0"), "inet ")
		if !ok {
			return fmt.Errorf("no IPv4 on tailscale0")
		}
		ip, _, _ := strings.Cut(after, "/")
		return l.laptopDial(net.JoinHostPort(ip, "7000"))
	})
	if err != nil {
		t.Errorf("container whose state dir was deleted is not back on the tailnet: %v\n%s", err, l.tslinkStatus())
	}
	err = netnstest.WaitFor(30*time.Second, func() error {
		for _, line := range strings.Split(l.tslinkStatus(), "\n") {
			if strings.HasPrefix(line, "broken ") && strings.Contains(line, "NotRecovered") && strings.Contains(line, "tailscaled.state") {
				return nil
			}
		}
		return fmt.Errorf("no NotRecovered line for broken")
	})
	if err != nil {
		t.Errorf("tslink status: %v\n%s", err, l.tslinkStatus())
	}
	// The restarted plugin returns its start-up garbage after each recovery
	// round, not only when a container leaves.
	err = netnstest.WaitFor(15*time.Second, func() error {
		if v := l.pluginVars(); v.MemoryReleases == 0 {
			return fmt.Errorf("no memory release since the restart (RSS %d KiB)", v.RSSKiB)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	l.docker("rm", "-f", "gone", "broken")
	err = netnstest.WaitFor(20*time.Second, func() error {
		if out := l.tslinkStatus(); strings.Contains(out, "broken") {
			return fmt.Errorf("still listed:\n%s", out)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	l.docker("network", "rm", "tn")
	l.noLeftovers()
}
