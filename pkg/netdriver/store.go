package netdriver

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
)

// record is what tslink keeps of a joined endpoint in
// the state dir ([statedir.Dir.EndpointRecord]), so that a new plugin process can
// find running containers' nodes and sweep what belongs to gone ones. It
// holds no secret: the auth key is re-read from the network's options.
type record struct {
	EndpointID    string
	NetworkID     string
	ContainerID   string
	ContainerName string
	Hostname      string
	Tags          []string // what the node registered with; a node must keep asking for them
	SandboxKey    string
	Serve         tsopts.Serve  // the ts.serve.*/ts.service/ts.direct labels, parsed
	SSH           tsopts.SSH    `json:",omitzero"` // the ts.ssh label, parsed
	Egress        tsopts.Egress `json:",omitzero"` // the egress labels, parsed
}

func (d *Driver) saveRecord(ep *endpoint) {
	rec := record{ep.id, ep.networkID, ep.containerID, ep.containerName, ep.hostname, ep.tags, ep.sandboxKey, ep.serve, ep.ssh, ep.egress}
	b, _ := json.Marshal(rec)
	p := d.dir.EndpointRecord(ep.id)
	os.MkdirAll(filepath.Dir(p), 0o700)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, p)
	}
}

// hexID is the form of Docker's endpoint IDs.
var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (d *Driver) removeRecord(endpointID string) { os.Remove(d.dir.EndpointRecord(endpointID)) }

func (d *Driver) loadRecords() []record {
	files := d.dir.EndpointRecords()
	var out []record
	for _, f := range files {
		var rec record
		b, err := os.ReadFile(f)
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err == nil && (!hexID.MatchString(rec.EndpointID) || !tsopts.ValidHostname(rec.Hostname)) {
			// The hostname names a dir that recovery may remove.
			err = fmt.Errorf("endpoint ID %q or hostname %q is not valid", rec.EndpointID, rec.Hostname)
		}
		if err != nil {
			d.log.Error("unreadable endpoint record; its container's node is not recovered", "file", f, "err", err)
			continue
		}
		out = append(out, rec)
	}
	return out
}

// networkRecord is what tslink keeps of a network in the state dir
// ([statedir.Dir.NetworkRecord], 0600 in the 0700 state dir): its `--opt`
// values as CreateNetwork got them, so that a Join after a plugin or engine
// restart has them without asking dockerd. They include an inline
// ts.authkey, which dockerd itself keeps in its own store (`docker network
// inspect` shows it); the record is never logged.
type networkRecord struct {
	NetworkID string
	Options   map[string]string
}

func (d *Driver) saveNetwork(networkID string, opts map[string]string) error {
	b, err := json.Marshal(networkRecord{NetworkID: networkID, Options: opts})
	if err != nil {
		return err
	}
	p := d.dir.NetworkRecord(networkID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	// Written, synced, then renamed: a power cut leaves the old record or
	// the new one, never an empty file.
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, p)
}

func (d *Driver) loadNetwork(networkID string) (map[string]string, error) {
	b, err := os.ReadFile(d.dir.NetworkRecord(networkID))
	if err != nil {
		return nil, err
	}
	var rec networkRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("network record %s: %w", d.dir.NetworkRecord(networkID), err)
	}
	if rec.Options == nil {
		rec.Options = map[string]string{}
	}
	return rec.Options, nil
}

func (d *Driver) removeNetworkRecord(networkID string) { os.Remove(d.dir.NetworkRecord(networkID)) }

// checkTailnet refuses ep's node dir to a node asking for nw and tags if
// the dir holds another tailnet's identity ([statedir.Tailnet.Check]). An
// ephemeral identity left by a crash is removed instead: it is worth
// nothing, and no running container holds it (reserve checked).
func (d *Driver) checkTailnet(ep *endpoint, nw *tsopts.Network, tags []string) error {
	have, ok := statedir.ReadTailnet(ep.stateDir)
	if !ok {
		return nil
	}
	if have.Ephemeral {
		if err := statedir.RemoveNodeDir(ep.stateDir); err != nil {
			return fmt.Errorf("hostname %s: removing the state of an ephemeral node left by a crash: %w", ep.hostname, err)
		}
		return nil
	}
	want, err := d.tailnetOf(nw, tags)
	if err != nil {
		return err
	}
	return have.Check(want, ep.hostname, d.dir.HostNode(ep.hostname))
}

// tailnetOf is the tailnet record a node of nw asking for tags gets (the
// tailnet's name aside, which only the node's netmap gives): its key
// source is the key file's name, or a keyed hash of an inline key
// ([statedir.Dir.KeySourceInline]).
func (d *Driver) tailnetOf(nw *tsopts.Network, tags []string) (statedir.Tailnet, error) {
	t := statedir.Tailnet{ControlURL: nw.ControlURL, Ephemeral: nw.Ephemeral, Tags: tags}
	if nw.AuthKeyFile != "" {
		t.KeySource = statedir.KeySourceFile(nw.AuthKeyFile)
		return t, nil
	}
	src, err := d.dir.KeySourceInline(nw.AuthKey)
	if err != nil {
		return t, fmt.Errorf("binding the identity to its key: %w", err)
	}
	t.KeySource = src
	return t, nil
}
