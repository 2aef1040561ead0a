package netdriver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tslink/tslink/stack"
)

// The driver's Prometheus metrics. Per plugin: Joins and their failures by
// reason, Join latency, recoveries, nodes by state. Per node (labels node,
// the requested hostname, and container; never a peer): state, peers, peers
// by path, WireGuard bytes by path, last handshake age. Per-node figures are
// read when scraped, from each node in its own goroutine, outside d.mu and
// bounded in time ([nodeReadTimeout]): a node that does not answer is left
// out of that scrape and counted in tslink_scrape_nodes_skipped_total.

// Join failure reasons (label reason of tslink_join_failures_total). The
// set is closed: every failure maps to one of these.
const (
	ReasonBadRequest         = "bad_request"         // a sandbox key or request dockerd would not send
	ReasonNetwork            = "network"             // the network's options unreadable, or no auth key
	ReasonContainerNotFound  = "container_not_found" // not in the engine's on-disk state
	ReasonBadLabel           = "bad_label"           // a ts.* label refused (form, image labels, service rules)
	ReasonAuthKey            = "auth_key"            // the key file missing or unreadable
	ReasonHostnameInUse      = "hostname_in_use"     // another container has the hostname, or the container is on another tslink network
	ReasonIdentityMismatch   = "identity_mismatch"   // the state dir belongs to another tailnet, key source, kind or tags
	ReasonStateDir           = "state_dir"           // the state dir could not be made, opened or locked
	ReasonAuthKeyRejected    = "auth_key_rejected"   // control refused the key
	ReasonControlUnreachable = "control_unreachable" // no answer from control in time
	ReasonNeedsApproval      = "needs_approval"      // device approval required
	ReasonNeedsLogin         = "needs_login"         // control wants an interactive login
	ReasonNotReady           = "not_ready"           // reached control, not Running in time
	ReasonTagsNotGranted     = "tags_not_granted"    // control gave none of the asked tags
	ReasonNoHTTPSCert        = "no_https_cert"       // a TLS serve label without a certificate
	ReasonLogsRequired       = "logs_required"       // the tailnet needs log upload, which is off
	ReasonTimeout            = "timeout"             // the Join's budget ran out
	ReasonEndpointGone       = "endpoint_gone"       // dockerd left the endpoint during the Join
	ReasonOther              = "other"               // anything else (a node that failed otherwise)
)

var joinFailureReasons = []string{
	ReasonBadRequest, ReasonNetwork, ReasonContainerNotFound, ReasonBadLabel, ReasonAuthKey,
	ReasonHostnameInUse, ReasonIdentityMismatch, ReasonStateDir, ReasonAuthKeyRejected,
	ReasonControlUnreachable, ReasonNeedsApproval, ReasonNeedsLogin, ReasonNotReady,
	ReasonTagsNotGranted, ReasonNoHTTPSCert, ReasonLogsRequired, ReasonTimeout,
	ReasonEndpointGone, ReasonOther,
}

// Recovery kinds (label kind of tslink_recoveries_total).
const (
	// RecoveryPluginRestart: a restarted plugin brought back the node of a
	// running container (recover.go).
	RecoveryPluginRestart = "plugin_restart"
	// RecoveryEngineRestore: a node that was not up when the engine
	// restored its container came up in the background (joinleave.go).
	RecoveryEngineRestore = "engine_restore"
)

// Node states beyond IPN's, as `tslink status` shows them.
const (
	StateStarting     = "Starting"     // its Join (or background start) runs
	StateNotRecovered = "NotRecovered" // a restarted plugin has not brought it back yet
	StateUnresponsive = "Unresponsive" // it did not answer within nodeReadTimeout
	stateRunning      = "Running"
)

// knownStates are always present in tslink_nodes (0 when none): IPN's
// states (ipn.State) and ours.
var knownStates = []string{"NoState", "InUseOtherUser", "NeedsLogin", "NeedsMachineAuth", "Stopped", StateStarting, stateRunning, StateNotRecovered, StateUnresponsive}

// nodeReadTimeout bounds one node's answer to a scrape or a health check
// (a variable for tests).
var nodeReadTimeout = 2 * time.Second

// maxConcurrentReads bounds the nodes read at once in one scrape.
const maxConcurrentReads = 16

// joinDurationBuckets cover a Join from a fast restart (~0.3 s) to the
// budget dockerd allows ([joinBudget]).
var joinDurationBuckets = []float64{0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 27}

type driverMetrics struct {
	joins            prometheus.Counter
	joinFailures     *prometheus.CounterVec
	joinDuration     *prometheus.HistogramVec
	recoveries       *prometheus.CounterVec
	recoveryFailures *prometheus.CounterVec
	readsSkipped     *prometheus.CounterVec

	readsMu sync.Mutex
	reads   map[Node]time.Time // when the oldest unfinished read of a node began
}

// beginRead notes a read of n starting. It reports whether this read owns
// the note (and must call endRead), and whether n looks wedged: a read of
// it began more than nodeReadTimeout ago and has not ended. Concurrent
// reads of an answering node (a scrape and a health check) all go ahead.
func (m *driverMetrics) beginRead(n Node) (owner, wedged bool) {
	m.readsMu.Lock()
	defer m.readsMu.Unlock()
	if began, ok := m.reads[n]; ok {
		return false, time.Since(began) > nodeReadTimeout
	}
	m.reads[n] = time.Now()
	return true, false
}

func (m *driverMetrics) endRead(n Node) {
	m.readsMu.Lock()
	defer m.readsMu.Unlock()
	delete(m.reads, n)
}

func newDriverMetrics() *driverMetrics {
	m := &driverMetrics{
		reads: map[Node]time.Time{},
		joins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tslink_joins_total", Help: "Joins that succeeded: containers started on a tslink network (including those whose node follows in the background during an engine restore).",
		}),
		joinFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tslink_join_failures_total", Help: "Joins that failed (docker run failed), by reason.",
		}, []string{"reason"}),
		joinDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tslink_join_duration_seconds", Help: "Time from Join's call to its answer to dockerd, by result (ok, failed).", Buckets: joinDurationBuckets,
		}, []string{"result"}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tslink_recoveries_total", Help: "Nodes brought back without a Join: plugin_restart (a restarted plugin adopted a running container's tailscale0), engine_restore (a node started in the background after an engine restore).",
		}, []string{"kind"}),
		recoveryFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tslink_recovery_failures_total", Help: "Failed attempts to bring a node back (each is retried), by kind as tslink_recoveries_total.",
		}, []string{"kind"}),
		readsSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tslink_scrape_nodes_skipped_total", Help: "Nodes left out of a scrape or health check: timeout (no answer in time), busy (an earlier read of it has hung for longer than that).",
		}, []string{"reason"}),
	}
	for _, r := range joinFailureReasons {
		m.joinFailures.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		m.joinDuration.WithLabelValues(r)
	}
	for _, k := range []string{RecoveryPluginRestart, RecoveryEngineRestore} {
		m.recoveries.WithLabelValues(k)
		m.recoveryFailures.WithLabelValues(k)
	}
	for _, r := range []string{"timeout", "busy"} {
		m.readsSkipped.WithLabelValues(r)
	}
	return m
}

// Join brings the container's node up ([Driver.join]) and counts the
// outcome for the metrics.
func (d *Driver) Join(req *network.JoinRequest) (*network.JoinResponse, error) {
	began := time.Now()
	res, err := d.join(req)
	took := time.Since(began).Seconds()
	if err != nil {
		d.metrics.joinDuration.WithLabelValues("failed").Observe(took)
		d.metrics.joinFailures.WithLabelValues(joinFailureReason(err)).Inc()
		return nil, err
	}
	d.metrics.joinDuration.WithLabelValues("ok").Observe(took)
	d.metrics.joins.Inc()
	return res, nil
}

// failure marks a Join error with its reason; its text is err's.
type failure struct {
	reason string
	err    error
}

func (f *failure) Error() string { return f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

// failed marks err with reason, one of the Reason* constants.
func failed(reason string, err error) error { return &failure{reason: reason, err: err} }

// joinFailureReason is the reason a Join failed: the one marked by failed,
// else from the node's error (package stack's sentinels).
func joinFailureReason(err error) string {
	var f *failure
	if errors.As(err, &f) {
		return f.reason
	}
	for _, c := range []struct {
		err    error
		reason string
	}{
		{stack.ErrAuthKeyRejected, ReasonAuthKeyRejected},
		{stack.ErrControlUnreachable, ReasonControlUnreachable},
		{stack.ErrNeedsApproval, ReasonNeedsApproval},
		{stack.ErrNeedsLogin, ReasonNeedsLogin},
		{stack.ErrNotReady, ReasonNotReady},
		{stack.ErrTagsNotGranted, ReasonTagsNotGranted},
		{stack.ErrNoHTTPSCert, ReasonNoHTTPSCert},
		{stack.ErrLogsRequired, ReasonLogsRequired},
		{stack.ErrStateDirInUse, ReasonStateDir},
		{errEndpointGone, ReasonEndpointGone},
		{context.DeadlineExceeded, ReasonTimeout},
	} {
		if errors.Is(err, c.err) {
			return c.reason
		}
	}
	return ReasonOther
}

// countRecovery counts a node brought back (err nil) or a failed attempt.
func (d *Driver) countRecovery(kind string, err error) {
	if err != nil {
		d.metrics.recoveryFailures.WithLabelValues(kind).Inc()
		return
	}
	d.metrics.recoveries.WithLabelValues(kind).Inc()
}

// NodeReading is one node as a scrape or health check saw it.
type NodeReading struct {
	Container string `json:"container"`
	Hostname  string `json:"hostname"`
	// State is the IPN state (Running, NeedsLogin, …) or one of
	// StateStarting, StateNotRecovered, StateUnresponsive.
	State   string         `json:"state"`
	traffic *stack.Traffic // nil unless read and the node answered
}

// trafficNode is a [Node] that reports its traffic ([stack.Node] does).
type trafficNode interface {
	Traffic(ctx context.Context) (stack.Traffic, error)
}

// readNodes reads every endpoint's node: its state, and its traffic if
// withTraffic is set. Each node is read in its own goroutine, outside d.mu,
// for at most nodeReadTimeout; a node that does not answer is
// StateUnresponsive (and while that read hangs, later ones skip the node).
func (d *Driver) readNodes(ctx context.Context, read func(ctx context.Context, n Node, r *NodeReading)) []NodeReading {
	type pending struct {
		i    int
		node Node
	}
	var out []NodeReading
	var todo []pending
	for _, ep := range d.list() {
		r := NodeReading{Container: ep.containerName, Hostname: ep.hostname, State: StateStarting}
		node, _ := d.nodeOf(ep)
		if node != nil {
			todo = append(todo, pending{len(out), node})
		}
		out = append(out, r)
	}
	for _, u := range d.unrecoveredEndpoints() {
		out = append(out, NodeReading{Container: u.rec.ContainerName, Hostname: u.rec.Hostname, State: StateNotRecovered})
	}
	if len(todo) == 0 {
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, nodeReadTimeout)
	defer cancel()
	type result struct {
		i int
		r NodeReading
	}
	results := make(chan result, len(todo)) // buffered: a late goroutine never blocks
	sem := make(chan struct{}, maxConcurrentReads)
	started := 0
	for _, p := range todo {
		owner, wedged := d.metrics.beginRead(p.node)
		if wedged {
			d.metrics.readsSkipped.WithLabelValues("busy").Inc()
			out[p.i].State = StateUnresponsive
			continue
		}
		started++
		r := out[p.i]
		go func() {
			if owner {
				defer d.metrics.endRead(p.node)
			}
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			read(ctx, p.node, &r)
			results <- result{p.i, r}
		}()
	}
	got := make([]bool, len(out))
	for range started {
		select {
		case res := <-results:
			out[res.i], got[res.i] = res.r, true
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	// Drain what arrived together with the deadline.
	for {
		select {
		case res := <-results:
			out[res.i], got[res.i] = res.r, true
			continue
		default:
		}
		break
	}
	for _, p := range todo {
		if !got[p.i] && out[p.i].State == StateStarting {
			d.metrics.readsSkipped.WithLabelValues("timeout").Inc()
			out[p.i].State = StateUnresponsive
		}
	}
	return out
}

// readState reads a node's state only.
func readState(_ context.Context, n Node, r *NodeReading) { r.State = n.Status().State }

// readStateAndTraffic reads a node's state and traffic.
func readStateAndTraffic(ctx context.Context, n Node, r *NodeReading) {
	r.State = n.Status().State
	if tn, ok := n.(trafficNode); ok {
		if t, err := tn.Traffic(ctx); err == nil {
			r.traffic = &t
		}
	}
}

// Health is the answer of the health endpoint.
type Health struct {
	// Healthy: every node is Running (also with no nodes).
	Healthy bool `json:"healthy"`
	Nodes   int  `json:"nodes"`
	// NotRunning lists the nodes that are not Running, by hostname.
	NotRunning []NodeReading `json:"notRunning,omitempty"`
}

// Health reports whether every node is Running, each node read as for a
// scrape (bounded; a node that does not answer is StateUnresponsive).
func (d *Driver) Health(ctx context.Context) Health {
	rs := d.readNodes(ctx, readState)
	h := Health{Healthy: true, Nodes: len(rs)}
	for _, r := range rs {
		if r.State != stateRunning {
			h.Healthy = false
			h.NotRunning = append(h.NotRunning, r)
		}
	}
	return h
}

// MetricsCollector returns the driver's Prometheus collector: its counters
// and, at each scrape, the nodes' figures.
func (d *Driver) MetricsCollector() prometheus.Collector { return collector{d} }

type collector struct{ d *Driver }

var (
	descNodes         = prometheus.NewDesc("tslink_nodes", "Nodes by state (IPN's states; Starting while a Join runs, NotRecovered while a restarted plugin retries, Unresponsive if it did not answer the scrape).", []string{"state"}, nil)
	descNodeState     = prometheus.NewDesc("tslink_node_state", "1 for the node's current state.", []string{"node", "container", "state"}, nil)
	descNodeRunning   = prometheus.NewDesc("tslink_node_running", "1 if the node is Running, else 0.", []string{"node", "container"}, nil)
	descNodePeers     = prometheus.NewDesc("tslink_node_peers", "Peers in the node's netmap.", []string{"node", "container"}, nil)
	descNodePeerPaths = prometheus.NewDesc("tslink_node_peer_paths", "The node's peers by path: direct (UDP), derp (relayed by a DERP server), peer_relay, idle (no traffic in two minutes).", []string{"node", "container", "path"}, nil)
	descNodeRx        = prometheus.NewDesc("tslink_node_received_bytes_total", "WireGuard bytes the node received since it started, by path (direct_ipv4, direct_ipv6, derp, peer_relay_ipv4, peer_relay_ipv6).", []string{"node", "container", "path"}, nil)
	descNodeTx        = prometheus.NewDesc("tslink_node_sent_bytes_total", "WireGuard bytes the node sent since it started, by path (as tslink_node_received_bytes_total).", []string{"node", "container", "path"}, nil)
	descNodeHandshake = prometheus.NewDesc("tslink_node_last_handshake_age_seconds", "Seconds since the node's latest WireGuard handshake with any peer (absent before the first).", []string{"node", "container"}, nil)
)

// counters are the driver's own metrics, kept as events happen.
func (c collector) counters() []prometheus.Collector {
	m := c.d.metrics
	return []prometheus.Collector{m.joins, m.joinFailures, m.joinDuration, m.recoveries, m.recoveryFailures, m.readsSkipped}
}

// Describe sends the descriptors of every metric.
func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.counters() {
		m.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{descNodes, descNodeState, descNodeRunning, descNodePeers, descNodePeerPaths, descNodeRx, descNodeTx, descNodeHandshake} {
		ch <- d
	}
}

// Collect reads every node (bounded, outside the driver's lock) and sends
// the metrics.
func (c collector) Collect(ch chan<- prometheus.Metric) {
	rs := c.d.readNodes(context.Background(), readStateAndTraffic)
	byState := map[string]int{}
	for _, s := range knownStates {
		byState[s] = 0
	}
	now := time.Now()
	seen := map[[2]string]bool{}
	for _, r := range rs {
		byState[r.State]++
		// A hostname is in the table once, but an endpoint recovery has
		// not brought back may briefly share it with a new one.
		if k := [2]string{r.Hostname, r.Container}; seen[k] {
			continue
		} else {
			seen[k] = true
		}
		ch <- prometheus.MustNewConstMetric(descNodeState, prometheus.GaugeValue, 1, r.Hostname, r.Container, r.State)
		running := 0.0
		if r.State == stateRunning {
			running = 1
		}
		ch <- prometheus.MustNewConstMetric(descNodeRunning, prometheus.GaugeValue, running, r.Hostname, r.Container)
		t := r.traffic
		if t == nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descNodePeers, prometheus.GaugeValue, float64(t.Peers), r.Hostname, r.Container)
		for _, p := range stack.PeerPaths {
			ch <- prometheus.MustNewConstMetric(descNodePeerPaths, prometheus.GaugeValue, float64(t.PeersByPath[p]), r.Hostname, r.Container, p)
		}
		for path, v := range t.ReceivedBytes {
			ch <- prometheus.MustNewConstMetric(descNodeRx, prometheus.CounterValue, v, r.Hostname, r.Container, path)
		}
		for path, v := range t.SentBytes {
			ch <- prometheus.MustNewConstMetric(descNodeTx, prometheus.CounterValue, v, r.Hostname, r.Container, path)
		}
		if !t.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(descNodeHandshake, prometheus.GaugeValue, now.Sub(t.LastHandshake).Seconds(), r.Hostname, r.Container)
		}
	}
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(n), s)
	}
	for _, m := range c.counters() {
		m.Collect(ch)
	}
}
