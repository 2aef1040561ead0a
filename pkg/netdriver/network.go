package netdriver

import (
	"context"
	"fmt"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/tsopts"
)

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
	nw, err := d.parseNetwork(genericOptions(req.Options))
	if err != nil {
		return err
	}
	if err := ensureParent(parentName(req.NetworkID)); err != nil {
		return err
	}
	d.setNetwork(req.NetworkID, nw)
	d.log.Info("network created", "network", short(req.NetworkID), "control", controlName(nw.ControlURL), "ephemeral", nw.Ephemeral, "tags", nw.Tags)
	return nil
}

// DeleteNetwork closes what is left of the network's endpoints and removes
// its parent device. Docker refuses `network rm` while containers are attached, so
// normally nothing is left. Idempotent.
func (d *Driver) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	for _, ep := range d.dropNetwork(req.NetworkID) {
		d.closeEndpoint(ep)
	}
	if err := deleteLink(parentName(req.NetworkID)); err != nil {
		return err
	}
	d.log.Info("network deleted", "network", short(req.NetworkID))
	return nil
}

func (d *Driver) parseNetwork(opts map[string]string) (*tsopts.Network, error) {
	nw, err := tsopts.ParseNetwork(opts, d.cfg.Env)
	if err != nil {
		return nil, err
	}
	if !nw.HasAuthKey() {
		return nil, fmt.Errorf("no auth key: pass --opt %s=tskey-auth-… (or --opt %s=<file in %s>), or set the plugin's TS_AUTHKEY with `docker plugin set`", tsopts.OptAuthKey, tsopts.OptAuthKeyFile, d.dir.HostKeysDir())
	}
	if nw.AuthKeyFile != "" {
		if _, err := d.readKeyFile(nw.AuthKeyFile); err != nil {
			return nil, err
		}
	}
	return nw, nil
}

// networkFor returns the network's options: from CreateNetwork, or (after a
// plugin restart) re-read from dockerd, which keeps them.
func (d *Driver) networkFor(networkID string) (*tsopts.Network, error) {
	if nw := d.network(networkID); nw != nil {
		return nw, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	opts, err := d.cfg.Docker.NetworkOptions(ctx, networkID)
	if err != nil {
		return nil, err
	}
	nw, err := d.parseNetwork(opts)
	if err != nil {
		return nil, err
	}
	d.setNetwork(networkID, nw)
	return nw, nil
}

// authKey is the network's auth key: its ts.authkey (or the plugin's
// TS_AUTHKEY), or the content of its ts.authkey-file, read now.
func (d *Driver) authKey(nw *tsopts.Network) (string, error) {
	if nw.AuthKeyFile != "" {
		return d.readKeyFile(nw.AuthKeyFile)
	}
	return nw.AuthKey, nil
}

func (d *Driver) readKeyFile(name string) (string, error) { return d.dir.ReadKey(name) }
