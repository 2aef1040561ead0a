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

func TestTailnetKeySourceAndName(t *testing.T) {
	dir := t.TempDir()
	d := New(t.TempDir(), "/host/state")
	inlineA, err := d.KeySourceInline("tskey-auth-aaaa")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := d.KeySourceInline("tskey-auth-aaaa"); again != inlineA {
		t.Errorf("inline key source not stable: %s, %s", inlineA, again)
	}
	inlineB, _ := d.KeySourceInline("tskey-auth-bbbb")
	if inlineB == inlineA || strings.Contains(inlineA, "aaaa") || !strings.HasPrefix(inlineA, "hmac-sha256:") {
		t.Errorf("inline key sources %s, %s", inlineA, inlineB)
	}
	if other, _ := New(t.TempDir(), "").KeySourceInline("tskey-auth-aaaa"); other == inlineA {
		t.Error("two state dirs hash a key alike: the secret is not random")
	}
	if st, err := os.Stat(filepath.Join(d.Root, "identity-secret")); err != nil || st.Mode().Perm() != 0o600 || st.Size() != 32 {
		t.Errorf("identity-secret: %v, %v", st, err)
	}

	rec := Tailnet{ControlURL: "https://hs", Tags: []string{"tag:a"}, KeySource: KeySourceFile("tailnet-a"), Name: "a.example"}
	WriteTailnet(dir, rec)
	have, _ := ReadTailnet(dir)
	if have.KeySource != "file:tailnet-a" || have.Name != "a.example" || have.ControlURL != "https://hs" || len(have.Tags) != 1 {
		t.Fatalf("read back %+v", have)
	}
	same := rec
	same.Name = ""
	if err := have.Check(same, "db", "/host/db"); err != nil {
		t.Errorf("same key file: %v", err)
	}
	for _, other := range []string{KeySourceFile("tailnet-b"), inlineA} {
		want := same
		want.KeySource = other
		err := have.Check(want, "db", "/host/db")
		if err == nil || !strings.Contains(err.Error(), "created with auth key file tailnet-a (ts.authkey-file)") ||
			!strings.Contains(err.Error(), "remove that dir to start a new identity") || strings.Contains(err.Error(), "hmac") {
			t.Errorf("key source %s: %v", other, err)
		}
	}
	WriteTailnet(dir, Tailnet{KeySource: inlineA})
	have, _ = ReadTailnet(dir)
	if err := have.Check(Tailnet{KeySource: inlineB}, "db", "/host/db"); err == nil || !strings.Contains(err.Error(), "this network's key is another inline auth key") {
		t.Errorf("other inline key: %v", err)
	}
	if err := have.Check(Tailnet{KeySource: inlineA}, "db", "/host/db"); err != nil {
		t.Errorf("same inline key: %v", err)
	}

	// The tailnet's name.
	named := Tailnet{Name: "a.example"}
	if err := named.CheckName("a.example", "db", "/host/db"); err != nil {
		t.Error(err)
	}
	if err := named.CheckName("", "db", "/host/db"); err != nil {
		t.Errorf("name not known yet: %v", err)
	}
	if err := (Tailnet{}).CheckName("b.example", "db", "/host/db"); err != nil {
		t.Errorf("record without a name: %v", err)
	}
	if err := named.CheckName("b.example", "db", "/host/db"); err == nil || !strings.Contains(err.Error(), "tailnet a.example, and the node came up in tailnet b.example") {
		t.Errorf("other tailnet: %v", err)
	}

	// A record of an older version binds nothing yet.
	os.WriteFile(filepath.Join(dir, TailnetFileName), []byte("https://hs persistent\ntags: none\n"), 0o600)
	have, _ = ReadTailnet(dir)
	if err := have.Check(Tailnet{ControlURL: "https://hs", KeySource: inlineB}, "db", "/host/db"); err != nil {
		t.Errorf("old record: %v", err)
	}
	if err := have.CheckName("b.example", "db", "/host/db"); err != nil {
		t.Errorf("old record's name: %v", err)
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
