// Package enginestate reads what dockerd keeps on disk, so that the plugin
// can learn which container a Join is for without the Docker API.
//
// dockerd serves no API while it restores its containers (engine start,
// every reboot), yet it calls network plugins' Join for every restart-policy
// container during that restore and gives each call 30 s; a plugin that asks
// the API from Join deadlocks with it. Everything Join needs is on disk
// before Join is called (Docker 20.10; the same layout in later engines):
//
//   - libnetwork's local store, <data-root>/network/files/local-kv.db (bbolt,
//     bucket "libnetwork"). dockerd opens it per operation with an exclusive
//     flock and closes it again, so a read-only open (shared flock) waits at
//     most for one of its writes. Before the driver's Join, dockerd has
//     stored the endpoint (key docker/network/v1.0/endpoint/<nid>/<eid>/,
//     "name" = the container's name) and the sandbox (key
//     docker/network/v1.0/sandbox/<sandbox ID>/, "Cid" = the container's ID);
//     the sandbox key Join receives is <exec-root>/netns/<first 12 hex digits
//     of the sandbox ID>. Network records (docker/network/v1.0/network/<nid>/)
//     hold the `--opt` values under generic["com.docker.network.generic"].
//   - The container's config, <data-root>/containers/<id>/config.v2.json,
//     written at `docker create`: its name, labels (the image's merged with
//     the container's own), image ID and graph driver ("Driver").
//   - The image's config, <data-root>/image/<graph driver>/imagedb/content/
//     sha256/<hex of the image ID>: its own labels (config.Labels), which
//     tell the container's own labels from those it got from its image.
//
// dockerd's files are read through /proc/<dockerd pid>/root, which shows
// them as dockerd sees them from inside the plugin's own mount namespace.
package enginestate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Engine is one dockerd's on-disk state.
type Engine struct {
	// Root is dockerd's data-root as this process can open it
	// (/proc/<pid>/root/<data-root>).
	Root string
}

// storeLockWait bounds the wait for the shared flock on libnetwork's store:
// dockerd holds the exclusive lock only for the length of one store write.
const storeLockWait = 2 * time.Second

// ForPID returns the engine of the dockerd process pid. Its data-root is
// found, in order, from the files it holds open (<data-root>/volumes/
// metadata.db stays open for the daemon's life), its --data-root (or -g,
// --graph) flag, the "data-root" of its --config-file (default
// /etc/docker/daemon.json), else /var/lib/docker.
func ForPID(pid int) (*Engine, error) {
	proc := "/proc/" + strconv.Itoa(pid)
	if _, err := os.Stat(proc + "/root/"); err != nil {
		return nil, fmt.Errorf("dockerd pid %d: %w (the plugin needs pidhost and CAP_SYS_PTRACE)", pid, err)
	}
	root := dataRootFromFDs(proc)
	if root == "" {
		root = dataRootFromFlags(proc)
	}
	if root == "" {
		root = "/var/lib/docker"
	}
	return &Engine{Root: filepath.Join(proc, "root", root)}, nil
}

func dataRootFromFDs(proc string) string {
	fds, _ := os.ReadDir(proc + "/fd")
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(proc, "fd", fd.Name()))
		if err == nil && strings.HasSuffix(target, "/volumes/metadata.db") {
			return strings.TrimSuffix(target, "/volumes/metadata.db")
		}
	}
	return ""
}

func dataRootFromFlags(proc string) string {
	b, err := os.ReadFile(proc + "/cmdline")
	if err != nil {
		return ""
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	configFile := "/etc/docker/daemon.json"
	for i, a := range args {
		name, val, hasVal := strings.Cut(a, "=")
		if !hasVal && i+1 < len(args) {
			val = args[i+1]
		}
		switch name {
		case "--data-root", "-g", "--graph":
			return val
		case "--config-file":
			configFile = val
		}
	}
	cb, err := os.ReadFile(filepath.Join(proc, "root", configFile))
	if err != nil {
		return ""
	}
	var cfg struct {
		DataRoot string `json:"data-root"`
		Graph    string `json:"graph"`
	}
	if json.Unmarshal(cb, &cfg) != nil {
		return ""
	}
	if cfg.DataRoot != "" {
		return cfg.DataRoot
	}
	return cfg.Graph
}

// Container is what the engine's config says of one container.
type Container struct {
	ID     string
	Name   string            // without the leading "/"
	Labels map[string]string // the image's labels merged with the container's own
	Image  string            // image ID, "sha256:<hex>"
	// ImageLabels are the labels of the container's image (nil: none).
	// Docker merges them into Labels at `docker create`, where a label the
	// container sets itself wins.
	ImageLabels map[string]string
	// ImageLabelsErr is why ImageLabels could not be read (nil: they
	// were), e.g. an engine whose images are in containerd's store.
	ImageLabelsErr error
}

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ErrNotFound is wrapped by errors for what the engine's state does not
// (yet) hold.
var ErrNotFound = errors.New("not in the engine's state")

// Container reads the config of container id.
func (e *Engine) Container(id string) (*Container, error) {
	if !hexID.MatchString(id) {
		return nil, fmt.Errorf("container ID %q: want 64 hex digits", id)
	}
	b, err := os.ReadFile(filepath.Join(e.Root, "containers", id, "config.v2.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("container %.12s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var cfg struct {
		ID     string
		Name   string
		Image  string
		Driver string
		Config struct{ Labels map[string]string }
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("container %.12s: config.v2.json: %w", id, err)
	}
	c := &Container{ID: cfg.ID, Name: strings.TrimPrefix(cfg.Name, "/"), Labels: cfg.Config.Labels, Image: cfg.Image}
	c.ImageLabels, c.ImageLabelsErr = e.ImageLabels(cfg.Driver, cfg.Image)
	return c, nil
}

var graphDriverName = regexp.MustCompile(`^[a-z0-9_.-]+$`)

// ImageLabels reads the labels of image imageID ("sha256:<hex>") from its
// config in the image store of graph driver driver (a container's
// config.v2.json "Driver"). An image without labels gives nil.
func (e *Engine) ImageLabels(driver, imageID string) (map[string]string, error) {
	hex, ok := strings.CutPrefix(imageID, "sha256:")
	if !ok || !hexID.MatchString(hex) {
		return nil, fmt.Errorf("image ID %q: want sha256:<64 hex digits>", imageID)
	}
	if !graphDriverName.MatchString(driver) {
		return nil, fmt.Errorf("image %.19s: graph driver %q unknown", imageID, driver)
	}
	p := filepath.Join(e.Root, "image", driver, "imagedb", "content", "sha256", hex)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("image %.19s: no config in the engine's image store (image/%s/imagedb): %w", imageID, driver, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var img struct {
		Config struct{ Labels map[string]string } `json:"config"`
	}
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("image %.19s: config: %w", imageID, err)
	}
	return img.Config.Labels, nil
}

// ContainerByName finds a container by name (with or without the leading
// "/") among the engine's container configs.
func (e *Engine) ContainerByName(name string) (*Container, error) {
	name = strings.TrimPrefix(name, "/")
	dirs, err := os.ReadDir(filepath.Join(e.Root, "containers"))
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		if !hexID.MatchString(d.Name()) {
			continue
		}
		c, err := e.Container(d.Name())
		if err == nil && c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("container %q: %w", name, ErrNotFound)
}

// JoinFacts is what libnetwork's store says of a Join's endpoint.
type JoinFacts struct {
	ContainerID  string // from the sandbox record; "" if not found
	EndpointName string // the endpoint's name: the container's name
}

// ForJoin looks up the container behind a Join: the sandbox whose ID the
// sandbox key names (its "Cid"), and the endpoint's name. It fails if
// neither is in the store.
func (e *Engine) ForJoin(networkID, endpointID, sandboxKey string) (JoinFacts, error) {
	var f JoinFacts
	sbPrefix := filepath.Base(sandboxKey)
	err := e.view(func(b *bolt.Bucket) error {
		if v := value(b.Get([]byte("docker/network/v1.0/endpoint/" + networkID + "/" + endpointID + "/"))); v != nil {
			var ep struct {
				Name string `json:"name"`
			}
			if json.Unmarshal(v, &ep) == nil {
				f.EndpointName = ep.Name
			}
		}
		if len(sbPrefix) < 12 || !isHex(sbPrefix) {
			return nil
		}
		c := b.Cursor()
		prefix := []byte("docker/network/v1.0/sandbox/" + sbPrefix)
		for k, v := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, v = c.Next() {
			var sb struct{ Cid string }
			if json.Unmarshal(value(v), &sb) == nil && sb.Cid != "" {
				f.ContainerID = sb.Cid
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return f, err
	}
	if f.ContainerID == "" && f.EndpointName == "" {
		return f, fmt.Errorf("endpoint %.12s (sandbox %s): %w", endpointID, sbPrefix, ErrNotFound)
	}
	return f, nil
}

// NetworkOptions returns the `--opt` values of network networkID as
// libnetwork stored them.
func (e *Engine) NetworkOptions(networkID string) (map[string]string, error) {
	var out map[string]string
	err := e.view(func(b *bolt.Bucket) error {
		v := value(b.Get([]byte("docker/network/v1.0/network/" + networkID + "/")))
		if v == nil {
			return fmt.Errorf("network %.12s: %w", networkID, ErrNotFound)
		}
		var nw struct {
			Generic map[string]json.RawMessage `json:"generic"`
		}
		if err := json.Unmarshal(v, &nw); err != nil {
			return fmt.Errorf("network %.12s: %w", networkID, err)
		}
		out = map[string]string{}
		if raw, ok := nw.Generic["com.docker.network.generic"]; ok {
			var opts map[string]any
			json.Unmarshal(raw, &opts)
			for k, v := range opts {
				if s, ok := v.(string); ok {
					out[k] = s
				}
			}
		}
		return nil
	})
	return out, err
}

// StorePath is libnetwork's local store under the data-root.
const StorePath = "network/files/local-kv.db"

func (e *Engine) view(fn func(*bolt.Bucket) error) error {
	path := filepath.Join(e.Root, StorePath)
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: storeLockWait})
	if err != nil {
		return fmt.Errorf("opening the engine's network store %s: %w", path, err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("libnetwork"))
		if b == nil {
			return fmt.Errorf("the engine's network store has no libnetwork bucket: %w", ErrNotFound)
		}
		return fn(b)
	})
}

// value strips the 8-byte index (little-endian uint64) that libkv's bolt
// store puts before each JSON value.
func value(v []byte) []byte {
	const indexLen = 8
	if len(v) > indexLen && v[0] != '{' {
		return v[indexLen:]
	}
	return v
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}
