package netdriver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tslink/tslink/pkg/tsopts"
)

// networkRecord is what tslink keeps of a network in
// StateRoot/networks/<network ID>.json (0600 in the 0700 state dir): its
// `--opt` values as CreateNetwork got them, so that a Join after a plugin or
// engine restart has them without asking dockerd. They include an inline
// ts.authkey, which dockerd itself keeps in its own store
// (`docker network inspect` shows it); the record is never logged.
type networkRecord struct {
	NetworkID string
	Options   map[string]string
}

func (d *Driver) networkRecordPath(networkID string) string {
	return filepath.Join(d.cfg.StateRoot, "networks", networkID+".json")
}

func (d *Driver) saveNetwork(networkID string, opts map[string]string) error {
	b, err := json.Marshal(networkRecord{NetworkID: networkID, Options: opts})
	if err != nil {
		return err
	}
	p := d.networkRecordPath(networkID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func (d *Driver) loadNetwork(networkID string) (map[string]string, error) {
	b, err := os.ReadFile(d.networkRecordPath(networkID))
	if err != nil {
		return nil, err
	}
	var rec networkRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("network record %s: %w", d.networkRecordPath(networkID), err)
	}
	if rec.Options == nil {
		rec.Options = map[string]string{}
	}
	return rec.Options, nil
}

func (d *Driver) removeNetworkRecord(networkID string) { os.Remove(d.networkRecordPath(networkID)) }

// networkFor returns the network's options: from memory, else from the
// plugin's own record (CreateNetwork wrote it), else, for networks created
// before tslink kept records, from the engine's on-disk store, which is then
// recorded. None of these asks the Docker API.
func (d *Driver) networkFor(networkID string) (*tsopts.Network, error) {
	d.mu.Lock()
	nw := d.networks[networkID]
	d.mu.Unlock()
	if nw != nil {
		return nw, nil
	}
	opts, err := d.loadNetwork(networkID)
	if errors.Is(err, os.ErrNotExist) {
		if opts, err = d.cfg.Engine.NetworkOptions(networkID); err == nil {
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
	nw, err = d.parseNetwork(opts)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.networks[networkID] = nw
	d.mu.Unlock()
	return nw, nil
}
