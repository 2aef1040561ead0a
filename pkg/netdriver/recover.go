package netdriver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/stack"
)

// Recover runs once at plugin start, in the background (plugin activation
// must never wait on the Docker API: dockerd may be waiting for us). For
// every recorded endpoint whose sandbox is still a network namespace (its
// container runs), it brings the same node up from its state dir and adopts
// the persistent tailscale0 left there (same identity, same IPs,
// established connections survive). Records whose sandbox is gone are
// swept with their devices. Endpoints that cannot be recovered yet (control
// unreachable, say) are retried every [recoverRetry] until ctx ends.
//
// While the engine restores its containers (it started with this plugin),
// recovery waits, up to [restoreSettle]: without live-restore the engine
// kills the containers it finds running and starts them afresh, with new
// Joins, and removes their old sandboxes.
func (d *Driver) Recover(ctx context.Context) {
	for settle := time.Now().Add(restoreSettle); d.cfg.Engine.Restoring() && time.Now().Before(settle); {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	recs := d.loadRecords()
	d.sweepOrphanStateDirs(recs)
	if len(recs) == 0 {
		return
	}
	began := time.Now()
	d.log.Info("recovering endpoints", "count", len(recs))
	for {
		var again []record
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, rec := range recs {
			wg.Go(func() {
				if !d.recoverOne(ctx, rec) {
					mu.Lock()
					again = append(again, rec)
					mu.Unlock()
					return
				}
				d.recovered(rec.EndpointID)
			})
		}
		wg.Wait()
		// Starting nodes leaves garbage (a few MB per node, more for
		// failed starts); return it now, not when a container next leaves.
		d.scheduleMemoryRelease()
		if len(again) == 0 {
			d.log.Info("recovery done", "took", time.Since(began).Round(time.Millisecond))
			return
		}
		d.log.Warn("some endpoints not recovered yet; retrying", "count", len(again), "in", recoverRetry)
		select {
		case <-ctx.Done():
			d.log.Error("recovery gave up", "count", len(again))
			return
		case <-time.After(recoverRetry):
		}
		recs = again
	}
}

// sweepOrphanStateDirs removes the state dirs of Joins that a previous
// plugin process did not finish (it died mid-Join, so no record was written
// and dockerd failed the container): a dir whose first node never came up
// ([statedir.FirstJoinUnfinished]; it holds no identity a user relies on,
// as a failed first Join leaves none), and an ephemeral node's dir whose
// lock was abandoned ([statedir.RemoveAbandoned]). Dirs that records name,
// locked dirs and hostnames a Join of this process holds are left alone.
func (d *Driver) sweepOrphanStateDirs(recs []record) {
	recorded := map[string]bool{}
	for _, rec := range recs {
		recorded[rec.Hostname] = true
	}
	for _, dir := range d.dir.NodeDirs() {
		host := filepath.Base(dir)
		unfinished := statedir.FirstJoinUnfinished(dir)
		if recorded[host] || (!unfinished && !statedir.IsEphemeral(dir)) {
			continue
		}
		release, held := d.holdHostname(host, "recovery's sweep", nil)
		if !held {
			continue // a Join of this process has it
		}
		if unfinished {
			if err := statedir.RemoveNodeDir(dir); err != nil {
				d.log.Warn("state dir of an unfinished join not removed", "hostname", host, "err", err)
			} else {
				d.log.Info("swept state of an unfinished join", "hostname", host)
			}
		} else if holder, removed := statedir.RemoveAbandoned(dir); removed {
			d.log.Info("swept state of an unfinished ephemeral join", "hostname", host, "was", holder)
		}
		release()
	}
}

// recoveryFailed logs why rec's endpoint could not be recovered and keeps it
// for `tslink status` until a later attempt succeeds. It returns false: try
// again.
func (d *Driver) recoveryFailed(rec record, err error) bool {
	d.countRecovery(RecoveryPluginRestart, err)
	d.log.Error("recovering endpoint", "container", rec.ContainerName, "err", err)
	d.setUnrecovered(rec, err)
	return false
}

// unrecovered is an endpoint of a running container that recovery has not
// brought back yet, with the last attempt's error.
type unrecovered struct {
	rec record
	err string
}

// recoverRetry is the pause between recovery attempts of an endpoint.
const recoverRetry = 10 * time.Second

// restoreSettle bounds recovery's wait for the engine to finish restoring.
const restoreSettle = 2 * time.Minute

// recoverOne recovers or sweeps one endpoint. It reports false if it should
// be tried again later.
func (d *Driver) recoverOne(ctx context.Context, rec record) (done bool) {
	if d.lookup(rec.EndpointID) != nil {
		return true
	}
	sandbox := rec.SandboxKey
	nsPath, err := d.cfg.ResolvePath(sandbox)
	if sandbox == "" || err != nil || !isNetNS(nsPath) {
		d.log.Info("sweeping endpoint of a gone container", "container", rec.ContainerName, "hostname", rec.Hostname)
		deleteLink(ctrLinkName(rec.EndpointID))
		stack.DeleteHostTUN(rec.EndpointID)
		d.removeRecord(rec.EndpointID)
		stateDir := d.dir.Node(rec.Hostname)
		if statedir.IsEphemeral(stateDir) {
			if release, ok := d.holdHostname(rec.Hostname, rec.ContainerName, nil); ok {
				if err := statedir.RemoveNodeDir(stateDir); err != nil {
					d.log.Warn("state dir not removed", "hostname", rec.Hostname, "err", err)
				}
				release()
			}
		}
		return true
	}
	nw, err := d.networkFor(rec.NetworkID)
	if err != nil {
		return d.recoveryFailed(rec, err)
	}
	ep := d.newEndpoint(rec.EndpointID, rec.NetworkID, rec.ContainerID, rec.ContainerName, rec.SandboxKey, rec.Hostname, rec.Serve)
	ep.ssh = rec.SSH
	ep.egress = rec.Egress
	authKey, err := d.authKeyFor(nw, ep.stateDir)
	if err != nil {
		return d.recoveryFailed(rec, err)
	}
	close(ep.attached) // no attach goroutine: adopted or attached below
	if err := d.reserve(ep, time.Now()); err != nil {
		d.log.Error("recovering endpoint", "container", rec.ContainerName, "err", err)
		return true // another endpoint holds the hostname now
	}
	os.MkdirAll(ep.stateDir, 0o700) // deleted by hand: an ephemeral node logs in afresh
	if err := d.openDebugLog(ep); err != nil {
		d.unreserve(ep)
		return d.recoveryFailed(rec, err)
	}
	began := time.Now()
	ep.debugLog.Logf("tslink: recover: container %s endpoint %s: adopting tailscale0", rec.ContainerName, short(rec.EndpointID))
	err = d.startNode(ctx, ep, nw, authKey, rec.Tags, nsPath, nw.Timeout)
	if errors.Is(err, stack.ErrNoTUN) {
		// tailscale0 did not survive (e.g. the previous process closed
		// it): give the running container a new one.
		ep.debugLog.Logf("tslink: recover: no tailscale0 to adopt; creating one")
		if err = d.startNode(ctx, ep, nw, authKey, rec.Tags, "", nw.Timeout); err == nil {
			err = ep.node.Attach(nsPath)
		}
	}
	if errors.Is(err, errEndpointGone) {
		ep.debugLog.Close()
		return true // Leave came during recovery and removed it
	}
	if err != nil {
		ep.debugLog.Logf("tslink: recover: %v (retrying every %v)", err, recoverRetry)
		<-stack.TeardownDone(err) // the node holds its dir until it is gone
		ep.debugLog.Close()
		d.unreserve(ep)
		return d.recoveryFailed(rec, err)
	}
	d.countRecovery(RecoveryPluginRestart, nil)
	v4, _ := ep.node.Addrs()
	ep.debugLog.Logf("tslink: recovered in %v", time.Since(began).Round(time.Millisecond))
	d.log.Info("endpoint recovered", "container", rec.ContainerName, "hostname", rec.Hostname, "ipv4", v4, "took", time.Since(began).Round(time.Millisecond))
	return true
}
