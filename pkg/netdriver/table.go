package netdriver

import (
	"context"
	"fmt"
	"time"

	"github.com/tslink/tslink/pkg/tsopts"
)

// The driver's tables under d.mu: the endpoint table (joined endpoints, and
// endpoints whose Join is in flight, kept with node == nil so that two
// concurrent Joins cannot take one hostname or put one container on two
// tslink networks), the network options cache and the endpoints recovery
// has not brought back. Only the accessors below take d.mu for them.

// lookup returns the endpoint with the given ID, or nil.
func (d *Driver) lookup(endpointID string) *endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.endpoints[endpointID]
}

// reserve puts ep in the table unless its container is already on a tslink
// network or another endpoint has its hostname. A hostname whose node is
// still being released (closed, its dir removed: [Driver.takeLeaving]) is
// waited for until deadline.
func (d *Driver) reserve(ep *endpoint, deadline time.Time) error {
	for {
		d.mu.Lock()
		for _, o := range d.endpoints {
			if o.containerID == ep.containerID && o.id != ep.id {
				d.mu.Unlock()
				return fmt.Errorf("container %s is already on tslink network %s: a container can be on one tslink network only", ep.containerName, short(o.networkID))
			}
		}
		for _, o := range d.endpoints {
			if o.hostname == ep.hostname && o.id != ep.id {
				d.mu.Unlock()
				return fmt.Errorf("hostname %q (from label %s or the container name) is already used by running container %s; give this container another %s", ep.hostname, tsopts.LabelHostname, o.containerName, tsopts.LabelHostname)
			}
		}
		l, isLeaving := d.leaving[ep.hostname]
		if !isLeaving {
			d.endpoints[ep.id] = ep
			d.mu.Unlock()
			return nil
		}
		d.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-l.done:
			t.Stop()
		case <-t.C:
			return fmt.Errorf("hostname %q (from label %s or the container name) is still being released by stopped container %s; try again in a moment", ep.hostname, tsopts.LabelHostname, l.containerName)
		}
	}
}

// leaving is a hostname whose node is being stopped for good.
type leaving struct {
	containerName string
	done          chan struct{} // closed when the node is closed and its dir removed
}

// takeLeaving is take for an endpoint stopped for good: ep leaves the
// table, but its hostname stays reserved until the caller calls release,
// after its node is closed and its dir removed, so that a new node with the
// same hostname cannot take the dir meanwhile.
func (d *Driver) takeLeaving(ep *endpoint) (release func(), ok bool) {
	return d.holdHostname(ep.hostname, ep.containerName, ep)
}

// holdHostname reserves hostname for removing its node dir (recovery's
// sweep): it reports false if an endpoint has the hostname or it is already
// held. With ep set, it also takes ep from the table (ep's own hostname:
// [Driver.takeLeaving]).
func (d *Driver) holdHostname(hostname, holder string, ep *endpoint) (release func(), ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ep != nil {
		if d.endpoints[ep.id] != ep {
			return nil, false
		}
		delete(d.endpoints, ep.id)
	} else {
		for _, o := range d.endpoints {
			if o.hostname == hostname {
				return nil, false
			}
		}
	}
	if _, held := d.leaving[hostname]; held {
		return nil, false
	}
	l := leaving{containerName: holder, done: make(chan struct{})}
	d.leaving[hostname] = l
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.leaving, hostname)
		close(l.done)
	}, true
}

// unreserve removes ep from the table if it is still there.
func (d *Driver) unreserve(ep *endpoint) { d.take(ep) }

// take removes ep from the table and reports whether it was there: of
// concurrent callers exactly one gets true and stops ep.
func (d *Driver) take(ep *endpoint) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.endpoints[ep.id] != ep {
		return false
	}
	delete(d.endpoints, ep.id)
	return true
}

// setNode records node as ep's started node, unless ep left the table
// meanwhile (then it reports false and the caller owns node).
func (d *Driver) setNode(ep *endpoint, node Node, ephemeral bool, tags []string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.endpoints[ep.id] != ep {
		return false
	}
	ep.node = node
	ep.ephemeral = ephemeral
	ep.tags = tags
	return true
}

// nodeOf returns ep's node (nil while its Join runs) and why a node started
// in the background is not up yet.
func (d *Driver) nodeOf(ep *endpoint) (_ Node, startErr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return ep.node, ep.startErr
}

// setStartErr records why ep's node is not up yet, for `tslink status`
// (nil: it is).
func (d *Driver) setStartErr(ep *endpoint, err error) {
	msg := ""
	if err != nil {
		msg = err.Error() + " (retrying in the background)"
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ep.startErr = msg
}

// setCancel gives ep the cancel of the goroutine that will attach its
// tailscale0 (and first start its node, for a background start) and the
// tags its node asks for, unless ep left the table meanwhile: then it
// reports false and no such goroutine may start.
func (d *Driver) setCancel(ep *endpoint, cancel context.CancelFunc, tags []string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.endpoints[ep.id] != ep {
		return false
	}
	ep.cancel = cancel
	ep.tags = tags
	return true
}

// cancelOf returns the cancel setCancel gave ep, or nil.
func (d *Driver) cancelOf(ep *endpoint) context.CancelFunc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return ep.cancel
}

// previousEndpoint returns the endpoint ep's container had in another
// sandbox (before an engine restart), or nil.
func (d *Driver) previousEndpoint(ep *endpoint) *endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	var old *endpoint
	for _, o := range d.endpoints {
		if o.containerID == ep.containerID && o.id != ep.id && o.sandboxKey != "" && o.sandboxKey != ep.sandboxKey {
			old = o
		}
	}
	return old
}

// list returns the endpoints in the table, in no order.
func (d *Driver) list() []*endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*endpoint, 0, len(d.endpoints))
	for _, ep := range d.endpoints {
		out = append(out, ep)
	}
	return out
}

// startedEndpoints returns the endpoints whose node is up.
func (d *Driver) startedEndpoints() []*endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*endpoint
	for _, ep := range d.endpoints {
		if ep.node != nil {
			out = append(out, ep)
		}
	}
	return out
}

// hostnameInUse reports whether an endpoint in the table, or one being
// released, has hostname.
func (d *Driver) hostnameInUse(hostname string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.leaving[hostname]; ok {
		return true
	}
	for _, ep := range d.endpoints {
		if ep.hostname == hostname {
			return true
		}
	}
	return false
}

// network returns the cached options of a network, or nil.
func (d *Driver) network(networkID string) *tsopts.Network {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.networks[networkID]
}

func (d *Driver) setNetwork(networkID string, nw *tsopts.Network) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.networks[networkID] = nw
}

// dropNetwork forgets a network's options and returns its endpoints still
// in the table.
func (d *Driver) dropNetwork(networkID string) []*endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	var left []*endpoint
	for _, ep := range d.endpoints {
		if ep.networkID == networkID {
			left = append(left, ep)
		}
	}
	delete(d.networks, networkID)
	return left
}

// setUnrecovered keeps rec's endpoint, with the last error, for `tslink
// status` until recovered is called for it.
func (d *Driver) setUnrecovered(rec record, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.unrecovered[rec.EndpointID] = unrecovered{rec: rec, err: err.Error()}
}

// recovered forgets an endpoint recovery failed on.
func (d *Driver) recovered(endpointID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.unrecovered, endpointID)
}

// unrecoveredEndpoints returns the endpoints recovery failed on that are
// not in the endpoint table.
func (d *Driver) unrecoveredEndpoints() []unrecovered {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []unrecovered
	for id, u := range d.unrecovered {
		if _, ok := d.endpoints[id]; !ok {
			out = append(out, u)
		}
	}
	return out
}
