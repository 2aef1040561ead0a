package enginetest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// RegistryAddr is where [StartRegistry] serves, on the lab netns's loopback
// (dockerd trusts 127.0.0.0/8 registries without TLS).
const RegistryAddr = "127.0.0.1:5000"

// StartRegistry runs Debian's docker-registry on [RegistryAddr], for
// `docker plugin push/install/upgrade` as users do them, until t ends.
func StartRegistry(t testing.TB) {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		msg := "needs docker-registry (Debian package docker-registry)"
		if os.Getenv("TSLINK_REQUIRE_ROOT_TESTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip("skipping: " + msg)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), RegistryAddr)), 0o644)
	cmd := exec.Command(bin, "serve", cfg)
	logf, _ := os.Create(filepath.Join(dir, "registry.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	err = netnstest.WaitFor(10*time.Second, func() error {
		c, err := net.Dial("tcp", RegistryAddr)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("docker-registry did not start: %v\n%s", err, b)
	}
}
