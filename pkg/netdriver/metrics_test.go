package netdriver

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/tslink/tslink/pkg/enginestate"
	"github.com/tslink/tslink/stack"
)

// metricNode is a fake node with a settable state and traffic; while wedge
// is open its Traffic blocks (a node whose LocalBackend hangs).
type metricNode struct {
	mu      sync.Mutex
	state   string
	traffic stack.Traffic
	wedge   chan struct{}
	delay   time.Duration // how long Traffic takes
}

func (n *metricNode) Addrs() (v4, v6 netip.Addr) {
	return netip.MustParseAddr("100.64.0.9"), netip.Addr{}
}
func (n *metricNode) Attach(string) error      { return nil }
func (n *metricNode) KeepIPv6(context.Context) {}
func (n *metricNode) Close(context.Context) error {
	return nil
}
func (n *metricNode) Status() stack.Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return stack.Status{State: n.state}
}
func (n *metricNode) Traffic(ctx context.Context) (stack.Traffic, error) {
	if n.wedge != nil {
		<-n.wedge // ignores ctx, as a wedged backend would
	}
	time.Sleep(n.delay)
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.traffic, nil
}
func (n *metricNode) setState(s string) { n.mu.Lock(); n.state = s; n.mu.Unlock() }

// metricNodes starts the metricNode given for each hostname, or fails with
// the error given for it.
type metricNodes struct {
	nodes map[string]*metricNode
	errs  map[string]error
}

func (f *metricNodes) Start(_ context.Context, cfg stack.Config) (Node, error) {
	if err := f.errs[cfg.Hostname]; err != nil {
		return nil, err
	}
	return f.nodes[cfg.Hostname], nil
}

func newMetricsDriver(t *testing.T, ctrs map[string]*enginestate.Container, nodes *metricNodes) *Driver {
	t.Helper()
	return New(Config{StateRoot: t.TempDir(), Engine: &fakeEngine{ctrs: ctrs}, Nodes: nodes})
}

// gather scrapes d's collector and returns the samples as "name{l=v,…}" →
// value, labels sorted by name (as the registry sorts them).
func gather(t *testing.T, d *Driver) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(d.MetricsCollector())
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			key := f.GetName()
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			out[key] = value(f.GetType(), m)
		}
	}
	return out
}

func value(t dto.MetricType, m *dto.Metric) float64 {
	switch t {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetUntyped().GetValue()
}

func TestJoinMetrics(t *testing.T) {
	nodes := &metricNodes{
		nodes: map[string]*metricNode{"web": {state: "Running"}},
		errs: map[string]error{
			"denied":  &stack.NodeError{Kind: stack.ErrAuthKeyRejected, Detail: "invalid key"},
			"offline": fmt.Errorf("starting: %w", stack.ErrControlUnreachable),
		},
	}
	d := newMetricsDriver(t, map[string]*enginestate.Container{
		"ep1": ctr("c1", "web", nil),
		"ep2": ctr("c2", "bad", map[string]string{"ts.hostname": "-no-"}),
		"ep3": ctr("c3", "other", map[string]string{"ts.hostname": "web"}),
		"ep4": ctr("c4", "denied", nil),
		"ep5": ctr("c5", "offline", nil),
		"ep6": ctr("c6", "web2", map[string]string{"ts.bogus": "1"}),
	}, nodes)
	if _, err := d.Join(joinReq("ep1")); err != nil {
		t.Fatalf("Join: %v", err)
	}
	defer d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
	for ep, want := range map[string]string{"ep2": ReasonBadLabel, "ep3": ReasonHostnameInUse, "ep4": ReasonAuthKeyRejected, "ep5": ReasonControlUnreachable, "ep6": ReasonBadLabel} {
		key := "tslink_join_failures_total{reason=" + want + "}"
		before := gather(t, d)[key]
		_, err := d.Join(joinReq(ep))
		if err == nil {
			t.Fatalf("Join %s succeeded", ep)
		}
		if got := gather(t, d)[key]; got != before+1 {
			t.Errorf("Join %s failed with %q: %s went %v → %v; want +1", ep, err, key, before, got)
		}
	}
	m := gather(t, d)
	for k, want := range map[string]float64{
		"tslink_joins_total":                                 1,
		"tslink_join_failures_total{reason=bad_label}":       2,
		"tslink_join_failures_total{reason=hostname_in_use}": 1,
		"tslink_join_failures_total{reason=other}":           0,
		"tslink_join_duration_seconds{result=ok}":            1,
		"tslink_join_duration_seconds{result=failed}":        5,
		"tslink_nodes{state=Running}":                        1,
		"tslink_nodes{state=NeedsLogin}":                     0,
		"tslink_node_running{container=web,node=web}":        1,
		"tslink_recoveries_total{kind=plugin_restart}":       0,
	} {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v); want %v", k, got, ok, want)
		}
	}
	// The bounded reason set: every failure reason is always exported.
	for _, r := range joinFailureReasons {
		if _, ok := m["tslink_join_failures_total{reason="+r+"}"]; !ok {
			t.Errorf("no tslink_join_failures_total{reason=%s}", r)
		}
	}
}

func TestNodeMetricsAndHealth(t *testing.T) {
	shake := time.Now().Add(-30 * time.Second)
	web := &metricNode{state: "Running", traffic: stack.Traffic{
		Peers:         3,
		PeersByPath:   map[string]int{stack.PathDirect: 1, stack.PathDERP: 1, stack.PathIdle: 1},
		LastHandshake: shake,
		ReceivedBytes: map[string]float64{"direct_ipv4": 1000, "derp": 200},
		SentBytes:     map[string]float64{"direct_ipv4": 3000},
	}}
	db := &metricNode{state: "Running"}
	d := newMetricsDriver(t, map[string]*enginestate.Container{
		"ep1": ctr("c1", "web", nil),
		"ep2": ctr("c2", "db-1", map[string]string{"ts.hostname": "db"}),
	}, &metricNodes{nodes: map[string]*metricNode{"web": web, "db": db}})
	for _, ep := range []string{"ep1", "ep2"} {
		if _, err := d.Join(joinReq(ep)); err != nil {
			t.Fatalf("Join %s: %v", ep, err)
		}
		defer d.Leave(&network.LeaveRequest{EndpointID: ep})
	}
	if h := d.Health(context.Background()); !h.Healthy || h.Nodes != 2 || len(h.NotRunning) != 0 {
		t.Errorf("health with every node Running: %+v", h)
	}
	m := gather(t, d)
	for k, want := range map[string]float64{
		"tslink_node_state{container=web,node=web,state=Running}":                   1,
		"tslink_node_state{container=db-1,node=db,state=Running}":                   1,
		"tslink_nodes{state=Running}":                                               2,
		"tslink_node_peers{container=web,node=web}":                                 3,
		"tslink_node_peer_paths{container=web,node=web,path=direct}":                1,
		"tslink_node_peer_paths{container=web,node=web,path=derp}":                  1,
		"tslink_node_peer_paths{container=web,node=web,path=peer_relay}":            0,
		"tslink_node_received_bytes_total{container=web,node=web,path=direct_ipv4}": 1000,
		"tslink_node_received_bytes_total{container=web,node=web,path=derp}":        200,
		"tslink_node_sent_bytes_total{container=web,node=web,path=direct_ipv4}":     3000,
		"tslink_node_peers{container=db-1,node=db}":                                 0,
	} {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v); want %v", k, got, ok, want)
		}
	}
	if age := m["tslink_node_last_handshake_age_seconds{container=web,node=web}"]; age < 29 || age > 60 {
		t.Errorf("last handshake age %v; want about 30 s", age)
	}
	if _, ok := m["tslink_node_last_handshake_age_seconds{container=db-1,node=db}"]; ok {
		t.Error("a node without any handshake has a handshake age")
	}
	for k := range m {
		if strings.Contains(k, "peer=") || strings.Contains(k, "100.") {
			t.Errorf("per-peer label in %s", k)
		}
	}

	db.setState("NeedsLogin")
	h := d.Health(context.Background())
	if h.Healthy || len(h.NotRunning) != 1 || h.NotRunning[0].Hostname != "db" || h.NotRunning[0].Container != "db-1" || h.NotRunning[0].State != "NeedsLogin" {
		t.Errorf("health with db NeedsLogin: %+v", h)
	}
	if m := gather(t, d); m["tslink_nodes{state=NeedsLogin}"] != 1 || m["tslink_node_running{container=db-1,node=db}"] != 0 {
		t.Errorf("after db went NeedsLogin: nodes{NeedsLogin}=%v running{db}=%v", m["tslink_nodes{state=NeedsLogin}"], m["tslink_node_running{container=db-1,node=db}"])
	}
}

// A node that does not answer is left out of the scrape, counted, and does
// not hold up the scrape, the health check or the driver.
func TestWedgedNodeDoesNotHangScrape(t *testing.T) {
	defer func(v time.Duration) { nodeReadTimeout = v }(nodeReadTimeout)
	nodeReadTimeout = 300 * time.Millisecond
	wedged := &metricNode{state: "Running", wedge: make(chan struct{})}
	ok := &metricNode{state: "Running", traffic: stack.Traffic{Peers: 1}}
	d := newMetricsDriver(t, map[string]*enginestate.Container{
		"ep1": ctr("c1", "stuck", nil),
		"ep2": ctr("c2", "fine", nil),
	}, &metricNodes{nodes: map[string]*metricNode{"stuck": wedged, "fine": ok}})
	for _, ep := range []string{"ep1", "ep2"} {
		if _, err := d.Join(joinReq(ep)); err != nil {
			t.Fatalf("Join %s: %v", ep, err)
		}
		defer d.Leave(&network.LeaveRequest{EndpointID: ep})
	}
	began := time.Now()
	m := gather(t, d)
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("scrape took %v with a wedged node; want about %v", took, nodeReadTimeout)
	}
	if m["tslink_node_state{container=stuck,node=stuck,state=Unresponsive}"] != 1 || m["tslink_scrape_nodes_skipped_total{reason=timeout}"] != 1 {
		t.Errorf("wedged node: state Unresponsive %v, skipped{timeout} %v; want 1, 1",
			m["tslink_node_state{container=stuck,node=stuck,state=Unresponsive}"], m["tslink_scrape_nodes_skipped_total{reason=timeout}"])
	}
	if m["tslink_node_peers{container=fine,node=fine}"] != 1 {
		t.Errorf("the answering node's peers missing: %v", m)
	}
	// While its read hangs, the driver's table is free (Status works) and
	// the next scrape skips the node at once instead of piling up reads.
	st := make(chan int, 1)
	go func() { st <- len(d.Status()) }()
	select {
	case n := <-st:
		if n != 2 {
			t.Errorf("status lists %d endpoints", n)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("driver status blocked while a node read hangs")
	}
	began = time.Now()
	m = gather(t, d)
	if m["tslink_scrape_nodes_skipped_total{reason=busy}"] != 1 {
		t.Errorf("second scrape: skipped{busy} = %v; want 1", m["tslink_scrape_nodes_skipped_total{reason=busy}"])
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("second scrape took %v", took)
	}
	if h := d.Health(context.Background()); h.Healthy || len(h.NotRunning) != 1 || h.NotRunning[0].State != StateUnresponsive {
		t.Errorf("health with a wedged node: %+v", h)
	}
	close(wedged.wedge)
	// Once it answers again it is read as before.
	if err := waitFor(2*time.Second, func() bool {
		return gather(t, d)["tslink_node_state{container=stuck,node=stuck,state=Running}"] == 1
	}); err != nil {
		t.Error("the node that answers again is not Running in the scrape")
	}
}

func waitFor(d time.Duration, ok func() bool) error {
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return context.DeadlineExceeded
		}
	}
	return nil
}

// Concurrent reads of a node that answers (a scrape and health checks at
// once) all see it; none is turned away as busy.
func TestConcurrentReadsOfASlowNode(t *testing.T) {
	slow := &metricNode{state: "Running", delay: 100 * time.Millisecond}
	d := newMetricsDriver(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)},
		&metricNodes{nodes: map[string]*metricNode{"web": slow}})
	if _, err := d.Join(joinReq("ep1")); err != nil {
		t.Fatal(err)
	}
	defer d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
	var wg sync.WaitGroup
	healthy := make(chan bool, 4)
	for range 4 {
		wg.Go(func() { healthy <- d.Health(context.Background()).Healthy })
	}
	m := gather(t, d)
	wg.Wait()
	close(healthy)
	for h := range healthy {
		if !h {
			t.Error("a health check during a scrape found the slow node not Running")
		}
	}
	if m["tslink_node_running{container=web,node=web}"] != 1 || m["tslink_scrape_nodes_skipped_total{reason=busy}"] != 0 {
		t.Errorf("scrape during health checks: running %v, skipped{busy} %v", m["tslink_node_running{container=web,node=web}"], m["tslink_scrape_nodes_skipped_total{reason=busy}"])
	}
}
