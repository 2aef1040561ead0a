// Package statedir owns the on-disk layout of the plugin's state dir (the
// managed plugin's /data, which the host sees as
// /var/lib/docker-plugins/tailscale):
//
//	by-hostname/<hostname>/        one node's dir (its identity), see [Dir.Node]
//	    tailscaled.state           tsnet's state (the node key): [StateFileName]
//	    debug.log                  the node's backend log
//	    tailnet                    which tailnet the identity belongs to: [Tailnet]
//	    lock                       flock of the node running from the dir: [Lock]
//	    first-join                 present until the dir's first node came up: [MarkFirstJoin]
//	keys/<name>                    auth key files (ts.authkey-file): [Dir.ReadKey]
//	identity-secret                random HMAC key for inline key sources (0600): [Dir.KeySourceInline]
//	endpoints/<endpoint ID>.json   joined endpoints, for recovery
//	networks/<network ID>.json     network options, kept for Joins after a restart
//	tslink-status.sock             the status socket (`tslink status`)
//
// Every path has an in-plugin form (for I/O) and a host form (for messages
// to the user). Nothing here holds a secret except keys/, which it only
// reads, and identity-secret, which it creates.
package statedir

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// File names inside a node's dir.
const (
	// StateFileName is tsnet's state file (tsnet.Server with Dir set keeps
	// it there); its presence means the identity has been created.
	StateFileName = "tailscaled.state"
	// DebugLogName is the node's backend log.
	DebugLogName = "debug.log"
	// TailnetFileName is the tailnet record ([Tailnet]).
	TailnetFileName = "tailnet"
	// LockFileName is the file whose flock marks the dir as in use ([Lock]).
	LockFileName = "lock"
	// FirstJoinFileName marks a dir whose first node has not come up yet
	// ([MarkFirstJoin]).
	FirstJoinFileName = "first-join"
)

// MarkFirstJoin marks nodeDir, which a Join has just created, as holding no
// identity yet: until [FirstJoinDone], a plugin that dies mid-Join leaves a
// dir that the next one knows it may remove ([FirstJoinUnfinished]). Errors
// are the file system's.
func MarkFirstJoin(nodeDir string) error {
	return os.WriteFile(filepath.Join(nodeDir, FirstJoinFileName), nil, 0o600)
}

// FirstJoinDone removes nodeDir's [MarkFirstJoin] mark: its node came up and
// its tailnet record is written. A missing mark is no error.
func FirstJoinDone(nodeDir string) error {
	err := os.Remove(filepath.Join(nodeDir, FirstJoinFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// FirstJoinUnfinished reports whether nodeDir still has its [MarkFirstJoin]
// mark: its first node never came up (or the plugin died before it could
// say so).
func FirstJoinUnfinished(nodeDir string) bool {
	_, err := os.Lstat(filepath.Join(nodeDir, FirstJoinFileName))
	return err == nil
}

// StatusSocketName is the status socket's name in the state dir.
const StatusSocketName = "tslink-status.sock"

// Dir is the plugin's state dir: Root as this process sees it, HostRoot as
// the host sees it (for messages; Root if empty).
type Dir struct {
	Root, HostRoot string
}

// New returns the state dir at root, shown to the user as hostRoot ("" means
// root).
func New(root, hostRoot string) Dir {
	if hostRoot == "" {
		hostRoot = root
	}
	return Dir{Root: root, HostRoot: hostRoot}
}

// NodesDir holds one dir per node, by hostname.
func (d Dir) NodesDir() string { return filepath.Join(d.Root, "by-hostname") }

// Node is the dir of the node named hostname.
func (d Dir) Node(hostname string) string { return filepath.Join(d.NodesDir(), hostname) }

// HostNode is [Dir.Node] as the host sees it.
func (d Dir) HostNode(hostname string) string {
	return filepath.Join(d.HostRoot, "by-hostname", hostname)
}

// NodeDirs lists the node dirs present.
func (d Dir) NodeDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(d.NodesDir(), "*"))
	return dirs
}

// DebugLog is the debug log in a node dir.
func DebugLog(nodeDir string) string { return filepath.Join(nodeDir, DebugLogName) }

// HostDebugLog is the debug log of the node named hostname as the host sees
// it.
func (d Dir) HostDebugLog(hostname string) string {
	return DebugLog(d.HostNode(hostname))
}

// StateFile is tsnet's state file in a node dir.
func StateFile(nodeDir string) string { return filepath.Join(nodeDir, StateFileName) }

// HostKeysDir is where the user puts auth key files, as the host sees it.
func (d Dir) HostKeysDir() string { return filepath.Join(d.HostRoot, "keys") }

// ReadKey reads the auth key in keys/<name> (option ts.authkey-file). Its
// errors name the option and the file as the host sees it, never the key.
func (d Dir) ReadKey(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.Root, "keys", name))
	hostPath := filepath.Join(d.HostKeysDir(), name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("option %s=%s: %s does not exist; write the auth key there (mode 0600)", optAuthKeyFile, name, hostPath)
		}
		return "", fmt.Errorf("option %s=%s: reading %s: %v", optAuthKeyFile, name, hostPath, errors.Unwrap(err))
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return "", fmt.Errorf("option %s=%s: %s is empty", optAuthKeyFile, name, hostPath)
	}
	return key, nil
}

// identitySecretName is the random key of inline key sources' HMAC.
const identitySecretName = "identity-secret"

// KeySourceInline is the key source of an inline auth key (ts.authkey or
// the plugin's TS_AUTHKEY): an HMAC-SHA256 of the key under a random
// 32-byte secret that this state dir keeps (identity-secret, 0600, created
// at first use), so that a tailnet record never holds anything from which
// the key could be found, even by trying candidate keys.
func (d Dir) KeySourceInline(key string) (string, error) {
	secret, err := d.identitySecret()
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(key))
	return keySourceHMAC + hex.EncodeToString(m.Sum(nil)), nil
}

func (d Dir) identitySecret() ([]byte, error) {
	p := filepath.Join(d.Root, identitySecretName)
	shown := filepath.Join(d.HostRoot, identitySecretName)
	if b, err := os.ReadFile(p); err == nil && len(b) == 32 {
		return b, nil
	} else if err == nil || !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: want 32 bytes (%v); removing it makes a new one, which unbinds the identities made with inline keys", shown, err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	if err := os.MkdirAll(d.Root, 0o700); err != nil {
		return nil, err
	}
	if err := createOnce(p, secret); err != nil {
		return nil, fmt.Errorf("creating %s: %w", shown, err)
	}
	b, err := os.ReadFile(p)
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("reading %s: want 32 bytes (%v)", shown, err)
	}
	return b, nil
}

// EndpointsDir holds the endpoint records.
func (d Dir) EndpointsDir() string { return filepath.Join(d.Root, "endpoints") }

// EndpointRecord is the record file of an endpoint.
func (d Dir) EndpointRecord(endpointID string) string {
	return filepath.Join(d.EndpointsDir(), endpointID+".json")
}

// EndpointRecords lists the endpoint record files present.
func (d Dir) EndpointRecords() []string {
	files, _ := filepath.Glob(filepath.Join(d.EndpointsDir(), "*.json"))
	return files
}

// NetworkRecord is where a network's options are kept.
func (d Dir) NetworkRecord(networkID string) string {
	return filepath.Join(d.Root, "networks", networkID+".json")
}

// StatusSocket is the status socket's path.
func (d Dir) StatusSocket() string { return filepath.Join(d.Root, StatusSocketName) }

// The option and label names in messages (package tsopts parses them; it is
// not imported so that package stack, which uses the lock, stays below it).
const (
	optAuthKeyFile = "ts.authkey-file"
	labelHostname  = "ts.hostname"
)

// createOnce writes content to path, 0600, unless path already exists: the
// file is written under a temporary name and linked into place, so
// concurrent first callers agree on one file and a reader never sees part
// of it. The caller reads path back for the content that won.
func createOnce(path string, content []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*") // 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(content)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}
