package stack

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tslink/tslink/pkg/devcontrol"
	"tailscale.com/tsnet"
)

// TestStateHasNodeKey needs no root: a userspace tsnet node logs in to
// devcontrol; its state dir then holds a node key, until it logs out.
func TestStateHasNodeKey(t *testing.T) {
	ctl, err := devcontrol.Start(devcontrol.Options{AuthKey: testAuthKey})
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	dir := t.TempDir()
	if stateHasNodeKey(dir) {
		t.Fatal("empty dir has a node key")
	}
	srv := &tsnet.Server{Dir: dir, Hostname: "state", ControlURL: ctl.URL(), AuthKey: testAuthKey}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := srv.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if !stateHasNodeKey(dir) {
		t.Error("logged-in node's state has no node key")
	}
	lc, _ := srv.LocalClient()
	if err := lc.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if stateHasNodeKey(dir) {
		t.Error("logged-out node's state still counts as logged in")
	}

	// A truncated state is not logged in, and the check leaves it as it is
	// for tsnet to report.
	damaged := filepath.Join(t.TempDir(), "tailscaled.state")
	os.WriteFile(damaged, nil, 0o600)
	if stateHasNodeKey(filepath.Dir(damaged)) {
		t.Error("empty state counts as logged in")
	}
	if b, err := os.ReadFile(damaged); err != nil || len(b) != 0 {
		t.Errorf("the check rewrote a damaged state: %q, %v", b, err)
	}
}
