package enginetest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/test/netnstest"
)

// PluginName is the plugin reference the tests install, as the README does.
const PluginName = "tslink:latest"

var (
	bundlesMu sync.Mutex
	bundles   = map[string]string{} // version -> bundle dir
)

// PluginBundle builds the static tslink binary and assembles the managed
// plugin's bundle (config.json + rootfs/) once per test binary, without
// pulling any image, exactly as `make rootfs` does.
func PluginBundle(t testing.TB) string {
	t.Helper()
	return PluginBundleVersion(t, "")
}

// PluginBundleVersion is PluginBundle with the binary's version string set
// (so two versions differ byte for byte, as real upgrades do).
func PluginBundleVersion(t testing.TB, version string) string {
	t.Helper()
	bundlesMu.Lock()
	defer bundlesMu.Unlock()
	if dir, ok := bundles[version]; ok {
		return dir
	}
	dir, err := buildBundle(version)
	netnstest.AtExit(func() { os.RemoveAll(dir) })
	if err != nil {
		t.Fatal(err)
	}
	bundles[version] = dir
	return dir
}

func buildBundle(version string) (bundleDir string, buildErr error) {
	{
		root := netnstest.ModuleRoot()
		bundleDir, buildErr = os.MkdirTemp("", "tslink-bundle")
		if buildErr != nil {
			return
		}
		rootfs := filepath.Join(bundleDir, "rootfs")
		for _, d := range []string{"data", "tmp", "etc/ssl/certs", "run/docker/plugins", "dev", "proc", "sys"} {
			os.MkdirAll(filepath.Join(rootfs, d), 0o755)
		}
		args := []string{"build", "-trimpath", "-o", filepath.Join(rootfs, "tslink")}
		if version != "" {
			args = append(args, "-ldflags", "-X main.version="+version)
		}
		cmd := exec.Command("go", append(args, "./cmd/tslink")...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building tslink: %v\n%s", err, out)
			return
		}
		cfg, err := os.ReadFile(filepath.Join(root, "config.json"))
		if err != nil {
			buildErr = err
			return
		}
		buildErr = os.WriteFile(filepath.Join(bundleDir, "config.json"), cfg, 0o644)
	}
	return
}

// StateDir is where this engine's plugin keeps its state (the host side of
// the plugin's /data mount).
func (e *Engine) StateDir() string { return filepath.Join(e.Dir, "state") }

// PluginGet fetches path (e.g. /debug/vars) from the plugin's status socket
// in [Engine.StateDir] (cmd/tslink's tslink-status.sock).
func (e *Engine) PluginGet(path string) ([]byte, error) {
	sock := statedir.New(e.StateDir(), "").StatusSocket()
	c := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	res, err := c.Get("http://tslink" + path)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	return io.ReadAll(res.Body)
}

// Settings are the `docker plugin set` values every test plugin needs:
// its state mount, DOCKER_HOST of this engine, debug logs.
func (e *Engine) Settings() []string {
	return []string{
		"state.source=" + e.StateDir(),
		"TSLINK_HOST_STATE_DIR=" + e.StateDir(),
		"DOCKER_HOST=" + e.Host,
		"LOG_LEVEL=debug",
	}
}

// InstallPlugin creates and enables the tslink plugin with `docker plugin
// create` from the bundle, pointing its state mount at [Engine.StateDir] and
// DOCKER_HOST at this engine. env adds `docker plugin set` values.
func (e *Engine) InstallPlugin(t testing.TB, env ...string) {
	t.Helper()
	bundle := PluginBundle(t)
	os.MkdirAll(e.StateDir(), 0o700)
	e.MustDocker(t, "plugin", "create", PluginName, bundle)
	args := append(append([]string{"plugin", "set", PluginName}, e.Settings()...), env...)
	e.MustDocker(t, args...)
	e.MustDocker(t, "plugin", "enable", PluginName)
}
