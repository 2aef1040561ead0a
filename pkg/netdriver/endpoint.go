package netdriver

import (
	"context"
	"errors"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/boundedlog"
	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
	"github.com/tslink/tslink/stack"
)

// endpoint is one container on a tslink network, from Join (or recovery)
// to Leave. While its Join runs it is in the table with node == nil.
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
	ssh           tsopts.SSH    // ts.ssh; the zero SSH: no SSH server
	egress        tsopts.Egress // ts.accept-routes, ts.advertise-*, ts.exit-node*
	node          Node          // nil while Join starts it; read through d.nodeOf from other goroutines
	debugLog      *boundedlog.File
	cancel        context.CancelFunc // stops the attach goroutine
	attached      chan struct{}      // closed when the attach goroutine ends
	startErr      string             // why a node started in the background is not up yet; guarded by d.mu
}

// newEndpoint is the endpoint for a Join or a recovered record; its debug
// log is not open yet ([Driver.openDebugLog]).
func (d *Driver) newEndpoint(endpointID, networkID, containerID, containerName, sandboxKey, hostname string, serve tsopts.Serve) *endpoint {
	return &endpoint{
		id:            endpointID,
		networkID:     networkID,
		containerID:   containerID,
		containerName: containerName,
		sandboxKey:    sandboxKey,
		hostname:      hostname,
		stateDir:      d.dir.Node(hostname),
		serve:         serve,
		attached:      make(chan struct{}),
	}
}

// openDebugLog opens ep's debug.log in its state dir, which must exist.
func (d *Driver) openDebugLog(ep *endpoint) error {
	f, err := boundedlog.Open(statedir.DebugLog(ep.stateDir), 0)
	if err != nil {
		return err
	}
	ep.debugLog = f
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
// Docker released the sandbox) and a TUN that never reached the container.
// Idempotent; dockerd also calls it to roll back a failed Join.
func (d *Driver) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	if ep := d.lookup(req.EndpointID); ep != nil {
		d.closeEndpoint(ep)
	}
	d.removeRecord(req.EndpointID)
	return errors.Join(deleteLink(ctrLinkName(req.EndpointID)), stack.DeleteHostTUN(req.EndpointID))
}

// EndpointInfo reports the endpoint's tailnet identity once its node is up
// (nothing while its Join runs).
func (d *Driver) EndpointInfo(req *network.InfoRequest) (*network.InfoResponse, error) {
	val := map[string]string{}
	if ep := d.lookup(req.EndpointID); ep != nil {
		if node, _ := d.nodeOf(ep); node != nil {
			v4, v6 := node.Addrs()
			val["tailscale.hostname"] = ep.hostname
			val["tailscale.ipv4"] = v4.String()
			val["tailscale.ipv6"] = v6.String()
		}
	}
	return &network.InfoResponse{Value: val}, nil
}

// sshConfig is ep's node's SSH server: ts.ssh's allow-list, sessions run
// in ep's container.
func (d *Driver) sshConfig(ep *endpoint) stack.SSHConfig {
	if !ep.ssh.Enabled() || d.cfg.Exec == nil {
		return stack.SSHConfig{}
	}
	return stack.SSHConfig{Allow: ep.ssh, Exec: d.cfg.Exec(ep.containerID)}
}
