package statedir

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	gossh "golang.org/x/crypto/ssh"
)

// SSHHostKeyName is the file in a node's dir holding the node's SSH host
// key (ts.ssh): an ed25519 private key in OpenSSH's PEM form, 0600.
const SSHHostKeyName = "ssh_host_ed25519_key"

// SSHHostKey returns the node's SSH host key from nodeDir, creating it the
// first time. The key lives as long as the dir: a persistent node shows the
// same key after every restart, an ephemeral node (whose dir goes with its
// container) a new one each time. Concurrent first calls agree on one key
// (the file is linked into place, never overwritten). A file that does not
// parse is an error naming it: removing it makes a new key.
func SSHHostKey(nodeDir string) (gossh.Signer, error) {
	p := filepath.Join(nodeDir, SSHHostKeyName)
	if b, err := os.ReadFile(p); err == nil {
		s, err := gossh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("SSH host key %s: %w (remove it for a new key)", p, err)
		}
		return s, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("SSH host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := createOnce(p, pem.EncodeToMemory(block)); err != nil {
		return nil, fmt.Errorf("SSH host key %s: %w", p, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("SSH host key: %w", err)
	}
	return gossh.ParsePrivateKey(b)
}
