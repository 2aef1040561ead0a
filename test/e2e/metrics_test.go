package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/tslink/tslink/test/enginetest"
	"github.com/tslink/tslink/test/netnstest"
)

// metricsPort is where the test's plugin serves metrics (TSLINK_METRICS
// given as a bare port: loopback of the test's own network namespace, where
// its dockerd and plugin run).
const metricsPort = "9595"

// scrape fetches /metrics from the plugin's TCP listener and returns its
// samples as `name{label="value",…}` (labels sorted by name) → value.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://127.0.0.1:" + metricsPort + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s\n%s", res.Status, b)
	}
	return parseSamples(t, b)
}

func parseSamples(t *testing.T, text []byte) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parsing metrics: %v\n%s", err, text)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := name
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			case m.GetUntyped() != nil:
				out[key] = m.GetUntyped().GetValue()
			}
		}
	}
	return out
}

// sumPrefix adds the samples whose key starts with prefix.
func sumPrefix(m map[string]float64, prefix string) float64 {
	var sum float64
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			sum += v
		}
	}
	return sum
}

type healthAnswer struct {
	code int
	body struct {
		Healthy    bool `json:"healthy"`
		Nodes      int  `json:"nodes"`
		NotRunning []struct {
			Container, Hostname, State string
		} `json:"notRunning"`
	}
	raw string
}

func health(t *testing.T) healthAnswer {
	t.Helper()
	res, err := http.Get("http://127.0.0.1:" + metricsPort + "/healthz")
	if err != nil {
		t.Fatalf("healthz: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	h := healthAnswer{code: res.StatusCode, raw: string(b)}
	if err := json.Unmarshal(b, &h.body); err != nil {
		t.Fatalf("healthz %s: %v", b, err)
	}
	return h
}

// TestMetricsAndHealth scrapes the plugin as Prometheus would: a node's
// state, peers and traffic with the laptop, the join and failure counters,
// the health endpoint going 503 when a node's key expires; the same on the
// status socket; and `tslink status --watch` until Ctrl-C.
func TestMetricsAndHealth(t *testing.T) {
	l := newLab(t, "TSLINK_METRICS="+metricsPort)
	l.createNetwork("tn")
	if h := health(t); h.code != http.StatusOK || !h.body.Healthy || h.body.Nodes != 0 {
		t.Errorf("health with no nodes: %d %s; want 200", h.code, h.raw)
	}
	l.docker("run", "-d", "--name", "web", "--network", "tn", image, "sleep", "3600")
	ip4 := l.tsIP("web", "-4")
	const node = `{container="web",node="web"}`
	var m map[string]float64
	if err := netnstest.WaitFor(20*time.Second, func() error {
		m = scrape(t)
		if m["tslink_node_running"+node] != 1 || m[`tslink_node_state{container="web",node="web",state="Running"}`] != 1 || m["tslink_node_peers"+node] < 1 {
			return fmt.Errorf("running %v, peers %v", m["tslink_node_running"+node], m["tslink_node_peers"+node])
		}
		return nil
	}); err != nil {
		t.Fatalf("node web in the metrics: %v", err)
	}
	if m["tslink_joins_total"] != 1 || m[`tslink_join_duration_seconds{result="ok"}_count`] != 1 || m[`tslink_nodes{state="Running"}`] != 1 {
		t.Errorf("joins %v, join latency samples %v, nodes Running %v; want 1, 1, 1", m["tslink_joins_total"], m[`tslink_join_duration_seconds{result="ok"}_count`], m[`tslink_nodes{state="Running"}`])
	}
	if m["process_resident_memory_bytes"] < 1<<20 || m["go_goroutines"] < 10 {
		t.Errorf("process metrics: rss %v, goroutines %v", m["process_resident_memory_bytes"], m["go_goroutines"])
	}
	for k := range m {
		if strings.Contains(k, "100.") || strings.Contains(k, "laptop") {
			t.Errorf("a per-peer series: %s", k)
		}
	}

	// Real traffic with the laptop raises the node's byte counters.
	rxBefore := sumPrefix(m, `tslink_node_received_bytes_total{container="web",node="web"`)
	txBefore := sumPrefix(m, `tslink_node_sent_bytes_total{container="web",node="web"`)
	const pings, size = 5, 1000
	if out, err := l.laptop.NS.Exec(context.Background(), "busybox", "ping", "-c", fmt.Sprint(pings), "-i", "0.2", "-s", fmt.Sprint(size), "-W", "5", ip4); err != nil {
		t.Fatalf("laptop ping %s: %v\n%s", ip4, err, out)
	}
	m = scrape(t)
	rx := sumPrefix(m, `tslink_node_received_bytes_total{container="web",node="web"`)
	tx := sumPrefix(m, `tslink_node_sent_bytes_total{container="web",node="web"`)
	t.Logf("web's WireGuard bytes: received %v → %v, sent %v → %v; peers by path: direct %v, derp %v; last handshake %vs ago",
		rxBefore, rx, txBefore, tx, m[`tslink_node_peer_paths{container="web",node="web",path="direct"}`], m[`tslink_node_peer_paths{container="web",node="web",path="derp"}`], m["tslink_node_last_handshake_age_seconds"+node])
	if rx-rxBefore < pings*size || tx-txBefore < pings*size {
		t.Errorf("after %d pings of %d bytes: received +%v, sent +%v; want at least %d each", pings, size, rx-rxBefore, tx-txBefore, pings*size)
	}
	if age, ok := m["tslink_node_last_handshake_age_seconds"+node]; !ok || age > 60 {
		t.Errorf("last handshake age %v (present %v); want a recent handshake", age, ok)
	}
	if m[`tslink_node_peer_paths{container="web",node="web",path="direct"}`]+m[`tslink_node_peer_paths{container="web",node="web",path="derp"}`] < 1 {
		t.Errorf("no active peer path after the pings")
	}

	// A bad label fails docker run and is counted with its reason.
	if out, err := l.engine.Docker(context.Background(), "run", "--rm", "--network", "tn", "--label", "ts.hostname=-bad-", image, "true"); err == nil {
		t.Fatalf("docker run with a bad ts.hostname succeeded: %s", out)
	}
	m = scrape(t)
	if m[`tslink_join_failures_total{reason="bad_label"}`] != 1 || m["tslink_joins_total"] != 1 || m[`tslink_join_duration_seconds{result="failed"}_count`] != 1 {
		t.Errorf("after a bad label: failures{bad_label} %v, joins %v, failed join latency samples %v; want 1, 1, 1",
			m[`tslink_join_failures_total{reason="bad_label"}`], m["tslink_joins_total"], m[`tslink_join_duration_seconds{result="failed"}_count`])
	}

	// The status socket serves the same.
	b, err := l.engine.PluginGet("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if s := parseSamples(t, b); s["tslink_node_running"+node] != 1 || s[`tslink_join_failures_total{reason="bad_label"}`] != 1 {
		t.Errorf("status socket /metrics lacks web Running or the bad label failure")
	}
	if h := health(t); h.code != http.StatusOK || !h.body.Healthy || h.body.Nodes != 1 {
		t.Errorf("health with web Running: %d %s; want 200", h.code, h.raw)
	}

	// `tslink status --watch` refreshes until Ctrl-C, then exits 0.
	bin := filepath.Join(enginetest.PluginBundle(t), "rootfs", "tslink")
	var watchOut bytes.Buffer
	watch := exec.Command(bin, "status", "--watch", "--interval", "200ms", "--state-dir", l.engine.StateDir())
	watch.Stdout, watch.Stderr = &watchOut, &watchOut
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	watch.Process.Signal(syscall.SIGINT)
	if err := watch.Wait(); err != nil {
		t.Errorf("tslink status --watch after Ctrl-C: %v; want exit 0\n%s", err, watchOut.String())
	}
	if n := strings.Count(watchOut.String(), "tslink status every 200ms"); n < 3 || !strings.Contains(watchOut.String(), ip4) {
		t.Errorf("tslink status --watch refreshed %d times in 1.2 s, or without web's %s:\n%s", n, ip4, watchOut.String())
	}

	// The admin expires web's node key: web is NeedsLogin, health 503.
	nk := l.control.NodesByHostname("web")[0].NodeKey
	if err := l.control.SetNodeKeyExpiry(nk, time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	var h healthAnswer
	if err := netnstest.WaitFor(20*time.Second, func() error {
		if h = health(t); h.code != http.StatusServiceUnavailable {
			return fmt.Errorf("%d %s", h.code, h.raw)
		}
		return nil
	}); err != nil {
		t.Fatalf("health after web's key expired: %v; want 503", err)
	}
	if h.body.Healthy || len(h.body.NotRunning) != 1 || h.body.NotRunning[0].Hostname != "web" || h.body.NotRunning[0].Container != "web" || h.body.NotRunning[0].State != "NeedsLogin" {
		t.Errorf("health body %s; want web NeedsLogin listed", h.raw)
	}
	if m = scrape(t); m[`tslink_nodes{state="NeedsLogin"}`] != 1 || m["tslink_node_running"+node] != 0 {
		t.Errorf("after the expiry: nodes{NeedsLogin} %v, web running %v; want 1, 0", m[`tslink_nodes{state="NeedsLogin"}`], m["tslink_node_running"+node])
	}
	l.docker("rm", "-f", "web")
	if err := netnstest.WaitFor(10*time.Second, func() error {
		if h := health(t); h.code != http.StatusOK {
			return fmt.Errorf("%d %s", h.code, h.raw)
		}
		return nil
	}); err != nil {
		t.Errorf("health once web is gone: %v; want 200", err)
	}
	l.docker("network", "rm", "tn")
	l.noLeftovers()

	// A bad address fails the plugin's start, naming the setting and the form.
	l.docker("plugin", "disable", plugin)
	l.docker("plugin", "set", plugin, "TSLINK_METRICS=localhost:9595")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	began := time.Now()
	out, err := l.engine.Docker(ctx, "plugin", "enable", plugin)
	t.Logf("docker plugin enable with TSLINK_METRICS=localhost:9595: %v after %v: %s", err, time.Since(began).Round(time.Millisecond), strings.TrimSpace(out))
	if err == nil {
		t.Errorf("the plugin started with TSLINK_METRICS=localhost:9595")
	}
	if log := l.engine.Log(); !strings.Contains(log, `plugin setting TSLINK_METRICS=\"localhost:9595\"`) && !strings.Contains(log, `plugin setting TSLINK_METRICS="localhost:9595"`) || !strings.Contains(log, "want a port") {
		t.Errorf("dockerd's log does not have the plugin's error naming TSLINK_METRICS and the accepted form:\n%s", l.engine.LogTail(20))
	}
}
