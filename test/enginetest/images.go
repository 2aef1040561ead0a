package enginetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// BusyboxImage is the locally made test image: busybox-static and its applet
// links, nothing else.
const BusyboxImage = "tslink-busybox:test"

// ImportBusybox makes [BusyboxImage] with `docker import` from the host's
// busybox-static; no registry is involved.
func (e *Engine) ImportBusybox(t testing.TB) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "tmp", "www", "proc", "sys", "dev"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			os.Symlink("busybox", filepath.Join(root, "bin", applet))
		}
	}
	os.WriteFile(filepath.Join(root, "www", "index.html"), []byte("hello from the container\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	cmd := exec.Command("sh", "-c", "tar -C "+root+" -c . | docker import -c 'CMD [\"/bin/sh\"]' -c 'ENV PATH=/bin' - "+BusyboxImage)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+e.Host)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import: %v\n%s", err, out)
	}
}
