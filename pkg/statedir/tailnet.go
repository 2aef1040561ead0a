package statedir

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tslink/tslink/pkg/nodespec"
)

// Tailnet is a node dir's tailnet record: which control server the identity
// belongs to, whether it is ephemeral and the tags it registered with. A
// node's identity must never be offered to another control server, a
// persistent identity must not be taken (and, at stop, logged out) by a
// container of an ephemeral network, and control refuses to change a node's
// tags without a new login (it expires the node key), so a container asking
// for other tags is refused up front.
//
// On disk it is two lines: "<control URL or 'tailscale default'>
// persistent|ephemeral" and "tags: <comma-separated>|none". Records written
// by older versions may lack the kind or the tags line.
type Tailnet struct {
	ControlURL string // "" for Tailscale's
	Ephemeral  bool
	Tags       []string

	kindKnown bool // the record has the kind; false for old records
	tagsKnown bool // the record has the tags line; false for old records
}

func controlName(u string) string {
	if u == "" {
		return "tailscale default"
	}
	return u
}

func (t Tailnet) kind() string {
	if t.Ephemeral {
		return "ephemeral"
	}
	return "persistent"
}

func (t Tailnet) tagsLine() string {
	if len(t.Tags) == 0 {
		return "tags: none"
	}
	return "tags: " + strings.Join(t.Tags, ",")
}

func (t Tailnet) describe() string {
	shown := controlName(t.ControlURL)
	if t.ControlURL != "" {
		shown = nodespec.ControlDisplay(t.ControlURL)
	}
	return t.kind() + " node of the tailnet at " + shown
}

// ReadTailnet reads nodeDir's tailnet record; ok is false if there is none
// (a new dir, or one a node never came up in).
func ReadTailnet(nodeDir string) (t Tailnet, ok bool) {
	b, err := os.ReadFile(filepath.Join(nodeDir, TailnetFileName))
	if err != nil {
		return Tailnet{}, false
	}
	line, tags, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	control := line
	for _, k := range []string{"persistent", "ephemeral"} {
		if c, found := strings.CutSuffix(line, " "+k); found {
			control, t.Ephemeral, t.kindKnown = c, k == "ephemeral", true
		}
	}
	if control != controlName("") {
		t.ControlURL = control
	}
	if list, found := strings.CutPrefix(tags, "tags: "); found {
		t.tagsKnown = true
		if list != "none" {
			t.Tags = strings.Split(list, ",")
		}
	}
	return t, true
}

// IsEphemeral reports whether nodeDir's tailnet record says its node is
// ephemeral (false if there is none).
func IsEphemeral(nodeDir string) bool {
	t, ok := ReadTailnet(nodeDir)
	return ok && t.Ephemeral
}

// WriteTailnet writes t as nodeDir's tailnet record (0600).
func WriteTailnet(nodeDir string, t Tailnet) error {
	data := controlName(t.ControlURL) + " " + t.kind() + "\n" + t.tagsLine() + "\n"
	return os.WriteFile(filepath.Join(nodeDir, TailnetFileName), []byte(data), 0o600)
}

// Check reports whether a node asking for want may use the identity this
// record describes. The error names hostname, the dir as the host sees it
// (hostDir) and what the user can do.
func (t Tailnet) Check(want Tailnet, hostname, hostDir string) error {
	if t.ControlURL != want.ControlURL || (t.kindKnown && t.Ephemeral != want.Ephemeral) {
		return fmt.Errorf("hostname %s: %s holds the identity of a %s, and this network wants a %s: use another %s, or remove that dir to start a new identity",
			hostname, hostDir, t.describe(), want.describe(), labelHostname)
	}
	if t.tagsKnown && t.tagsLine() != want.tagsLine() {
		return fmt.Errorf("hostname %s: the node was registered with %s and this container asks for %s; Tailscale only changes a node's tags through a new login: use the same tags, another %s, or remove %s to start a new identity",
			hostname, t.tagsLine(), want.tagsLine(), labelHostname, hostDir)
	}
	return nil
}
