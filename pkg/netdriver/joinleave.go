package netdriver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/nodespec"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
	"github.com/tslink/tslink/stack"
	"golang.org/x/sys/unix"
)

// joinBudget is how long Join may take in all: dockerd abandons a plugin
// call after 30 s (and rolls the endpoint back), and the answer must reach it
// before that.
const joinBudget = 27 * time.Second

// sandboxKeyForm is the sandbox key libnetwork gives a container: a netns
// bind mount named by the sandbox ID's first 12 hex digits in the netns
// directory of dockerd's exec-root. Nothing else (a /proc/<pid>/ns/net of
// another process, say) may receive a node's tailscale0.
var sandboxKeyForm = regexp.MustCompile(`^/([^/\x00]+/)*netns/[0-9a-f]{12}$`)

// join is [Driver.Join]: it brings the container's node up and prepares
// tailscale0; a goroutine moves it into the sandbox netns as soon as that
// exists. Failures (bad labels, bad key, unreachable control, approval
// needed) are returned so `docker run` fails with them; nothing is left
// behind. Errors not from the node are marked with their reason (failed).
func (d *Driver) join(req *network.JoinRequest) (_ *network.JoinResponse, retErr error) {
	began := time.Now()
	nw, err := d.networkFor(req.NetworkID)
	if err != nil {
		return nil, failed(ReasonNetwork, err)
	}
	if !sandboxKeyForm.MatchString(req.SandboxKey) {
		return nil, failed(ReasonBadRequest, fmt.Errorf("sandbox key %q is not of the form dockerd gives (<exec-root>/netns/<12 hex digits>)", req.SandboxKey))
	}
	restoring := d.cfg.Engine.Restoring()
	info, err := d.cfg.Engine.ForJoin(req.NetworkID, req.EndpointID, req.SandboxKey)
	if err != nil {
		return nil, failed(ReasonContainerNotFound, fmt.Errorf("finding the container of endpoint %s in the engine's state: %w", short(req.EndpointID), err))
	}
	if !nw.ImageLabels {
		if err := tsopts.CheckImageLabels(info.Labels, info.ImageLabels, info.ImageLabelsErr); err != nil {
			return nil, failed(ReasonBadLabel, err)
		}
	}
	ct, err := tsopts.ParseContainer(info.Labels, info.Name)
	if err != nil {
		return nil, failed(ReasonBadLabel, err)
	}
	tags := nodespec.Tags(ct.Tags, nw.Tags)
	if err := nodespec.CheckService(ct.Serve, tags); err != nil {
		return nil, failed(ReasonBadLabel, fmt.Errorf("tslink: %w", err))
	}

	if ct.SSH.Enabled() && d.cfg.Exec == nil {
		return nil, fmt.Errorf("label %s: this plugin has no Docker API client to run SSH sessions with", tsopts.LabelSSH)
	}
	ep := d.newEndpoint(req.EndpointID, req.NetworkID, info.ID, info.Name, req.SandboxKey, ct.Hostname, ct.Serve)
	ep.ssh = ct.SSH
	ep.egress = ct.Egress
	authKey, err := d.authKeyFor(nw, ep.stateDir)
	if err != nil {
		return nil, failed(ReasonAuthKey, err)
	}
	if err := tsopts.CheckOAuthTags(authKey, tags); err != nil {
		return nil, fmt.Errorf("tslink: %s: %w", ct.Hostname, err)
	}
	d.supersede(ep)
	if err := d.reserve(ep, began.Add(reserveWait)); err != nil {
		return nil, failed(ReasonHostnameInUse, err)
	}
	defer func() {
		if retErr != nil {
			d.unreserve(ep)
		}
	}()

	_, statErr := os.Stat(ep.stateDir)
	// A dir whose first Join a dead plugin left unfinished holds no
	// identity: this Join treats it as its own new dir.
	newDir := errors.Is(statErr, os.ErrNotExist) || statedir.FirstJoinUnfinished(ep.stateDir)
	if err := d.checkTailnet(ep, nw, tags); err != nil {
		return nil, failed(ReasonIdentityMismatch, err)
	}
	if err := os.MkdirAll(ep.stateDir, 0o700); err != nil {
		return nil, failed(ReasonStateDir, fmt.Errorf("creating state dir: %w", err))
	}
	if newDir {
		if err := statedir.MarkFirstJoin(ep.stateDir); err != nil {
			os.RemoveAll(ep.stateDir)
			return nil, failed(ReasonStateDir, fmt.Errorf("marking the new state dir: %w", err))
		}
	}
	if err := d.openDebugLog(ep); err != nil {
		return nil, failed(ReasonStateDir, err)
	}
	ep.debugLog.Logf("tslink: join: container %s endpoint %s network %s control %s ephemeral=%v tags=%v (container found in %v)",
		info.Name, short(req.EndpointID), short(req.NetworkID), controlName(nw.ControlURL), nw.Ephemeral, tags, time.Since(began).Round(time.Millisecond))
	wait := nw.Timeout
	if restoring {
		wait = min(wait, restoreJoinWait)
	}
	jctx, jcancel := context.WithDeadline(context.Background(), began.Add(joinBudget))
	defer jcancel()
	beforeStart := time.Since(began)
	err = d.startNode(jctx, ep, nw, authKey, tags, "", wait)
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
		// The backend's last words go to the plugin log: with a new dir
		// removed below, debug.log goes too.
		d.log.Warn("join failed", "container", info.Name, "hostname", ct.Hostname, "err", err,
			"before_node_start", beforeStart.Round(time.Millisecond), "took", time.Since(began).Round(time.Millisecond),
			"debug_log_tail", tailLines(statedir.DebugLog(ep.stateDir), 60))
		d.finishFailedJoin(ep, stack.TeardownDone(err), newDir)
		return nil, fmt.Errorf("tslink: %s: %w", ct.Hostname, err)
	}
	v4, v6 := ep.node.Addrs()
	d.log.Info("node up", "container", info.Name, "hostname", ct.Hostname, "ipv4", v4, "ipv6", v6, "before_node_start", beforeStart.Round(time.Millisecond), "took", time.Since(began).Round(time.Millisecond))
	d.saveRecord(ep)

	actx, acancel := context.WithCancel(context.Background())
	if d.setCancel(ep, acancel, tags) {
		go d.attach(actx, ep, req.SandboxKey)
	} else {
		acancel() // Leave came first and closed the node
	}

	return &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: ctrLinkName(req.EndpointID), DstPrefix: "eth"},
	}, nil
}

// startNode brings ep's node up (adopting the tailscale0 in adoptNS if set),
// waiting up to wait (0: until near ctx's deadline) within ctx, and records
// it as ep's. ep.debugLog must be open.
func (d *Driver) startNode(ctx context.Context, ep *endpoint, nw *tsopts.Network, authKey string, tags []string, adoptNS string, wait time.Duration) error {
	node, err := d.cfg.Nodes.Start(ctx, stack.Config{
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
		Wait:       wait,
		Serve:      ep.serve,
		SSH:        d.sshConfig(ep),
		Egress:     ep.egress,

		DNSUpstreams: d.cfg.DNSUpstreams,
	})
	if err != nil {
		ep.debugLog.Logf("tslink: node start failed: %v", err)
		return err
	}
	want, err := d.tailnetOf(nw, tags)
	if err != nil {
		node.Close(context.Background())
		return err
	}
	have, _ := statedir.ReadTailnet(ep.stateDir)
	want.Name = cmp.Or(node.Status().Tailnet, have.Name)
	if err := have.CheckName(want.Name, ep.hostname, d.dir.HostNode(ep.hostname)); err != nil {
		node.Close(context.Background())
		ep.debugLog.Logf("tslink: %v", err)
		return failed(ReasonIdentityMismatch, err)
	}
	if !d.setNode(ep, node, nw.Ephemeral, tags) {
		// dockerd called Leave (or gave up on Join and rolled back) while
		// the node was coming up: nobody tracks this node any more.
		node.Close(context.Background())
		ep.debugLog.Logf("tslink: endpoint left while its node was starting; node closed")
		return errEndpointGone
	}
	if err := statedir.WriteTailnet(ep.stateDir, want); err == nil {
		statedir.FirstJoinDone(ep.stateDir)
	}
	return nil
}

var errEndpointGone = errors.New("the endpoint left while its node was starting")

// reserveWait bounds a Join's wait for its hostname while the node that had
// it is being stopped (its Close is bounded by closeTimeout).
const reserveWait = closeTimeout + 3*time.Second

// closeTimeout bounds a node's Close when its endpoint leaves (service
// withdrawal and an ephemeral node's logout).
const closeTimeout = 10 * time.Second

// finishFailedJoin cleans up after a Join of ep that failed: once its node
// is gone (teardown: [stack.TeardownDone], which a node control had
// accepted closes only after its first netmap), it closes ep's debug log and
// removes the dir a first attempt created (newDir). Meanwhile it holds ep's
// hostname (ep's own reservation if it still has it, else, when a Leave
// came during the Join and freed it, a new hold unless another endpoint
// took the hostname since), so a later Join of the same container waits
// for the node to be gone ([Driver.reserve]) instead of finding its dir
// locked. The Join returns at once; the rest runs in the background.
func (d *Driver) finishFailedJoin(ep *endpoint, teardown <-chan struct{}, newDir bool) {
	release, held := d.takeLeaving(ep)
	if !held {
		release, held = d.holdHostname(ep.hostname, ep.containerName, nil)
	}
	finish := func() {
		<-teardown
		ep.debugLog.Close()
		if held {
			if newDir {
				d.removeNodeDir(ep) // a first attempt that failed leaves no identity behind
			}
			release()
		}
	}
	select {
	case <-teardown:
		finish()
	default:
		d.failedJoins.Go(finish)
	}
}

// removeNodeDir removes ep's node dir under its lock; a dir that a live
// node holds stays ([statedir.RemoveNodeDir]).
func (d *Driver) removeNodeDir(ep *endpoint) {
	if err := statedir.RemoveNodeDir(ep.stateDir); err != nil {
		d.log.Warn("state dir not removed", "hostname", ep.hostname, "err", err)
	}
}

// restoreJoinWait bounds the wait for a node in a Join while the engine
// restores its containers: the engine serves its API only after every
// restored container has started, and it does not retry a start that
// fails.
const restoreJoinWait = 5 * time.Second

// backgroundAttempt bounds one attempt of a node started in the background;
// backgroundRetry is the pause after a failed one (a variable for tests).
// Attempts are short because a connect to a control server whose packets
// were dropped sits in the kernel's SYN back-off, and only a fresh attempt
// notices at once that control is back.
const backgroundAttempt = 20 * time.Second

var backgroundRetry = 5 * time.Second

// startInBackground keeps trying to bring ep's node up after a Join that
// returned without it (the engine was restoring; firstErr is why the node
// was not up in time), then attaches tailscale0 as Join would have. Leave
// stops it.
func (d *Driver) startInBackground(ep *endpoint, nw *tsopts.Network, tags []string, firstErr error) {
	ctx, cancel := context.WithCancel(context.Background())
	if !d.setCancel(ep, cancel, tags) {
		cancel()
		return
	}
	d.setStartErr(ep, firstErr)
	d.saveRecord(ep)
	ep.debugLog.Logf("tslink: the engine is restoring its containers: the container starts now and its node follows (%v)", firstErr)
	d.log.Warn("engine restoring: container started without its node; retrying in the background", "container", ep.containerName, "hostname", ep.hostname, "err", firstErr)
	go func() {
		// The container runs before its node: keep its tailnet off
		// Docker's NAT from the moment its netns exists.
		if nsPath, err := d.waitSandbox(ctx, ep.sandboxKey); err == nil {
			if err := stack.InstallFallbackRoutes(nsPath); err != nil {
				ep.debugLog.Logf("tslink: %v", err)
			}
		}
	}()
	go func() {
		// The failed attempt's node may still be closing (it holds the
		// state dir's lock until then).
		<-stack.TeardownDone(firstErr)
		for {
			actx, acancel := context.WithTimeout(ctx, backgroundAttempt)
			err := d.startWithKey(actx, ep, nw, tags)
			acancel()
			if err == nil {
				d.countRecovery(RecoveryEngineRestore, nil)
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
			d.countRecovery(RecoveryEngineRestore, err)
			d.setStartErr(ep, err)
			<-stack.TeardownDone(err)
			d.scheduleMemoryRelease() // a failed start leaves a node's worth of garbage
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
// rewritten since) and starts ep's node, waiting until near ctx's deadline.
func (d *Driver) startWithKey(ctx context.Context, ep *endpoint, nw *tsopts.Network, tags []string) error {
	authKey, err := d.authKeyFor(nw, ep.stateDir)
	if err != nil {
		return err
	}
	return d.startNode(ctx, ep, nw, authKey, tags, "", 0)
}

// supersede closes the endpoint that ep's container had before an engine
// restart: dockerd gives a restarted container a new endpoint and sandbox
// and, without live-restore, may not tell the plugin that the old ones are
// gone. (One container on two tslink networks shares one sandbox; reserve
// refuses that.)
func (d *Driver) supersede(ep *endpoint) {
	old := d.previousEndpoint(ep)
	if old == nil {
		return
	}
	d.log.Info("container restarted: closing its endpoint from before", "container", ep.containerName, "old_endpoint", short(old.id))
	d.closeEndpoint(old)
}

// attach waits for the sandbox key to become a netns (runc's prestart hook
// mounts it shortly after Join returns; there is no driver callback), moves
// tailscale0 in, and re-applies IPv6 after Docker disables it.
func (d *Driver) attach(ctx context.Context, ep *endpoint, sandboxKey string) {
	defer close(ep.attached)
	nsPath, err := d.waitSandbox(ctx, sandboxKey)
	if errors.Is(err, errNoSandbox) {
		d.attachFailed(ep, err)
	}
	if err != nil {
		return
	}
	appeared := time.Now()
	if err := ep.node.Attach(nsPath); err != nil {
		d.attachFailed(ep, err)
		return
	}
	ep.debugLog.Logf("tslink: tailscale0 attached to %s in %v", sandboxKey, time.Since(appeared).Round(time.Microsecond))
	d.log.Debug("attached", "hostname", ep.hostname, "took", time.Since(appeared))
	ep.node.KeepIPv6(ctx)
}

// errNoSandbox: the sandbox key did not become a netns in time.
var errNoSandbox = errors.New("no sandbox netns")

// waitSandbox waits until the sandbox key is a netns and returns its path
// as the plugin sees it; ctx's error if ctx ends first, an error wrapping
// errNoSandbox after 2 minutes.
func (d *Driver) waitSandbox(ctx context.Context, sandboxKey string) (string, error) {
	began := time.Now()
	deadline := began.Add(2 * time.Minute)
	// The netns directory exists already: resolve it once, so each poll is
	// one statfs (many concurrent starts poll side by side).
	resolve := func() (string, error) { return d.cfg.ResolvePath(sandboxKey) }
	if dir, err := d.cfg.ResolvePath(filepath.Dir(sandboxKey)); err == nil {
		p := filepath.Join(dir, filepath.Base(sandboxKey))
		resolve = func() (string, error) { return p, nil }
	}
	for {
		p, err := resolve()
		if err == nil && isNetNS(p) {
			return p, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%w: sandbox %s did not become a netns within 2m (last error: %v)", errNoSandbox, sandboxKey, err)
		}
		// Every 2 ms while the container is most likely about to start,
		// then every 10 ms.
		pause := 2 * time.Millisecond
		if time.Since(began) > time.Second {
			pause = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(pause):
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
	ep := d.lookup(req.EndpointID)
	if ep == nil {
		d.removeRecord(req.EndpointID) // served by an earlier plugin process
		d.recovered(req.EndpointID)
		return nil
	}
	d.closeEndpoint(ep)
	return nil
}

// closeEndpoint stops ep's node for good: Close (logout if ephemeral,
// tailscale0 deleted), record removed, an ephemeral node's state dir
// removed. A no-op if ep is no longer in the table.
func (d *Driver) closeEndpoint(ep *endpoint) {
	release, ok := d.takeLeaving(ep)
	if !ok {
		return
	}
	defer release() // a new node may take the hostname once the dir is gone
	began := time.Now()
	d.stopAttach(ep)
	if ep.node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
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
		d.removeNodeDir(ep)
	}
	d.log.Info("endpoint left", "hostname", ep.hostname, "container", ep.containerName, "took", time.Since(began).Round(time.Millisecond))
	d.scheduleMemoryRelease()
}

// detachEndpoint lets go of ep without stopping its node: nothing but the
// debug log is closed. The process is about to exit, and exiting without
// closing tsnet leaves the persistent tailscale0 in the container for the
// next plugin process to adopt. (Closing tsnet would log an ephemeral node
// out: LocalBackend's Shutdown does that for ephemeral logins.)
func (d *Driver) detachEndpoint(ep *endpoint) {
	if !d.take(ep) {
		return
	}
	d.stopAttach(ep)
	if ep.debugLog != nil {
		ep.debugLog.Logf("tslink: plugin stopping; node detached, tailscale0 kept for the next plugin process")
		ep.debugLog.Close()
	}
}

// stopAttach ends ep's attach goroutine, if it has one, and waits for it.
// ep must have left the table (take), so no goroutine can start after.
func (d *Driver) stopAttach(ep *endpoint) {
	if cancel := d.cancelOf(ep); cancel != nil {
		cancel()
		<-ep.attached
	}
}
