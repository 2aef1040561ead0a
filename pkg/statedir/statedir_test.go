package statedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tslink/tslink/pkg/tsopts"
)

func TestTailnetRoundTripAndCheck(t *testing.T) {
	dir := t.TempDir()
	if _, ok := ReadTailnet(dir); ok {
		t.Fatal("record found in an empty dir")
	}
	want := Tailnet{ControlURL: "http://c:1", Tags: []string{"tag:a", "tag:b"}}
	if err := WriteTailnet(dir, want); err != nil {
		t.Fatal(err)
	}
	have, ok := ReadTailnet(dir)
	if !ok || have.ControlURL != want.ControlURL || have.Ephemeral || strings.Join(have.Tags, ",") != "tag:a,tag:b" {
		t.Fatalf("read back %+v", have)
	}
	if err := have.Check(want, "db", "/host/db"); err != nil {
		t.Errorf("same tailnet: %v", err)
	}
	if err := have.Check(Tailnet{ControlURL: "http://c:1", Ephemeral: true, Tags: want.Tags}, "db", "/host/db"); err == nil ||
		!strings.Contains(err.Error(), "holds the identity of a persistent node of the tailnet at http://c:1, and this network wants a ephemeral node") {
		t.Errorf("ephemeral wanted: %v", err)
	}
	if IsEphemeral(dir) {
		t.Error("persistent record read as ephemeral")
	}

	// Records of older versions: control only, no tags line.
	os.WriteFile(filepath.Join(dir, TailnetFileName), []byte("tailscale default\n"), 0o600)
	have, _ = ReadTailnet(dir)
	if err := have.Check(Tailnet{Ephemeral: true, Tags: []string{"tag:x"}}, "db", "/host/db"); err != nil {
		t.Errorf("old record, same control: %v", err)
	}
	if err := have.Check(Tailnet{ControlURL: "http://c:1"}, "db", "/host/db"); err == nil {
		t.Error("old record, other control: no error")
	}
	WriteTailnet(dir, Tailnet{Ephemeral: true})
	if !IsEphemeral(dir) {
		t.Error("ephemeral record not read as ephemeral")
	}
}

func TestReadKey(t *testing.T) {
	root := t.TempDir()
	d := New(root, "/host/state")
	os.MkdirAll(filepath.Join(root, "keys"), 0o700)
	os.WriteFile(filepath.Join(root, "keys", "k"), []byte(" tskey-auth-x\n"), 0o600)
	os.WriteFile(filepath.Join(root, "keys", "empty"), nil, 0o600)
	if k, err := d.ReadKey("k"); err != nil || k != "tskey-auth-x" {
		t.Errorf("ReadKey = %q, %v", k, err)
	}
	for name, want := range map[string]string{"missing": "/host/state/keys/missing does not exist", "empty": "/host/state/keys/empty is empty"} {
		if _, err := d.ReadKey(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ReadKey(%s): %v; want %q", name, err, want)
		}
	}
}

func TestLockAndRemoveAbandoned(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n")
	l, err := TakeLock(dir, "container a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TakeLock(dir, "container b"); err == nil || !strings.Contains(err.Error(), "held by container a") {
		t.Errorf("second lock: %v", err)
	}
	if _, removed := RemoveAbandoned(dir); removed {
		t.Error("held dir removed")
	}
	l.Release()
	if _, removed := RemoveAbandoned(dir); removed {
		t.Error("cleanly released dir removed")
	}
}

func TestRemoveNodeDirOnlyUnlocked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n")
	l, err := TakeLock(dir, "container a")
	if err != nil {
		t.Fatal(err)
	}
	if err := RemoveNodeDir(dir); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "held by container a") {
		t.Errorf("removing a held dir: %v", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("held dir gone: %v", err)
	}
	l.Release()
	if err := RemoveNodeDir(dir); err != nil {
		t.Errorf("removing a released dir: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("dir still there: %v", err)
	}
	if err := RemoveNodeDir(dir); err != nil {
		t.Errorf("removing a missing dir: %v", err)
	}
}

func TestNamesMatchTsopts(t *testing.T) {
	if optAuthKeyFile != tsopts.OptAuthKeyFile || labelHostname != tsopts.LabelHostname {
		t.Error("option or label names differ from package tsopts")
	}
}
