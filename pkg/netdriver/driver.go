// Package netdriver implements Docker's remote network driver protocol
// (docker.networkdriver/1.0) for tslink: per network a parent device whose
// macvlans are the containers' eth0 (see ensureParent), and per container a
// tailnet node (package stack) whose tailscale0 is moved into the
// container's netns.
//
// Join returns no gateway, so Docker also attaches the container to
// docker_gwbridge and NATs it like any bridge container: internet access and
// `-p` publishing are Docker's own; `--internal` networks get none.
package netdriver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/boundedlog"
	"github.com/tslink/tslink/pkg/enginestate"
	"github.com/tslink/tslink/pkg/tsopts"
	"github.com/tslink/tslink/stack"
	"golang.org/x/sys/unix"
)

// Engine is what the driver knows of the dockerd that calls it, none of it
// from the Docker API (see package engine): dockerd serves no API while it
// restores its containers, yet calls Join for each of them.
type Engine interface {
	// ForJoin returns the container of a Join from the engine's on-disk
	// state.
	ForJoin(networkID, endpointID, sandboxKey string) (*enginestate.Container, error)
	// NetworkOptions returns a network's `--opt` values from the engine's
	// on-disk state.
	NetworkOptions(networkID string) (map[string]string, error)
	// Restoring reports whether the engine is starting up: it has not
	// served its API yet.
	Restoring() bool
}

// Config configures a [Driver].
type Config struct {
	// StateRoot is the plugin's state dir (/data, the host's
	// /var/lib/docker-plugins/tailscale). Nodes live in
	// StateRoot/by-hostname/<hostname>/; key files in StateRoot/keys/.
	StateRoot string
	// HostStateRoot is StateRoot as the host sees it, for messages.
	HostStateRoot string
	Env           tsopts.Env
	Engine        Engine
	// ResolvePath maps a path as dockerd sees it (the sandbox key) to where
	// this process sees it, whether or not it exists yet; nil means identity.
	ResolvePath func(string) (string, error)
	Log         *slog.Logger
}

// Driver is tslink's network driver. Its methods are safe for concurrent
// use: dockerd calls them from concurrent HTTP requests.
type Driver struct {
	cfg Config
	log *slog.Logger

	mu           sync.Mutex
	networks     map[string]*tsopts.Network // by network ID; filled by CreateNetwork or lazily at Join
	endpoints    map[string]*endpoint       // joined endpoints by endpoint ID
	releaseTimer *time.Timer                // pending scheduleMemoryRelease
	releases     atomic.Uint64              // releaseMemory runs
	collecting   atomic.Bool                // a collectStoppedNodes is pending
	unrecovered  map[string]unrecovered     // by endpoint ID: recovery failing (recoveryFailed)
}

type endpoint struct {
	id, networkID string
	containerID   string
	containerName string
	sandboxKey    string
	hostname      string
	stateDir      string
	ephemeral     bool     // the node logs out at stop; its state dir goes with it
	tags          []string // the ACL tags the node asked for
	serve         tsopts.Serve
	node          *stack.Node
	debugLog      *boundedlog.File
	cancel        context.CancelFunc // stops the attach goroutine
	attached      chan struct{}      // closed when the attach goroutine ends
	startErr      string             // why a node started in the background is not up yet; guarded by d.mu
}

var _ network.Driver = (*Driver)(nil)

// New returns a driver. It does no I/O.
func New(cfg Config) *Driver {
	if cfg.ResolvePath == nil {
		cfg.ResolvePath = func(p string) (string, error) { return p, nil }
	}
	if cfg.HostStateRoot == "" {
		cfg.HostStateRoot = cfg.StateRoot
	}
	lg := cfg.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Driver{
		cfg:       cfg,
		log:       lg,
		networks:  map[string]*tsopts.Network{},
		endpoints: map[string]*endpoint{},
	}
}

// GetCapabilities: tslink networks are local to this host.
func (d *Driver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: "local", ConnectivityScope: "local"}, nil
}

// genericOptions extracts `--opt` values from a CreateNetwork request.
func genericOptions(opts map[string]any) map[string]string {
	out := map[string]string{}
	g, _ := opts["com.docker.network.generic"].(map[string]any)
	for k, v := range g {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out
}

// CreateNetwork validates the options and creates the network's parent
// device.
func (d *Driver) CreateNetwork(req *network.CreateNetworkRequest) error {
	opts := genericOptions(req.Options)
	nw, err := d.parseNetwork(opts)
	if err != nil {
		return err
	}
	if err := d.saveNetwork(req.NetworkID, opts); err != nil {
		return fmt.Errorf("recording the network's options in %s: %w", d.cfg.HostStateRoot, err)
	}
	if err := ensureParent(parentName(req.NetworkID)); err != nil {
		d.removeNetworkRecord(req.NetworkID)
		return err
	}
	d.mu.Lock()
	d.networks[req.NetworkID] = nw
	d.mu.Unlock()
	d.log.Info("network created", "network", short(req.NetworkID), "control", controlName(nw.ControlURL), "ephemeral", nw.Ephemeral, "tags", nw.Tags)
	return nil
}

func (d *Driver) parseNetwork(opts map[string]string) (*tsopts.Network, error) {
	nw, err := tsopts.ParseNetwork(opts, d.cfg.Env)
	if err != nil {
		return nil, err
	}
	if !nw.HasAuthKey() {
		return nil, fmt.Errorf("no auth key: pass --opt %s=tskey-auth-… (or --opt %s=<file in %s>), or set the plugin's TS_AUTHKEY with `docker plugin set`", tsopts.OptAuthKey, tsopts.OptAuthKeyFile, filepath.Join(d.cfg.HostStateRoot, "keys"))
	}
	if nw.AuthKeyFile != "" {
		if _, err := d.readKeyFile(nw.AuthKeyFile); err != nil {
			return nil, err
		}
	}
	return nw, nil
}

func (d *Driver) readKeyFile(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.cfg.StateRoot, "keys", name))
	hostPath := filepath.Join(d.cfg.HostStateRoot, "keys", name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("option %s=%s: %s does not exist; write the auth key there (mode 0600)", tsopts.OptAuthKeyFile, name, hostPath)
		}
		return "", fmt.Errorf("option %s=%s: reading %s: %v", tsopts.OptAuthKeyFile, name, hostPath, errors.Unwrap(err))
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return "", fmt.Errorf("option %s=%s: %s is empty", tsopts.OptAuthKeyFile, name, hostPath)
	}
	return key, nil
}

func controlName(u string) string {
	if u == "" {
		return "tailscale default"
	}
	return u
}

// AllocateNetwork is for swarm-scoped drivers only.
func (d *Driver) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return nil, errors.New("tslink is a local-scope driver: AllocateNetwork is not supported")
}

// FreeNetwork is for swarm-scoped drivers only.
func (d *Driver) FreeNetwork(*network.FreeNetworkRequest) error { return nil }

// DeleteNetwork closes what is left of the network's endpoints and removes
// its parent device. Docker refuses `network rm` while containers are attached, so
// normally nothing is left. Idempotent.
func (d *Driver) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	d.mu.Lock()
	var left []*endpoint
	for _, ep := range d.endpoints {
		if ep.networkID == req.NetworkID {
			left = append(left, ep)
		}
	}
	delete(d.networks, req.NetworkID)
	d.mu.Unlock()
	for _, ep := range left {
		d.closeEndpoint(ep)
	}
	if err := deleteLink(parentName(req.NetworkID)); err != nil {
		return err
	}
	d.removeNetworkRecord(req.NetworkID)
	d.log.Info("network deleted", "network", short(req.NetworkID))
	return nil
}

// CreateEndpoint creates the endpoint's eth0, a macvlan on the network's
// parent device.
// IPAM has already chosen the address, so the response's Interface is empty
// (returning one would make dockerd fail with "… already assigned").
func (d *Driver) CreateEndpoint(req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := ensureParent(parentName(req.NetworkID)); err != nil { // e.g. after a host reboot
		return nil, err
	}
	if err := createEndpointLink(req.EndpointID, parentName(req.NetworkID)); err != nil {
		return nil, err
	}
	return &network.CreateEndpointResponse{}, nil
}

// DeleteEndpoint removes the endpoint's eth0 (back in the host netns once
// Docker released the sandbox) and a TUN that never reached the container. Idempotent; dockerd also calls it to roll back a failed Join.
func (d *Driver) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	d.mu.Lock()
	ep := d.endpoints[req.EndpointID]
	d.mu.Unlock()
	if ep != nil {
		d.closeEndpoint(ep)
	}
	d.removeRecord(req.EndpointID)
	return errors.Join(deleteLink(ctrLinkName(req.EndpointID)), stack.DeleteHostTUN(req.EndpointID))
}

// EndpointInfo reports the endpoint's tailnet identity.
func (d *Driver) EndpointInfo(req *network.InfoRequest) (*network.InfoResponse, error) {
	d.mu.Lock()
	ep := d.endpoints[req.EndpointID]
	d.mu.Unlock()
	val := map[string]string{}
	d.mu.Lock()
	node := (*stack.Node)(nil)
	if ep != nil {
		node = ep.node
	}
	d.mu.Unlock()
	if node != nil {
		v4, v6 := node.Addrs()
		val["tailscale.hostname"] = ep.hostname
		val["tailscale.ipv4"] = v4.String()
		val["tailscale.ipv6"] = v6.String()
	}
	return &network.InfoResponse{Value: val}, nil
}

// joinBudget is how long Join may take in all: dockerd abandons a plugin
// call after 30 s (and rolls the endpoint back), and the answer must reach it
// before that.
const joinBudget = 27 * time.Second

// joinDeadline is the deadline for stack.Start: the node must be up within
// ts.timeout from now, with stack.FinishReserve after that for the rest of
// Start, but never past the Join budget counted from began.
func joinDeadline(began time.Time, timeout time.Duration) time.Time {
	return minTime(time.Now().Add(timeout+stack.FinishReserve), began.Add(joinBudget))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Join brings the container's node up and prepares tailscale0; a goroutine
// moves it into the sandbox netns as soon as that exists. Failures (bad
// labels, bad key, unreachable control, approval needed) are returned so
// `docker run` fails with them; nothing is left behind.
func (d *Driver) Join(req *network.JoinRequest) (_ *network.JoinResponse, retErr error) {
	began := time.Now()
	nw, err := d.networkFor(req.NetworkID)
	if err != nil {
		return nil, err
	}
	restoring := d.cfg.Engine.Restoring()
	info, err := d.cfg.Engine.ForJoin(req.NetworkID, req.EndpointID, req.SandboxKey)
	if err != nil {
		return nil, fmt.Errorf("finding the container of endpoint %s in the engine's state: %w", short(req.EndpointID), err)
	}
	ct, err := tsopts.ParseContainer(info.Labels, info.Name)
	if err != nil {
		return nil, err
	}
	authKey, err := d.authKey(nw)
	if err != nil {
		return nil, err
	}
	tags := ct.Tags
	if tags == nil {
		tags = nw.Tags
	}
	if ct.Serve.Service != "" && len(tags) == 0 {
		return nil, fmt.Errorf("tslink: label %s=%s: a Tailscale Service backend must be a tagged node: set label %s (or network option %s), e.g. %s=tag:web", tsopts.LabelService, ct.Serve.Service, tsopts.LabelTags, tsopts.OptTags, tsopts.LabelTags)
	}

	ep := &endpoint{
		id:            req.EndpointID,
		networkID:     req.NetworkID,
		containerID:   info.ID,
		containerName: info.Name,
		sandboxKey:    req.SandboxKey,
		hostname:      ct.Hostname,
		stateDir:      filepath.Join(d.cfg.StateRoot, "by-hostname", ct.Hostname),
		serve:         ct.Serve,
		attached:      make(chan struct{}),
	}
	if err := d.supersede(ep); err != nil {
		return nil, err
	}
	if err := d.reserve(ep); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			d.unreserve(ep)
		}
	}()

	_, statErr := os.Stat(ep.stateDir)
	newDir := errors.Is(statErr, os.ErrNotExist)
	if err := d.checkTailnet(ep, nw, tags); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(ep.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	ep.debugLog, err = boundedlog.Open(filepath.Join(ep.stateDir, "debug.log"), 0)
	if err != nil {
		return nil, err
	}
	ep.debugLog.Logf("tslink: join: container %s endpoint %s network %s control %s ephemeral=%v tags=%v (container found in %v)",
		info.Name, short(req.EndpointID), short(req.NetworkID), controlName(nw.ControlURL), nw.Ephemeral, tags, time.Since(began).Round(time.Millisecond))
	wait := nw.Timeout
	if restoring {
		wait = min(wait, restoreJoinWait)
	}
	err = d.startNode(context.Background(), ep, nw, authKey, tags, "", joinDeadline(began, wait))
	if err != nil && restoring && !errors.Is(err, errEndpointGone) {
		// The engine is restoring its containers and will not retry a
		// start that fails: the container starts now and its node
		// follows as soon as it can come up.
		d.startInBackground(ep, nw, tags, err)
		return &network.JoinResponse{
			InterfaceName: network.InterfaceName{SrcName: ctrLinkName(req.EndpointID), DstPrefix: "eth"},
		}, nil
	}
	if err != nil {
		ep.debugLog.Close()
		// The backend's last words go to the plugin log: with a new dir
		// removed below, debug.log goes too.
		d.log.Warn("join failed", "container", info.Name, "hostname", ct.Hostname, "err", err,
			"debug_log_tail", tailLines(filepath.Join(ep.stateDir, "debug.log"), 60))
		if newDir {
			os.RemoveAll(ep.stateDir) // a first attempt that failed leaves no identity behind
		}
		return nil, fmt.Errorf("tslink: %s: %w", ct.Hostname, err)
	}
	v4, v6 := ep.node.Addrs()
	d.log.Info("node up", "container", info.Name, "hostname", ct.Hostname, "ipv4", v4, "ipv6", v6, "took", time.Since(began).Round(time.Millisecond))
	d.saveRecord(ep)

	actx, acancel := context.WithCancel(context.Background())
	ep.cancel = acancel
	go d.attach(actx, ep, req.SandboxKey)

	return &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: ctrLinkName(req.EndpointID), DstPrefix: "eth"},
	}, nil
}

// startNode brings ep's node up (adopting the tailscale0 in adoptNS if set)
// within the network's timeout and records it as ep's. ep.debugLog must be
// open.
func (d *Driver) startNode(ctx context.Context, ep *endpoint, nw *tsopts.Network, authKey string, tags []string, adoptNS string, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	node, err := stack.Start(ctx, stack.Config{
		EndpointID: ep.id,
		Hostname:   ep.hostname,
		StateDir:   ep.stateDir,
		Owner:      "container " + ep.containerName + " (" + short(ep.containerID) + ")",
		ControlURL: nw.ControlURL,
		AuthKey:    authKey,
		Ephemeral:  nw.Ephemeral,
		Tags:       tags,
		Logf:       ep.debugLog.Logf,
		AdoptNetNS: adoptNS,
		Serve:      ep.serve,
	})
	if err != nil {
		ep.debugLog.Logf("tslink: node start failed: %v", err)
		return err
	}
	d.mu.Lock()
	left := d.endpoints[ep.id] != ep
	if !left {
		ep.node = node
		ep.ephemeral = nw.Ephemeral
		ep.tags = tags
	}
	d.mu.Unlock()
	if left {
		// dockerd called Leave (or gave up on Join and rolled back) while
		// the node was coming up: nobody tracks this node any more.
		node.Close(context.Background())
		ep.debugLog.Logf("tslink: endpoint left while its node was starting; node closed")
		return errEndpointGone
	}
	writeTailnet(ep.stateDir, nw.ControlURL, nw.Ephemeral, tags)
	return nil
}

var errEndpointGone = errors.New("the endpoint left while its node was starting")

// restoreJoinWait bounds the wait for a node in a Join while the engine
// restores its containers: the engine serves its API only after every
// restored container has started, and it does not retry a start that
// fails.
const restoreJoinWait = 5 * time.Second

// backgroundAttempt bounds one attempt of a node started in the background;
// backgroundRetry is the pause after a failed one.
const (
	backgroundAttempt = 2 * time.Minute
	backgroundRetry   = 10 * time.Second
)

// startInBackground keeps trying to bring ep's node up after a Join that
// returned without it (the engine was restoring; firstErr is why the node
// was not up in time), then attaches tailscale0 as Join would have. Leave
// stops it.
func (d *Driver) startInBackground(ep *endpoint, nw *tsopts.Network, tags []string, firstErr error) {
	ctx, cancel := context.WithCancel(context.Background())
	d.mu.Lock()
	ep.cancel = cancel
	ep.tags = tags
	d.mu.Unlock()
	d.setStartErr(ep, firstErr)
	d.saveRecord(ep)
	ep.debugLog.Logf("tslink: the engine is restoring its containers: the container starts now and its node follows (%v)", firstErr)
	d.log.Warn("engine restoring: container started without its node; retrying in the background", "container", ep.containerName, "hostname", ep.hostname, "err", firstErr)
	go func() {
		for {
			err := d.startWithKey(ctx, ep, nw, tags, time.Now().Add(backgroundAttempt))
			if err == nil {
				d.setStartErr(ep, nil)
				v4, _ := ep.node.Addrs()
				d.log.Info("node up", "container", ep.containerName, "hostname", ep.hostname, "ipv4", v4, "in_background", true)
				d.attach(ctx, ep, ep.sandboxKey)
				return
			}
			if errors.Is(err, errEndpointGone) || ctx.Err() != nil {
				close(ep.attached)
				return
			}
			d.setStartErr(ep, err)
			select {
			case <-ctx.Done():
				close(ep.attached)
				return
			case <-time.After(backgroundRetry):
			}
		}
	}()
}

// startWithKey reads the network's auth key (a key file may have been
// rewritten since) and starts ep's node.
func (d *Driver) startWithKey(ctx context.Context, ep *endpoint, nw *tsopts.Network, tags []string, deadline time.Time) error {
	authKey, err := d.authKey(nw)
	if err != nil {
		return err
	}
	return d.startNode(ctx, ep, nw, authKey, tags, "", deadline)
}

// authKey returns the network's auth key: the inline one, or the key file's
// content read now.
func (d *Driver) authKey(nw *tsopts.Network) (string, error) {
	if nw.AuthKeyFile != "" {
		return d.readKeyFile(nw.AuthKeyFile)
	}
	return nw.AuthKey, nil
}

// setStartErr records why ep's node is not up yet, for `tslink status`
// (nil: it is).
func (d *Driver) setStartErr(ep *endpoint, err error) {
	msg := ""
	if err != nil {
		msg = err.Error() + " (retrying in the background)"
	}
	d.mu.Lock()
	ep.startErr = msg
	d.mu.Unlock()
}

// supersede closes the endpoint that ep's container had before an engine
// restart: dockerd gives a restarted container a new endpoint and sandbox
// and, without live-restore, may not tell the plugin that the old ones are
// gone. (One container on two tslink networks shares one sandbox; reserve
// refuses that.)
func (d *Driver) supersede(ep *endpoint) error {
	d.mu.Lock()
	var old *endpoint
	for _, o := range d.endpoints {
		if o.containerID == ep.containerID && o.id != ep.id && o.sandboxKey != "" && o.sandboxKey != ep.sandboxKey {
			old = o
		}
	}
	d.mu.Unlock()
	if old == nil {
		return nil
	}
	d.log.Info("container restarted: closing its endpoint from before", "container", ep.containerName, "old_endpoint", short(old.id))
	d.closeEndpoint(old)
	return nil
}

// reservations: endpoints whose Join is in flight, by endpoint ID, so that
// two concurrent Joins cannot take one hostname or put one container on two
// tslink networks. Guarded by d.mu; kept in d.endpoints with node == nil.
func (d *Driver) reserve(ep *endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, o := range d.endpoints {
		if o.containerID == ep.containerID && o.id != ep.id {
			return fmt.Errorf("container %s is already on tslink network %s: a container can be on one tslink network only", ep.containerName, short(o.networkID))
		}
	}
	for _, o := range d.endpoints {
		if o.hostname == ep.hostname && o.id != ep.id {
			return fmt.Errorf("hostname %q (from label %s or the container name) is already used by running container %s; give this container another %s", ep.hostname, tsopts.LabelHostname, o.containerName, tsopts.LabelHostname)
		}
	}
	d.endpoints[ep.id] = ep
	return nil
}

func (d *Driver) unreserve(ep *endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.endpoints[ep.id] == ep {
		delete(d.endpoints, ep.id)
	}
}

// tailnetFile records which tailnet a state dir's node belongs to: the
// control server and whether the node is ephemeral. A node's identity must
// never be offered to another control server, and a persistent identity must
// not be taken (and, at stop, logged out) by a container of an ephemeral
// network.
const tailnetFile = "tailnet"

// ephemeralStateDir reports whether dir's tailnet file says its node is
// ephemeral (false if it cannot be read).
func ephemeralStateDir(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, tailnetFile))
	return err == nil && strings.Contains(string(b), " ephemeral")
}

func tailnetLine(controlURL string, ephemeral bool) string {
	kind := "persistent"
	if ephemeral {
		kind = "ephemeral"
	}
	return controlName(controlURL) + " " + kind
}

// tagsLine is the tailnet file's second line: the tags the node registered
// with. Control refuses to change a node's tags without a new login (it
// expires the node key), so a container asking for other tags is refused
// up front.
func tagsLine(tags []string) string {
	if len(tags) == 0 {
		return "tags: none"
	}
	return "tags: " + strings.Join(tags, ",")
}

func (d *Driver) checkTailnet(ep *endpoint, nw *tsopts.Network, tags []string) error {
	b, err := os.ReadFile(filepath.Join(ep.stateDir, tailnetFile))
	if err != nil {
		return nil
	}
	haveLine, haveTags, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if strings.HasSuffix(haveLine, " ephemeral") {
		// Left by a crash: a logged-out or abandoned ephemeral identity is
		// worth nothing, and no running container holds it (reserve checked).
		os.RemoveAll(ep.stateDir)
		return nil
	}
	hostDir := filepath.Join(d.cfg.HostStateRoot, "by-hostname", ep.hostname)
	if want := tailnetLine(nw.ControlURL, nw.Ephemeral); haveLine != want && haveLine != controlName(nw.ControlURL) {
		return fmt.Errorf("hostname %s: %s holds the identity of a %s, and this network wants a %s: use another %s, or remove that dir to start a new identity",
			ep.hostname, hostDir, describeTailnet(haveLine), describeTailnet(want), tsopts.LabelHostname)
	}
	if haveTags != "" && haveTags != tagsLine(tags) {
		return fmt.Errorf("hostname %s: the node was registered with %s and this container asks for %s; Tailscale only changes a node's tags through a new login: use the same tags, another %s, or remove %s to start a new identity",
			ep.hostname, haveTags, tagsLine(tags), tsopts.LabelHostname, hostDir)
	}
	return nil
}

func describeTailnet(line string) string {
	url, kind, _ := strings.Cut(line, " ")
	if kind == "" {
		kind = "persistent"
	}
	return kind + " node of the tailnet at " + url
}

func writeTailnet(dir, controlURL string, ephemeral bool, tags []string) {
	os.WriteFile(filepath.Join(dir, tailnetFile), []byte(tailnetLine(controlURL, ephemeral)+"\n"+tagsLine(tags)+"\n"), 0o600)
}

// attach waits for the sandbox key to become a netns (runc's prestart hook
// mounts it 0.3–0.5 s after Join returns; there is no driver callback), moves
// tailscale0 in, and re-applies IPv6 after Docker disables it.
func (d *Driver) attach(ctx context.Context, ep *endpoint, sandboxKey string) {
	defer close(ep.attached)
	began := time.Now()
	deadline := began.Add(2 * time.Minute)
	// The netns directory exists already: resolve it once, so each poll is
	// one statfs (30 concurrent starts on 2 cores poll side by side).
	resolve := func() (string, error) { return d.cfg.ResolvePath(sandboxKey) }
	if dir, err := d.cfg.ResolvePath(filepath.Dir(sandboxKey)); err == nil {
		p := filepath.Join(dir, filepath.Base(sandboxKey))
		resolve = func() (string, error) { return p, nil }
	}
	var nsPath string
	for {
		p, err := resolve()
		if err == nil && isNetNS(p) {
			nsPath = p
			break
		}
		if time.Now().After(deadline) {
			d.attachFailed(ep, fmt.Errorf("sandbox %s did not become a netns within 2m (last error: %v)", sandboxKey, err))
			return
		}
		// Every 2 ms while the container is most likely about to start,
		// then every 10 ms.
		pause := 2 * time.Millisecond
		if time.Since(began) > time.Second {
			pause = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
	appeared := time.Now()
	if err := ep.node.Attach(nsPath); err != nil {
		d.attachFailed(ep, err)
		return
	}
	ep.debugLog.Logf("tslink: tailscale0 attached to %s in %v", sandboxKey, time.Since(appeared).Round(time.Microsecond))
	d.log.Debug("attached", "hostname", ep.hostname, "took", time.Since(appeared))

	// Docker disables IPv6 in the sandbox after Join on non-IPv6 networks,
	// dropping tailscale0's IPv6 address; put it back when that happens.
	_, v6 := ep.node.Addrs()
	if !v6.IsValid() {
		return
	}
	for range 150 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		if !hasAddr(nsPath, v6.String()) {
			if err := ep.node.ReapplyIPv6(); err != nil {
				ep.debugLog.Logf("tslink: re-applying IPv6: %v", err)
			} else {
				ep.debugLog.Logf("tslink: IPv6 %v re-applied on tailscale0", v6)
			}
		}
	}
}

func (d *Driver) attachFailed(ep *endpoint, err error) {
	ep.debugLog.Logf("tslink: attach failed: %v", err)
	d.log.Error("attach failed", "hostname", ep.hostname, "container", ep.containerName, "err", err)
}

func isNetNS(p string) bool {
	var st unix.Statfs_t
	return unix.Statfs(p, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// Leave stops the endpoint's node (an ephemeral one logs out) and deletes
// tailscale0. Idempotent.
func (d *Driver) Leave(req *network.LeaveRequest) error {
	d.mu.Lock()
	ep := d.endpoints[req.EndpointID]
	d.mu.Unlock()
	if ep == nil {
		d.removeRecord(req.EndpointID) // served by an earlier plugin process
		d.mu.Lock()
		delete(d.unrecovered, req.EndpointID)
		d.mu.Unlock()
		return nil
	}
	d.closeEndpoint(ep)
	return nil
}

func (d *Driver) closeEndpoint(ep *endpoint) {
	d.stopEndpoint(ep, false)
}

// stopEndpoint stops ep's node: Close (logout if ephemeral, tailscale0
// deleted, record removed) or, with detach, nothing but the debug log: the
// process is about to exit, and exiting without closing tsnet leaves the
// persistent tailscale0 in the container for the next plugin process to
// adopt. (Closing tsnet would log an ephemeral node out: LocalBackend's
// Shutdown does that for ephemeral logins.)
func (d *Driver) stopEndpoint(ep *endpoint, detach bool) {
	d.mu.Lock()
	if d.endpoints[ep.id] != ep {
		d.mu.Unlock()
		return
	}
	delete(d.endpoints, ep.id)
	d.mu.Unlock()
	if ep.cancel != nil {
		ep.cancel()
		<-ep.attached
	}
	if detach {
		if ep.debugLog != nil {
			ep.debugLog.Logf("tslink: plugin stopping; node detached, tailscale0 kept for the next plugin process")
			ep.debugLog.Close()
		}
		return
	}
	if ep.node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := ep.node.Close(ctx); err != nil {
			d.log.Warn("closing node", "hostname", ep.hostname, "err", err)
		}
		cancel()
	}
	d.removeRecord(ep.id)
	if ep.debugLog != nil {
		ep.debugLog.Logf("tslink: left; node closed")
		ep.debugLog.Close()
	}
	if ep.ephemeral && ep.node != nil {
		// A logged-out ephemeral identity can never be used again; keeping
		// its dir would only pile up one per container name.
		os.RemoveAll(ep.stateDir)
	}
	d.log.Info("endpoint left", "hostname", ep.hostname, "container", ep.containerName)
	d.scheduleMemoryRelease()
}

// memoryReleaseDelay coalesces memory releases after endpoints leave.
const memoryReleaseDelay = 3 * time.Second

func (d *Driver) releaseMemory() {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	// Stopped nodes' wireguard-go and tstun buffers sit in sync.Pools; a
	// pool's objects survive one GC as victims and go at the next, so two
	// GCs run before FreeOSMemory's own returns the heap.
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	runtime.ReadMemStats(&after)
	d.releases.Add(1)
	d.log.Debug("memory released to the OS", "heap_live_kib", after.HeapAlloc>>10, "released_kib", (int64(after.HeapReleased)-int64(before.HeapReleased))>>10, "heap_sys_kib", after.HeapSys>>10)
}

// MemoryReleases counts the times freed memory was returned to the OS after
// endpoints left (one per quiet period of memoryReleaseDelay).
func (d *Driver) MemoryReleases() uint64 { return d.releases.Load() }

// scheduleMemoryRelease frees a stopped node's memory now and returns it to
// the OS a moment after the last one left. The Go runtime otherwise keeps
// freed heap mapped for minutes, so the plugin's RSS would stay at its
// high-water mark after a burst of containers.
func (d *Driver) scheduleMemoryRelease() {
	if d.collecting.CompareAndSwap(false, true) {
		go d.collectStoppedNodes()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.releaseTimer == nil {
		d.releaseTimer = time.AfterFunc(memoryReleaseDelay, d.releaseMemory)
		return
	}
	d.releaseTimer.Reset(memoryReleaseDelay)
}

// collectStoppedNodes runs the two garbage collections that free a stopped
// node's buffers. Most of a node's memory (about 40 MiB: wireguard-go's
// 64 KiB message buffers, 128 per receive path, and tstun's) sits in its
// sync.Pools, which outlive the node by two GCs (live, then victim). Left to
// the pacer, those GCs come late, after the heap has doubled again, so
// containers cycling one at a time held several dead nodes at once (the
// soak's peak RSS was 300 MiB; 100 MiB with this). The GCs scan little (the
// buffers hold no pointers); calls coalesce while one is pending.
func (d *Driver) collectStoppedNodes() {
	d.collecting.Store(false)
	runtime.GC()
	runtime.GC()
}

// DiscoverNew is unused by local drivers.
func (d *Driver) DiscoverNew(*network.DiscoveryNotification) error { return nil }

// DiscoverDelete is unused by local drivers.
func (d *Driver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }

// ProgramExternalConnectivity is a no-op: dockerd publishes ports through
// docker_gwbridge, not through this driver.
func (d *Driver) ProgramExternalConnectivity(*network.ProgramExternalConnectivityRequest) error {
	return nil
}

// RevokeExternalConnectivity is a no-op; see ProgramExternalConnectivity.
func (d *Driver) RevokeExternalConnectivity(*network.RevokeExternalConnectivityRequest) error {
	return nil
}

// Shutdown prepares the process to exit on SIGTERM (`docker plugin
// disable`, upgrades) without touching the nodes: containers keep
// tailscale0, addresses and routes, and the next plugin process adopts them
// ([Driver.Recover]). The caller must exit afterwards.
func (d *Driver) Shutdown() {
	d.mu.Lock()
	var all []*endpoint
	for _, ep := range d.endpoints {
		if ep.node != nil {
			all = append(all, ep)
		}
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, ep := range all {
		wg.Go(func() { d.stopEndpoint(ep, true) })
	}
	wg.Wait()
}

// tailLines returns the last n lines of a file, joined with " | ".
func tailLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(strings.ToValidUTF8(string(b), "")), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
