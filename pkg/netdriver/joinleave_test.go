package netdriver

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/enginestate"
	"github.com/tslink/tslink/pkg/execssh"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
	"github.com/tslink/tslink/stack"
)

// fakeEngine knows one network and the containers in ctrs, by endpoint ID;
// it is restoring while restoring is set.
type fakeEngine struct {
	ctrs      map[string]*enginestate.Container
	restoring atomic.Bool
	control   string // the network's ts.controlurl; loopback if empty
}

func (f *fakeEngine) NetworkOptions(string) (map[string]string, error) {
	control := f.control
	if control == "" {
		control = "http://127.0.0.1:1"
	}
	return map[string]string{"ts.authkey": "tskey-auth-test", "ts.controlurl": control}, nil
}

func (f *fakeEngine) ForJoin(_, endpointID, _ string) (*enginestate.Container, error) {
	if c := f.ctrs[endpointID]; c != nil {
		return c, nil
	}
	return nil, errors.New("no such endpoint")
}

func (f *fakeEngine) Restoring() bool { return f.restoring.Load() }

// fakeNodes starts fakeNodes. A Start blocks until the test sends its
// outcome on release (nil: the node comes up).
type fakeNodes struct {
	started chan stack.Config // a Start began
	release chan error
	mu      sync.Mutex
	nodes   []*fakeNode
	// closeGate, if set, holds every node's Close until it is closed.
	closeGate chan struct{}
	tailnet   string // the tailnet name new nodes report
}

func (f *fakeNodes) Start(ctx context.Context, cfg stack.Config) (Node, error) {
	f.started <- cfg
	select {
	case err := <-f.release:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	n := &fakeNode{closeGate: f.closeGate, tailnet: f.tailnet}
	f.mu.Lock()
	f.nodes = append(f.nodes, n)
	f.mu.Unlock()
	return n, nil
}

type fakeNode struct {
	mu        sync.Mutex
	closed    int
	closeGate chan struct{}
	tailnet   string
}

func (n *fakeNode) Addrs() (v4, v6 netip.Addr) {
	return netip.MustParseAddr("100.64.0.1"), netip.Addr{}
}
func (n *fakeNode) Attach(string) error      { return nil }
func (n *fakeNode) KeepIPv6(context.Context) {}
func (n *fakeNode) Status() stack.Status     { return stack.Status{State: "Running", Tailnet: n.tailnet} }
func (n *fakeNode) Close(context.Context) error {
	if n.closeGate != nil {
		<-n.closeGate
	}
	n.mu.Lock()
	n.closed++
	n.mu.Unlock()
	return nil
}
func (n *fakeNode) closes() int { n.mu.Lock(); defer n.mu.Unlock(); return n.closed }

type harness struct {
	d     *Driver
	nodes *fakeNodes
	root  string
}

func newHarness(t *testing.T, ctrs map[string]*enginestate.Container) *harness {
	t.Helper()
	root := t.TempDir()
	nodes := &fakeNodes{started: make(chan stack.Config, 4), release: make(chan error, 4)}
	d := New(Config{
		StateRoot: root,
		Engine:    &fakeEngine{ctrs: ctrs},
		Nodes:     nodes,
		// The sandbox never becomes a netns: attach polls until Leave.
		ResolvePath: func(p string) (string, error) { return p, nil },
	})
	return &harness{d: d, nodes: nodes, root: root}
}

func ctr(id, name string, labels map[string]string) *enginestate.Container {
	return &enginestate.Container{ID: id, Name: name, Labels: labels}
}

func joinReq(ep string) *network.JoinRequest {
	return &network.JoinRequest{NetworkID: "net1", EndpointID: ep, SandboxKey: "/nonexistent/netns/0123456789ab"} // one container on two networks has one sandbox
}

// join runs Join in the background; its result arrives on the channel.
func (h *harness) join(ep string) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := h.d.Join(joinReq(ep))
		ch <- err
	}()
	return ch
}

func (h *harness) waitStart(t *testing.T) stack.Config {
	t.Helper()
	select {
	case cfg := <-h.nodes.started:
		return cfg
	case <-time.After(5 * time.Second):
		t.Fatal("no node start")
	}
	return stack.Config{}
}

func wait(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Join did not return")
	}
	return nil
}

func TestJoinLeave(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	res := h.join("ep1")
	cfg := h.waitStart(t)
	if cfg.Hostname != "web" || cfg.AuthKey != "tskey-auth-test" || cfg.Wait <= 0 {
		t.Errorf("node config %+v", cfg)
	}
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Fatalf("Join: %v", err)
	}
	if _, err := os.Stat(h.d.dir.EndpointRecord("ep1")); err != nil {
		t.Errorf("no endpoint record: %v", err)
	}
	if tn, ok := statedir.ReadTailnet(h.d.dir.Node("web")); !ok || tn.ControlURL != "http://127.0.0.1:1" {
		t.Errorf("tailnet record %+v, %v", tn, ok)
	}
	if st := h.d.Status(); len(st) != 1 || st[0].State != "Running" {
		t.Errorf("status %+v", st)
	}
	if err := h.d.Leave(&network.LeaveRequest{NetworkID: "net1", EndpointID: "ep1"}); err != nil {
		t.Fatal(err)
	}
	if n := h.nodes.nodes[0].closes(); n != 1 {
		t.Errorf("node closed %d times", n)
	}
	if h.d.lookup("ep1") != nil {
		t.Error("endpoint still in the table after Leave")
	}
	if _, err := os.Stat(h.d.dir.EndpointRecord("ep1")); !os.IsNotExist(err) {
		t.Errorf("record left after Leave: %v", err)
	}
}

func TestJoinRollback(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	res := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- errors.New("control says no")
	err := wait(t, res)
	if err == nil || !strings.Contains(err.Error(), "tslink: web: control says no") {
		t.Fatalf("Join: %v", err)
	}
	if h.d.lookup("ep1") != nil {
		t.Error("failed Join left its reservation")
	}
	if _, err := os.Stat(h.d.dir.Node("web")); !os.IsNotExist(err) {
		t.Errorf("failed first Join left its state dir: %v", err)
	}
	if _, err := os.Stat(h.d.dir.EndpointRecord("ep1")); !os.IsNotExist(err) {
		t.Errorf("failed Join left a record: %v", err)
	}
	// The hostname is free again.
	res = h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Errorf("second Join: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
}

// leaveDuringStart: dockerd calls Leave (or DeleteEndpoint, rolling back a
// Join it gave up on) while the node is starting.
func leaveDuringStart(t *testing.T, leave func(d *Driver)) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	res := h.join("ep1")
	h.waitStart(t)
	leave(h.d)
	h.nodes.release <- nil
	err := wait(t, res)
	if !errors.Is(err, errEndpointGone) {
		t.Fatalf("Join: %v; want errEndpointGone", err)
	}
	if len(h.nodes.nodes) != 1 || h.nodes.nodes[0].closes() != 1 {
		t.Errorf("the node started for a gone endpoint was not closed once")
	}
	if h.d.lookup("ep1") != nil {
		t.Error("endpoint in the table after Leave")
	}
	if _, err := os.Stat(h.d.dir.EndpointRecord("ep1")); !os.IsNotExist(err) {
		t.Errorf("record left: %v", err)
	}
}

func TestLeaveDuringStart(t *testing.T) {
	leaveDuringStart(t, func(d *Driver) { d.Leave(&network.LeaveRequest{EndpointID: "ep1"}) })
}

func TestDeleteEndpointDuringStart(t *testing.T) {
	leaveDuringStart(t, func(d *Driver) { d.DeleteEndpoint(&network.DeleteEndpointRequest{EndpointID: "ep1"}) })
}

func TestJoinsRaceForHostname(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{
		"ep1": ctr("c1", "one", map[string]string{"ts.hostname": "db"}),
		"ep2": ctr("c2", "two", map[string]string{"ts.hostname": "db"}),
	})
	first := h.join("ep1")
	h.waitStart(t)
	err := wait(t, h.join("ep2"))
	if err == nil || !strings.Contains(err.Error(), `hostname "db"`) || !strings.Contains(err.Error(), "one") {
		t.Errorf("second Join: %v; want the hostname taken by container one", err)
	}
	h.nodes.release <- nil
	if err := wait(t, first); err != nil {
		t.Errorf("first Join: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
	select {
	case cfg := <-h.nodes.started:
		t.Errorf("a second node was started: %+v", cfg)
	default:
	}
}

// A container stopping while another with its hostname starts (issue 14
// item 5): the new Join waits until the old node is closed and its
// ephemeral dir removed, then gets a dir of its own that nothing removes.
func TestLeaveAndJoinOfOneHostname(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{
		"ep1": ctr("c1", "old", map[string]string{"ts.hostname": "db"}),
		"ep2": ctr("c2", "new", map[string]string{"ts.hostname": "db"}),
	})
	h.nodes.closeGate = make(chan struct{})
	first := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- nil
	if err := wait(t, first); err != nil {
		t.Fatal(err)
	}
	dir := h.d.dir.Node("db")
	left := make(chan error, 1)
	go func() { left <- h.d.Leave(&network.LeaveRequest{EndpointID: "ep1"}) }()
	// Leave has taken ep1 out of the table and waits in Close.
	for deadline := time.Now().Add(5 * time.Second); h.d.lookup("ep1") != nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Leave did not start")
		}
	}
	second := h.join("ep2")
	select {
	case cfg := <-h.nodes.started:
		t.Fatalf("a node with the hostname of a closing node started: %+v", cfg)
	case err := <-second:
		t.Fatalf("Join returned while the old node was closing: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if !h.d.hostnameInUse("db") {
		t.Error("hostname free while its old node closes")
	}
	close(h.nodes.closeGate)
	if err := <-left; err != nil {
		t.Fatal(err)
	}
	h.waitStart(t)
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the new node's dir: %v", err)
	}
	h.nodes.release <- nil
	if err := wait(t, second); err != nil {
		t.Fatalf("second Join: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the new node's dir after its Join: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep2"})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("ephemeral dir left after Leave: %v", err)
	}
}

// A hostname still being released after the Join's wait ends fails the Join
// with a message naming the stopping container.
func TestJoinGivesUpOnAHostnameStillReleased(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep2": ctr("c2", "new", map[string]string{"ts.hostname": "db"})})
	release, ok := h.d.holdHostname("db", "old", nil)
	if !ok {
		t.Fatal("hostname not held")
	}
	defer release()
	ep := h.d.newEndpoint("ep2", "net1", "c2", "new", "", "db", tsopts.Serve{})
	err := h.d.reserve(ep, time.Now().Add(50*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), `hostname "db"`) || !strings.Contains(err.Error(), "still being released by stopped container old") {
		t.Errorf("reserve: %v", err)
	}
	if h.d.lookup("ep2") != nil {
		t.Error("endpoint reserved")
	}
}

// Persistent identities are bound to their network's key source and
// tailnet, not to the network (issue 14 item 4).
func TestPersistentIdentityStaysInItsTailnet(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{
		"ep1": ctr("c1", "one", map[string]string{"ts.hostname": "db"}),
		"ep2": ctr("c2", "two", map[string]string{"ts.hostname": "db"}),
		"ep3": ctr("c3", "three", map[string]string{"ts.hostname": "db"}),
		"ep4": ctr("c4", "four", map[string]string{"ts.hostname": "db"}),
		"ep5": ctr("c5", "five", map[string]string{"ts.hostname": "db"}),
	})
	os.MkdirAll(h.root+"/keys", 0o700)
	os.WriteFile(h.root+"/keys/tailnet-a", []byte("tskey-auth-a1"), 0o600)
	os.WriteFile(h.root+"/keys/tailnet-b", []byte("tskey-auth-b1"), 0o600)
	for id, file := range map[string]string{"net-a": "tailnet-a", "net-b": "tailnet-b", "net-a-again": "tailnet-a"} {
		h.d.setNetwork(id, &tsopts.Network{AuthKeyFile: file, Timeout: 5 * time.Second})
	}
	h.d.setNetwork("net-inline", &tsopts.Network{AuthKey: "tskey-auth-c1", Timeout: 5 * time.Second})
	join := func(ep, nw string, start bool) error {
		t.Helper()
		res := make(chan error, 1)
		go func() {
			_, err := h.d.Join(&network.JoinRequest{NetworkID: nw, EndpointID: ep, SandboxKey: "/nonexistent/netns/0123456789ab"})
			res <- err
		}()
		if start {
			h.waitStart(t)
			h.nodes.release <- nil
		}
		return wait(t, res)
	}
	h.nodes.tailnet = "a.example"
	if err := join("ep1", "net-a", true); err != nil {
		t.Fatal(err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
	rec, _ := statedir.ReadTailnet(h.d.dir.Node("db"))
	if rec.KeySource != "file:tailnet-a" || rec.Name != "a.example" {
		t.Fatalf("tailnet record %+v", rec)
	}
	for _, nw := range []string{"net-b", "net-inline"} {
		err := join("ep2", nw, false)
		if err == nil || !strings.Contains(err.Error(), "created with auth key file tailnet-a") || !strings.Contains(err.Error(), "remove that dir to start a new identity") {
			t.Errorf("Join on %s: %v", nw, err)
		}
	}
	// Another network with the same key file (compose down/up), its key
	// rotated: the same identity.
	os.WriteFile(h.root+"/keys/tailnet-a", []byte("tskey-auth-a2"), 0o600)
	if err := join("ep3", "net-a-again", true); err != nil {
		t.Errorf("same key file, new network, rotated key: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep3"})
	// A node that came up in another tailnet (it logged in again with a
	// key of that tailnet) is closed and refused.
	h.nodes.tailnet = "b.example"
	err := join("ep4", "net-a", true)
	if err == nil || !strings.Contains(err.Error(), "tailnet a.example, and the node came up in tailnet b.example") {
		t.Errorf("other tailnet: %v", err)
	}
	if n := h.nodes.nodes[len(h.nodes.nodes)-1]; n.closes() != 1 {
		t.Errorf("node of the other tailnet closed %d times", n.closes())
	}
	if h.d.lookup("ep4") != nil {
		t.Error("refused endpoint left in the table")
	}
	if rec, _ := statedir.ReadTailnet(h.d.dir.Node("db")); rec.Name != "a.example" {
		t.Errorf("record after the refusal: %+v", rec)
	}
	h.nodes.tailnet = "a.example"
	if err := join("ep5", "net-a", true); err != nil {
		t.Errorf("back in its tailnet: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep5"})
}

// ts.* labels from the image are refused unless the network allows them
// (issue 14 item 9).
func TestImageLabelsNeedTheNetworksConsent(t *testing.T) {
	image := map[string]string{"ts.hostname": "db", "ts.serve.2222": "tcp:22"}
	evil := &enginestate.Container{ID: "c1", Name: "innocuous", Labels: map[string]string{"ts.hostname": "db", "ts.serve.2222": "tcp:22"}, ImageLabels: image}
	own := &enginestate.Container{ID: "c2", Name: "mine", Labels: map[string]string{"ts.hostname": "web", "ts.serve.2222": "tcp:2222"}, ImageLabels: image}
	h := newHarness(t, map[string]*enginestate.Container{"ep1": evil, "ep2": own, "ep3": evil})
	err := wait(t, h.join("ep1"))
	if err == nil || !strings.Contains(err.Error(), "label ts.hostname, ts.serve.2222 comes from the container's image") || !strings.Contains(err.Error(), "--opt ts.image-labels=true") {
		t.Errorf("image labels: %v", err)
	}
	if _, err := os.Stat(h.d.dir.Node("db")); !os.IsNotExist(err) {
		t.Errorf("refused Join made a state dir: %v", err)
	}
	res := h.join("ep2")
	if cfg := h.waitStart(t); cfg.Hostname != "web" {
		t.Errorf("container's own labels: %+v", cfg)
	}
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Errorf("container's own labels: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep2"})
	h.d.setNetwork("net-img", &tsopts.Network{AuthKey: "tskey-auth-test", Ephemeral: true, ImageLabels: true, Timeout: 5 * time.Second})
	res2 := make(chan error, 1)
	go func() {
		_, err := h.d.Join(&network.JoinRequest{NetworkID: "net-img", EndpointID: "ep3", SandboxKey: "/nonexistent/netns/0123456789ab"})
		res2 <- err
	}()
	if cfg := h.waitStart(t); cfg.Hostname != "db" || len(cfg.Serve.Endpoints) != 1 {
		t.Errorf("image labels allowed: %+v", cfg)
	}
	h.nodes.release <- nil
	if err := wait(t, res2); err != nil {
		t.Errorf("image labels allowed: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep3"})
}

func TestOneTslinkNetworkPerContainer(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil), "ep2": ctr("c1", "web", nil)})
	first := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- nil
	if err := wait(t, first); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, h.join("ep2")); err == nil || !strings.Contains(err.Error(), "one tslink network only") {
		t.Errorf("second network: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
}

func TestServiceNeedsTags(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", map[string]string{"ts.serve.443": "https:8080", "ts.service": "svc:web"})})
	err := wait(t, h.join("ep1"))
	if err == nil || !strings.Contains(err.Error(), "must be a tagged node") {
		t.Errorf("Join: %v", err)
	}
}

func TestEndpointInfoDuringJoin(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	res := h.join("ep1")
	h.waitStart(t)
	info, err := h.d.EndpointInfo(&network.InfoRequest{EndpointID: "ep1"})
	if err != nil || len(info.Value) != 0 {
		t.Errorf("EndpointInfo during Join: %+v, %v; want nothing yet", info, err)
	}
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	info, _ = h.d.EndpointInfo(&network.InfoRequest{EndpointID: "ep1"})
	if info.Value["tailscale.ipv4"] != "100.64.0.1" {
		t.Errorf("EndpointInfo after Join: %+v", info)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep1"})
}

func TestRestartedContainerSupersedesItsOldEndpoint(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil), "ep2": ctr("c1", "web", nil)})
	first := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- nil
	if err := wait(t, first); err != nil {
		t.Fatal(err)
	}
	// After an engine restart the same container joins with a new endpoint
	// and a new sandbox.
	res := make(chan error, 1)
	go func() {
		req := joinReq("ep2")
		req.SandboxKey = "/nonexistent/netns/ba9876543210"
		_, err := h.d.Join(req)
		res <- err
	}()
	h.waitStart(t)
	if h.d.lookup("ep1") != nil || h.nodes.nodes[0].closes() != 1 {
		t.Error("the old endpoint was not closed")
	}
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Errorf("Join after restart: %v", err)
	}
	h.d.Leave(&network.LeaveRequest{EndpointID: "ep2"})
}

// While the engine restores its containers, a node that cannot come up in
// time does not fail the Join (dockerd would not retry the container): it
// follows in the background, shows why in status, and attaches when up.
func TestJoinWhileRestoringStartsNodeInBackground(t *testing.T) {
	defer func(r time.Duration) { backgroundRetry = r }(backgroundRetry)
	backgroundRetry = 10 * time.Millisecond
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	h.d.cfg.Engine.(*fakeEngine).restoring.Store(true)
	res := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- errors.New("control server unreachable")
	if err := wait(t, res); err != nil {
		t.Fatalf("Join while restoring failed: %v", err)
	}
	st := h.d.Status()
	if len(st) != 1 || st[0].State != "Starting" || !strings.Contains(st[0].LastError, "control server unreachable") || !strings.Contains(st[0].LastError, "retrying") {
		t.Fatalf("status while the node is retrying: %+v", st)
	}
	h.waitStart(t)
	h.nodes.release <- errors.New("control server unreachable")
	h.waitStart(t)
	h.nodes.release <- nil
	for deadline := time.Now().Add(5 * time.Second); ; {
		if st := h.d.Status(); len(st) == 1 && st[0].State == "Running" && st[0].LastError == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node did not come up in the background: %+v", h.d.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := h.d.Leave(&network.LeaveRequest{NetworkID: "net1", EndpointID: "ep1"}); err != nil {
		t.Fatal(err)
	}
	if n := h.nodes.nodes; len(n) != 1 || n[0].closes() != 1 {
		t.Fatalf("the background node was not closed once at Leave")
	}
}

// Leave during a background start's attempt ends it: no start follows.
func TestLeaveStopsBackgroundStart(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	h.d.cfg.Engine.(*fakeEngine).restoring.Store(true)
	res := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- errors.New("control server unreachable")
	if err := wait(t, res); err != nil {
		t.Fatal(err)
	}
	h.waitStart(t) // the first background attempt, blocked until Leave
	done := make(chan struct{})
	go func() {
		h.d.Leave(&network.LeaveRequest{NetworkID: "net1", EndpointID: "ep1"})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Leave waited on the background start")
	}
	select {
	case <-h.nodes.started:
		t.Fatal("a node start began after Leave")
	case <-time.After(100 * time.Millisecond):
	}
	if st := h.d.Status(); len(st) != 0 {
		t.Fatalf("status after Leave: %+v", st)
	}
}

// Outside a restore the same failure fails the Join, as users expect.
func TestJoinNotRestoringFails(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	res := h.join("ep1")
	h.waitStart(t)
	h.nodes.release <- errors.New("control server unreachable")
	if err := wait(t, res); err == nil || !strings.Contains(err.Error(), "control server unreachable") {
		t.Fatalf("Join = %v, want the node's error", err)
	}
}

// A network an earlier tslink created (no record; options from the engine's
// store) with a plain http control server keeps working after the upgrade.
func TestOlderNetworkKeepsPlainHTTPControl(t *testing.T) {
	h := newHarness(t, nil)
	h.d.cfg.Engine.(*fakeEngine).control = "http://10.1.2.3:8080"
	nw, err := h.d.networkFor("net1")
	if err != nil {
		t.Fatalf("network of an earlier tslink refused: %v", err)
	}
	if nw.ControlURL != "http://10.1.2.3:8080" {
		t.Fatalf("control URL %q", nw.ControlURL)
	}
	opts, err := h.d.loadNetwork("net1")
	if err != nil || opts["ts.insecure-control"] != "true" {
		t.Fatalf("recorded options %v, %v; want ts.insecure-control=true kept", opts, err)
	}
}

// A sandbox key that is not a netns of dockerd's own form (another process's
// /proc/<pid>/ns/net, say) never receives a node.
func TestJoinRefusesForeignSandboxKeys(t *testing.T) {
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", nil)})
	for _, key := range []string{"/proc/1234/ns/net", "/run/docker/netns/../../proc/1/ns/net", "/run/docker/netns/xyz", "", "netns/0123456789ab"} {
		_, err := h.d.Join(&network.JoinRequest{NetworkID: "net1", EndpointID: "ep1", SandboxKey: key})
		if err == nil || !strings.Contains(err.Error(), "sandbox key") {
			t.Errorf("sandbox key %q: err = %v", key, err)
		}
	}
	select {
	case <-h.nodes.started:
		t.Fatal("a node started for a foreign sandbox key")
	default:
	}
}

// A damaged network record (a truncated file) does not keep the network's
// containers off the tailnet: the options come from the engine's store.
func TestDamagedNetworkRecordFallsBackToTheEngine(t *testing.T) {
	h := newHarness(t, nil)
	if err := h.d.saveNetwork("net1", map[string]string{"ts.authkey": "k"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.d.dir.NetworkRecord("net1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	nw, err := h.d.networkFor("net1")
	if err != nil || nw.ControlURL != "http://127.0.0.1:1" {
		t.Fatalf("networkFor with a damaged record = %+v, %v; want the engine's options", nw, err)
	}
	if opts, err := h.d.loadNetwork("net1"); err != nil || opts["ts.authkey"] != "tskey-auth-test" {
		t.Fatalf("record not rewritten from the engine: %v, %v", opts, err)
	}
}

// execFor records the container an Execer was made for.
type execFor struct {
	execssh.Execer
	containerID string
}

// TestJoinSSH: ts.ssh reaches the node with sessions bound to the Join's
// container; a plugin without a Docker API client refuses the label.
func TestJoinSSH(t *testing.T) {
	labels := map[string]string{"ts.ssh": "alice@example.com,tag:ops"}
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", labels)})
	h.d.cfg.Exec = func(id string) execssh.Execer { return execFor{containerID: id} }
	res := h.join("ep1")
	cfg := h.waitStart(t)
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Fatalf("Join: %v", err)
	}
	if cfg.SSH.Allow.String() != "alice@example.com,tag:ops" {
		t.Errorf("SSH allow-list %q", cfg.SSH.Allow.String())
	}
	if e, ok := cfg.SSH.Exec.(execFor); !ok || e.containerID != "c1" {
		t.Errorf("SSH sessions run in %+v, want container c1", cfg.SSH.Exec)
	}
	h.d.Leave(&network.LeaveRequest{NetworkID: "net1", EndpointID: "ep1"})

	h = newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", labels)})
	_, err := h.d.Join(joinReq("ep1"))
	if err == nil || !strings.Contains(err.Error(), "label ts.ssh") {
		t.Errorf("Join without a Docker API client: %v", err)
	}
}
