package hostpath

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// A process that merely calls itself dockerd is never asked once the
// dockerd that calls the plugin is known.
func TestPreferredDockerdOnly(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	fake := filepath.Join(t.TempDir(), "dockerd")
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fake, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fake, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if !isDockerd(cmd.Process.Pid) {
		t.Fatalf("the fake process is not named dockerd")
	}
	Prefer(os.Getpid())
	defer Prefer(0)
	for range 3 {
		pid, ok := dockerdHaving("/")
		if !ok || pid != os.Getpid() {
			t.Fatalf("dockerdHaving = %d, %v; want the preferred %d, never the fake dockerd %d", pid, ok, os.Getpid(), cmd.Process.Pid)
		}
	}
	if _, ok := dockerdHaving("/no/such/path/anywhere"); ok {
		t.Fatal("a path missing under the preferred dockerd's root was found elsewhere")
	}
}
