package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tslink/tslink/test/enginetest"
	"github.com/tslink/tslink/test/netnstest"
)

// probeLoop is what the container runs while the plugin goes away and comes
// back: once a second it resolves an internet name through Docker's DNS
// (printing ok or fail with the second) and pings the laptop's tailnet
// addresses, so tailnet packets are on offer to eth1 the whole time. It ends
// when /tmp/stop exists and at least 30 lookups were made.
const probeLoop = `rm -f /tmp/stop; n=0; while [ $n -lt 30 ] || [ ! -e /tmp/stop ]; do
  ping -c1 -W1 "$1" >/dev/null 2>&1 & ping -6 -c1 -W1 "$2" >/dev/null 2>&1 &
  if nslookup www.example.test 2>/dev/null | grep -q ` + internetAddr + `; then echo "ok $(date +%s)"; else echo "fail $(date +%s)"; fi
  n=$((n+1)); sleep 1
done; wait`

// startProbeLoop runs probeLoop in ctr and returns a function that stops it
// and returns how many lookups succeeded, of how many, and the failures.
func (l *lab) startProbeLoop(ctr string, laptop4, laptop6 netip.Addr) func() (ok, total int, failed []string) {
	out := make(chan string, 1)
	go func() {
		s, _ := l.engine.Docker(context.Background(), "exec", ctr, "sh", "-c", probeLoop, "probe", laptop4.String(), laptop6.String())
		out <- s
	}()
	return func() (int, int, []string) {
		l.docker("exec", ctr, "touch", "/tmp/stop")
		var ok, total int
		var failed []string
		for _, line := range strings.Split(<-out, "\n") {
			switch {
			case strings.HasPrefix(line, "ok "):
				ok++
				total++
			case strings.HasPrefix(line, "fail "):
				total++
				failed = append(failed, line)
			}
		}
		return ok, total, failed
	}
}

// noRouteFrom checks that connecting from ctr to dst fails at once because
// dst is unreachable, rather than being sent anywhere.
func (l *lab) noRouteFrom(ctr string, dst netip.AddrPort) error {
	began := time.Now()
	out, err := l.engine.Docker(context.Background(), "exec", ctr, "nc", "-w", "3", dst.Addr().String(), fmt.Sprint(dst.Port()))
	took := time.Since(began)
	if err == nil || !strings.Contains(out, "No route to host") || took > 3*time.Second {
		return fmt.Errorf("nc %v after %v: %v %q; want No route to host at once", dst, took.Round(time.Millisecond), err, out)
	}
	return nil
}

// TestPluginAwayKeepsInternetDNSAndTailnetOffNAT: while the plugin is away
// (disabled for 30 s, killed 5 times in a row, upgraded to another build), a
// running container keeps resolving internet names through the host's
// resolver, its tailnet destinations are unreachable (nothing for them leaves
// through eth1 to Docker's NAT), and afterwards it is back on the tailnet
// with the same address.
func TestPluginAwayKeepsInternetDNSAndTailnetOffNAT(t *testing.T) {
	l := newLabWith(t, []string{"--dns", internetAddr})
	enginetest.StartRegistry(t)
	ref := func(v string) string { return enginetest.RegistryAddr + "/tslink:" + v }
	// v1 is the harness's build (Docker refuses a second plugin with the
	// same content, so the harness's goes first); v2 another build of the
	// same source.
	l.docker("plugin", "disable", "-f", plugin)
	l.docker("plugin", "rm", plugin)
	for v, bundle := range map[string]string{"v1": enginetest.PluginBundle(t), "v2": enginetest.PluginBundleVersion(t, "v2")} {
		l.docker("plugin", "create", ref(v), bundle)
		l.docker("plugin", "push", ref(v))
		l.docker("plugin", "rm", ref(v))
	}
	l.docker(append([]string{"plugin", "install", "--grant-all-permissions", "--disable", "--alias", plugin, ref("v1")}, l.engine.Settings()...)...)
	l.docker("plugin", "enable", plugin)

	l.createNetwork("tn")
	ip, echo := l.echoContainer("svc", "tn", "before")
	laptop4, laptop6 := l.laptop.IPv4(t), l.laptop.IPv6(t)
	gwbridge := netnstest.StartCapture(t, "docker_gwbridge")
	awayChecks := func(how string) {
		for _, dst := range []netip.AddrPort{
			netip.AddrPortFrom(laptop4, 7000),
			netip.AddrPortFrom(laptop6, 7000),
			netip.MustParseAddrPort("100.100.100.100:53"),
		} {
			if err := l.noRouteFrom("svc", dst); err != nil {
				t.Errorf("%s: %v", how, err)
			}
		}
	}

	scenarios := []struct {
		how string
		// away makes the plugin go away and returns when it was last told
		// to come back (enable, or dockerd's restart after the last kill).
		away func() (returning time.Time)
	}{
		{"disable -f, 30 s, enable", func() time.Time {
			l.docker("plugin", "disable", "-f", plugin)
			awayChecks("disabled")
			time.Sleep(30 * time.Second)
			returning := time.Now()
			l.docker("plugin", "enable", plugin)
			return returning
		}},
		{"crash loop: killed 5 times, 2 s apart", func() time.Time {
			var lastKill time.Time
			last := 0
			for i := range 5 {
				var pid int
				err := netnstest.WaitFor(15*time.Second, func() error {
					if pid = l.pluginPID(); pid == 0 || pid == last {
						return fmt.Errorf("no new plugin process")
					}
					return nil
				})
				if err != nil {
					t.Fatalf("kill %d: dockerd did not restart the plugin: %v", i+1, err)
				}
				syscall.Kill(pid, syscall.SIGKILL)
				last, lastKill = pid, time.Now()
				if i < 4 {
					time.Sleep(2 * time.Second)
				}
			}
			return lastKill
		}},
		{"upgrade v1 -> v2", func() time.Time {
			l.docker("plugin", "disable", "-f", plugin)
			awayChecks("disabled for the upgrade")
			l.docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", plugin, ref("v2"))
			l.docker(append([]string{"plugin", "set", plugin}, l.engine.Settings()...)...)
			returning := time.Now()
			l.docker("plugin", "enable", plugin)
			return returning
		}},
	}
	for _, sc := range scenarios {
		stop := l.startProbeLoop("svc", laptop4, laptop6)
		time.Sleep(time.Second)
		dnsOut := len(gwbridge.ToPort(syscall.IPPROTO_UDP, 53))
		began := time.Now()
		returned := sc.away()
		err := netnstest.WaitFor(60*time.Second, func() error { return echo("after " + sc.how) })
		back := time.Now()
		if err != nil {
			t.Errorf("%s: not back on the tailnet: %v", sc.how, err)
		}
		time.Sleep(3 * time.Second) // DNS once the node answers it again
		ok, total, failed := stop()
		t.Logf("%s: %d of %d lookups answered (%v); tailnet traffic back %v after the plugin was told to return (enable, or the last kill), %v after it went away",
			sc.how, ok, total, failed, back.Sub(returned).Round(100*time.Millisecond), back.Sub(began).Round(100*time.Millisecond))
		if total < 30 || (total-ok)*30 > total {
			t.Errorf("%s: %d of %d internet lookups answered; want at least 29 of 30 (failed: %v)", sc.how, ok, total, failed)
		}
		if len(gwbridge.ToPort(syscall.IPPROTO_UDP, 53)) == dnsOut {
			t.Errorf("%s: no DNS query left through eth1 while the plugin was away", sc.how)
		}
		if leaked := gwbridge.To(netnstest.TailnetPrefixes...); len(leaked) > 0 {
			t.Fatalf("%s: tailnet packets left through eth1 (docker_gwbridge): %v", sc.how, leaked)
		}
		if got := l.tsIP("svc", "-4"); got != ip {
			t.Errorf("%s: tailnet IP %s; want %s", sc.how, got, ip)
		}
	}
	if !strings.Contains(l.engine.Log(), "version=v2") {
		t.Errorf("the plugin running after the upgrade is not v2")
	}
	// MagicDNS through Docker's DNS is back too.
	out, err := l.engine.Docker(context.Background(), "exec", "svc", "nslookup", l.laptop.Hostname)
	if err != nil || !strings.Contains(out, laptop4.String()) {
		t.Errorf("MagicDNS after the plugin came back: %v %s", err, out)
	}
}
