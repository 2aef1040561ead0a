package netdriver

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tslink/tslink/pkg/statedir"
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

// tailnetRanges are the ranges a tslink container routes (in part) to
// tailscale0: Tailscale's CGNAT range and its ULA range.
var tailnetRanges = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fd7a:115c:a1e0::/48"),
}

// checkSubnets refuses a network whose address pools (the IPAM data Docker
// sends in CreateNetwork, from `--subnet` or its default pools) overlap a
// tailnet range: its containers' peers and addresses would collide with
// the tailnet's.
func checkSubnets(req *network.CreateNetworkRequest) error {
	for _, data := range append(slices.Clone(req.IPv4Data), req.IPv6Data...) {
		if data == nil || data.Pool == "" {
			continue
		}
		pool, err := netip.ParsePrefix(data.Pool)
		if err != nil {
			continue // Docker validated it; nothing of ours to check
		}
		for _, r := range tailnetRanges {
			if r.Overlaps(pool) {
				return fmt.Errorf("subnet %s (--subnet) overlaps the tailnet's %s (where Tailscale numbers its nodes): choose a subnet outside 100.64.0.0/10 and fd7a:115c:a1e0::/48", pool, r)
			}
		}
	}
	return nil
}

// CreateNetwork validates the options and creates the network's parent
// device.
func (d *Driver) CreateNetwork(req *network.CreateNetworkRequest) error {
	if err := checkSubnets(req); err != nil {
		return err
	}
	opts := genericOptions(req.Options)
	nw, err := d.parseNetwork(opts)
	if err != nil {
		return err
	}
	if _, err := d.authKey(nw); err != nil {
		return err
	}
	if err := d.saveNetwork(req.NetworkID, opts); err != nil {
		return fmt.Errorf("recording the network's options in %s: %w", d.cfg.HostStateRoot, err)
	}
	if err := ensureParent(parentName(req.NetworkID)); err != nil {
		d.removeNetworkRecord(req.NetworkID)
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
	d.removeNetworkRecord(req.NetworkID)
	d.log.Info("network deleted", "network", short(req.NetworkID))
	return nil
}

func (d *Driver) parseNetwork(opts map[string]string) (*tsopts.Network, error) {
	nw, err := tsopts.ParseNetwork(opts, d.cfg.Env)
	if err != nil {
		return nil, err
	}
	if !nw.HasAuthKey() {
		return nil, fmt.Errorf("no auth key: pass --opt %s=tskey-auth-… or an OAuth client secret tskey-client-… (or --opt %s=<file in %s>), or set the plugin's TS_AUTHKEY with `docker plugin set`", tsopts.OptAuthKey, tsopts.OptAuthKeyFile, d.dir.HostKeysDir())
	}
	return nw, nil
}

// networkFor returns the network's options: from memory, else from the
// plugin's own record (CreateNetwork wrote it), else, for networks created
// before tslink kept records, from the engine's on-disk store, which is then
// recorded. None of these asks the Docker API.
func (d *Driver) networkFor(networkID string) (*tsopts.Network, error) {
	if nw := d.network(networkID); nw != nil {
		return nw, nil
	}
	opts, err := d.loadNetwork(networkID)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			// A damaged record must not keep the network's containers
			// off the tailnet: the engine's store has the options too.
			d.log.Error("unreadable network record; reading the options from the engine's store", "network", short(networkID), "err", err)
		}
		if opts, err = d.cfg.Engine.NetworkOptions(networkID); err == nil {
			d.keepOlderBehaviour(networkID, opts)
			if serr := d.saveNetwork(networkID, opts); serr != nil {
				d.log.Warn("recording network options", "network", short(networkID), "err", serr)
			} else {
				d.log.Info("network options recorded from the engine's store", "network", short(networkID))
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: reading its options: %w", short(networkID), err)
	}
	nw, err := d.parseNetwork(opts)
	if err != nil {
		return nil, err
	}
	d.setNetwork(networkID, nw)
	return nw, nil
}

// authKey is the network's auth key (or OAuth client secret): its
// ts.authkey (or the plugin's TS_AUTHKEY), or the content of its
// ts.authkey-file, read and checked ([tsopts.CheckAuthKey]) now.
func (d *Driver) authKey(nw *tsopts.Network) (string, error) {
	if nw.AuthKeyFile != "" {
		key, err := d.readKeyFile(nw.AuthKeyFile)
		if err == nil {
			err = tsopts.CheckAuthKey(key, tsopts.KeyFileSource(nw.AuthKeyFile), nw)
		}
		return key, err
	}
	return nw.AuthKey, nil
}

func (d *Driver) readKeyFile(name string) (string, error) { return d.dir.ReadKey(name) }

// authKeyFor is the network's auth key for the node in nodeDir. A node
// whose state holds a node key starts without one (stack.Start logs in
// with a key only when control asks), so a key file that cannot be read
// (removed after the key expired, say) stops only new identities.
func (d *Driver) authKeyFor(nw *tsopts.Network, nodeDir string) (string, error) {
	key, err := d.authKey(nw)
	if err != nil {
		if st, serr := os.Stat(statedir.StateFile(nodeDir)); serr == nil && st.Size() > 0 {
			d.log.Warn("auth key unreadable; the node starts from its state", "dir", nodeDir, "err", err)
			return "", nil
		}
	}
	return key, err
}

// keepOlderBehaviour adds to the options of a network created by an earlier
// tslink (it has no record) what that version allowed without an option, so
// that its containers keep starting after an upgrade: a plain http control
// URL to a host other than loopback. It logs what it kept.
func (d *Driver) keepOlderBehaviour(networkID string, opts map[string]string) {
	control := opts[tsopts.OptControlURL]
	if control == "" {
		control = d.cfg.Env.ControlURL
	}
	if _, set := opts[tsopts.OptInsecureControl]; set || !strings.HasPrefix(strings.ToLower(strings.TrimSpace(control)), "http://") {
		return
	}
	opts[tsopts.OptInsecureControl] = "true"
	d.log.Warn("network created by an earlier tslink uses a plain http control server; kept working as "+tsopts.OptInsecureControl+"=true (recreate the network with that option to make it explicit)", "network", short(networkID))
}
