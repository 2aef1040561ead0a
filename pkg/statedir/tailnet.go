package statedir

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tslink/tslink/pkg/nodespec"
)

// Tailnet is a node dir's tailnet record: which control server and tailnet
// the identity belongs to, which auth key source created it, whether it is
// ephemeral and the tags it registered with. A node's identity must never be
// offered to another control server or tailnet (every tailnet on
// Tailscale's service shares one control URL, so the key source and the
// tailnet's name tell them apart), a persistent identity must not be taken
// (and, at stop, logged out) by a container of an ephemeral network, and
// control refuses to change a node's tags without a new login (it expires
// the node key), so a container asking for other tags is refused up front.
// The network ID is not part of it: `docker compose down/up` recreates
// networks, and their nodes must keep their identities.
//
// On disk it is lines: "<control URL or 'tailscale default'>
// persistent|ephemeral", "tags: <comma-separated>|none", "key: <key
// source>" and "name: <tailnet name>". Records written by older versions
// may lack the kind and the later lines; what a record lacks is not checked,
// and the next start of the node records it (the identity is bound from
// then on).
type Tailnet struct {
	ControlURL string // "" for Tailscale's
	Ephemeral  bool
	Tags       []string
	// KeySource names the auth key source that created the identity,
	// never the key: [KeySourceFile] or [Dir.KeySourceInline]; "" unknown
	// (an old record).
	KeySource string
	// Name is the tailnet's name (the MagicDNS suffix, e.g.
	// tail1234.ts.net) from the node's first netmap; "" unknown.
	Name string

	kindKnown bool // the record has the kind; false for old records
	tagsKnown bool // the record has the tags line; false for old records
}

// KeySourceFile is the key source of an auth key file (ts.authkey-file):
// rewriting the file with a new key (rotation) keeps identities bound to it.
func KeySourceFile(name string) string { return "file:" + name }

// keySourceHMAC prefixes the keyed hash of an inline key.
const keySourceHMAC = "hmac-sha256:"

// describeKeySource names a key source in messages, never a hash.
func describeKeySource(s string) string {
	if name, ok := strings.CutPrefix(s, "file:"); ok {
		return "auth key file " + name + " (" + optAuthKeyFile + ")"
	}
	return "an inline auth key (ts.authkey or the plugin's TS_AUTHKEY)"
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

func other(desc, have, want string) string {
	if strings.HasPrefix(have, keySourceHMAC) && strings.HasPrefix(want, keySourceHMAC) {
		return "another inline auth key"
	}
	return desc
}

// CheckName reports whether a node that came up in the tailnet named name
// (its MagicDNS suffix; "" unknown) may keep the identity this record
// describes: a node that logged in again with its network's key (control
// asked it to) may have landed in another tailnet.
func (t Tailnet) CheckName(name, hostname, hostDir string) error {
	if t.Name == "" || name == "" || name == t.Name {
		return nil
	}
	return fmt.Errorf("hostname %s: %s holds the identity of a node of tailnet %s, and the node came up in tailnet %s: use another %s, or remove that dir to start a new identity (if the tailnet was renamed, delete the name: line of %s/%s)",
		hostname, hostDir, t.Name, name, labelHostname, hostDir, TailnetFileName)
}

// ReadTailnet reads nodeDir's tailnet record; ok is false if there is none
// (a new dir, or one a node never came up in).
func ReadTailnet(nodeDir string) (t Tailnet, ok bool) {
	b, err := os.ReadFile(filepath.Join(nodeDir, TailnetFileName))
	if err != nil {
		return Tailnet{}, false
	}
	line, rest, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	var tags string
	for _, l := range strings.Split(rest, "\n") {
		switch {
		case strings.HasPrefix(l, "tags: "):
			tags = l
		case strings.HasPrefix(l, "key: "):
			t.KeySource = strings.TrimPrefix(l, "key: ")
		case strings.HasPrefix(l, "name: "):
			t.Name = strings.TrimPrefix(l, "name: ")
		}
	}
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
	if t.KeySource != "" {
		data += "key: " + t.KeySource + "\n"
	}
	if t.Name != "" {
		data += "name: " + t.Name + "\n"
	}
	p := filepath.Join(nodeDir, TailnetFileName)
	if err := os.WriteFile(p+".tmp", []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

// Check reports whether a node asking for want may use the identity this
// record describes. The error names hostname, the dir as the host sees it
// (hostDir) and what the user can do.
func (t Tailnet) Check(want Tailnet, hostname, hostDir string) error {
	if t.ControlURL != want.ControlURL || (t.kindKnown && t.Ephemeral != want.Ephemeral) {
		return fmt.Errorf("hostname %s: %s holds the identity of a %s, and this network wants a %s: use another %s, or remove that dir to start a new identity",
			hostname, hostDir, t.describe(), want.describe(), labelHostname)
	}
	if t.KeySource != "" && want.KeySource != "" && t.KeySource != want.KeySource {
		return fmt.Errorf("hostname %s: %s holds the identity of a %s created with %s, and this network's key is %s (a key source stands for a tailnet; every tailnet of Tailscale's service shares its control URL): use another %s, or remove that dir to start a new identity",
			hostname, hostDir, t.describe(), describeKeySource(t.KeySource), other(describeKeySource(want.KeySource), t.KeySource, want.KeySource), labelHostname)
	}
	if t.tagsKnown && t.tagsLine() != want.tagsLine() {
		return fmt.Errorf("hostname %s: the node was registered with %s and this container asks for %s; Tailscale only changes a node's tags through a new login: use the same tags, another %s, or remove %s to start a new identity",
			hostname, t.tagsLine(), want.tagsLine(), labelHostname, hostDir)
	}
	return nil
}
