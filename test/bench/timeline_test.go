package bench

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStartTimeline (TSLINK_BENCH_TIMELINE=1) follows single tslink
// containers from `docker run -d` to the laptop's first HTTP answer, to see
// where the time between the two goes: control registration, the laptop's
// netmap, the peer's DERP home and endpoints there, the first answer.
func TestStartTimeline(t *testing.T) {
	if os.Getenv("TSLINK_BENCH_TIMELINE") != "1" {
		t.Skip("set TSLINK_BENCH_TIMELINE=1 to trace single container starts")
	}
	l := newLab(t)
	for i := range 4 {
		// Odd rounds probe HTTP only once `docker run -d` returned, as a
		// user would; even rounds from the moment control has the address.
		probeAfterRun := i%2 == 1
		name := fmt.Sprintf("tl-%d", i)
		t0 := time.Now()
		var mu sync.Mutex
		events := map[string]time.Duration{}
		mark := func(ev string) {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := events[ev]; !ok {
				events[ev] = time.Since(t0)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		returned := make(chan struct{})
		go func() {
			l.engine.Docker(ctx, "run", "-d", "--name", name, "--network", tslinkNet, image, "httpd", "-f", "-p", "8080", "-h", "/www")
			mark("docker run -d returned")
			close(returned)
		}()
		for ctx.Err() == nil {
			ip := l.tailnetIP(name)
			if ip != "" {
				mark("registered at control")
			}
			for _, n := range l.control.NodesByHostname(name) {
				if n.Online {
					mark("online at control (map poll open)")
				}
			}
			sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
			out, err := l.laptop.Tailscale(sctx, "status", "--json")
			scancel()
			if err == nil {
				for _, line := range []struct{ ev, needle string }{
					{"in the laptop's status", `"HostName": "` + name + `"`},
				} {
					if strings.Contains(out, line.needle) {
						mark(line.ev)
						peer := out[strings.Index(out, line.needle):]
						peer = peer[:cmp.Or(strings.Index(peer, "\n    }"), len(peer))]
						if strings.Contains(peer, `"Relay": "local"`) {
							mark("laptop knows its DERP home")
						}
						if strings.Contains(peer, `"Addrs": [`) {
							mark("laptop knows its endpoints")
						}
						if strings.Contains(peer, `"Online": true`) {
							mark("online in the laptop's status")
						}
					}
				}
			}
			probe := true
			if probeAfterRun {
				select {
				case <-returned:
				default:
					probe = false
				}
			}
			if ip != "" && probe && httpHello(ctx, l.laptop.NS.Dial, net.JoinHostPort(ip, "8080")) == nil {
				mark("answers HTTP from the laptop")
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		keys := make([]string, 0, len(events))
		for k := range events {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(events[a], events[b]) })
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "\n  %6.2fs  %s", events[k].Seconds(), k)
		}
		for _, line := range strings.Split(l.engine.Log(), "\n") {
			if strings.Contains(line, "node up") && strings.Contains(line, "hostname="+name+" ") {
				if i := strings.Index(line, "took="); i >= 0 {
					fmt.Fprintf(&b, "\n  (plugin: Join brought the node up in %s)", strings.Fields(line[i+5:])[0])
				}
			}
		}
		when := "from the moment control had its address"
		if probeAfterRun {
			when = "once docker run -d returned"
		}
		t.Logf("%s, probed %s:%s", name, when, b.String())
		l.engine.Docker(context.Background(), "rm", "-f", name)
		time.Sleep(2 * time.Second)
	}
}
