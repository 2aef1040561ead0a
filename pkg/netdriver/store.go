package netdriver

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tslink/tslink/pkg/tsopts"
)

// record is what tslink keeps of a joined endpoint in
// StateRoot/endpoints/<endpoint ID>.json, so that a new plugin process can
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
	Serve         tsopts.Serve // the ts.serve.*/ts.service/ts.direct labels, parsed
}

func (d *Driver) recordPath(endpointID string) string {
	return filepath.Join(d.cfg.StateRoot, "endpoints", endpointID+".json")
}

func (d *Driver) saveRecord(ep *endpoint, sandboxKey string) {
	rec := record{ep.id, ep.networkID, ep.containerID, ep.containerName, ep.hostname, ep.tags, sandboxKey, ep.serve}
	b, _ := json.Marshal(rec)
	p := d.recordPath(ep.id)
	os.MkdirAll(filepath.Dir(p), 0o700)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		os.Rename(tmp, p)
	}
}

func (d *Driver) removeRecord(endpointID string) { os.Remove(d.recordPath(endpointID)) }

func (d *Driver) loadRecords() []record {
	files, _ := filepath.Glob(filepath.Join(d.cfg.StateRoot, "endpoints", "*.json"))
	var out []record
	for _, f := range files {
		var rec record
		b, err := os.ReadFile(f)
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil || rec.EndpointID == "" {
			d.log.Error("unreadable endpoint record; its container's node is not recovered", "file", f, "err", err)
			continue
		}
		out = append(out, rec)
	}
	return out
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
