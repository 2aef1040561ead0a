package netdriver

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/pkg/tsopts"
	"golang.org/x/sys/unix"
)

func TestSweepOrphanStateDirs(t *testing.T) {
	root := t.TempDir()
	d := New(Config{StateRoot: root, HostStateRoot: "/host/state"})
	mk := func(host, tailnet, lock string) string {
		dir := d.dir.Node(host)
		os.MkdirAll(dir, 0o700)
		os.WriteFile(filepath.Join(dir, statedir.TailnetFileName), []byte(tailnet), 0o600)
		os.WriteFile(filepath.Join(dir, statedir.LockFileName), []byte(lock), 0o600)
		os.WriteFile(statedir.StateFile(dir), []byte("{}"), 0o600)
		return dir
	}
	orphan := mk("orphan", "http://c ephemeral\n", "container p1 (f5521ea704c4)\n")
	persistent := mk("persistent", "http://c persistent\n", "container p2 (aaaa)\n")
	released := mk("released", "http://c ephemeral\n", "")
	recorded := mk("recorded", "http://c ephemeral\n", "container p3 (bbbb)\n")
	held := mk("held", "http://c ephemeral\n", "container p4 (cccc)\n")
	// First Joins a killed plugin left: no tailnet record yet, a node key
	// perhaps, tsnet's temporary state file, a lock naming its holder or none.
	mkUnfinished := func(host, lock string) string {
		dir := d.dir.Node(host)
		os.MkdirAll(dir, 0o700)
		if err := statedir.MarkFirstJoin(dir); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(statedir.StateFile(dir), []byte("{}"), 0o600)
		os.WriteFile(statedir.StateFile(dir)+".tmp123", []byte("{}"), 0o600)
		if lock != "" {
			os.WriteFile(filepath.Join(dir, statedir.LockFileName), []byte(lock), 0o600)
		}
		return dir
	}
	unfinished := mkUnfinished("unfinished", "container p5 (dddd)\n")
	unfinishedNoLock := mkUnfinished("unfinished-nolock", "")
	unfinishedHeld := mkUnfinished("unfinished-held", "container p6 (eeee)\n")
	joining := mkUnfinished("joining", "")
	d.endpoints["e7"] = d.newEndpoint("e7", "n1", "c7", "joining", "/run/docker/netns/0123456789ab", "joining", tsopts.Serve{})
	for _, dir := range []string{held, unfinishedHeld} {
		f, err := os.Open(filepath.Join(dir, statedir.LockFileName))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}

	d.sweepOrphanStateDirs([]record{{EndpointID: "e3", Hostname: "recorded"}})

	for _, dir := range []string{orphan, unfinished, unfinishedNoLock} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("dir %s of an unfinished join was kept (%v)", filepath.Base(dir), err)
		}
	}
	for _, dir := range []string{persistent, released, recorded, held, unfinishedHeld, joining} {
		if _, err := os.Stat(statedir.StateFile(dir)); err != nil {
			t.Errorf("%s was swept: %v", filepath.Base(dir), err)
		}
	}
}

func TestLoadRecordsRevalidates(t *testing.T) {
	d := New(Config{StateRoot: t.TempDir()})
	good := strings.Repeat("a", 64)
	for id, host := range map[string]string{good: "web", strings.Repeat("b", 64): "../../etc", strings.Repeat("c", 63): "db"} {
		os.MkdirAll(d.dir.EndpointsDir(), 0o700)
		os.WriteFile(d.dir.EndpointRecord(id), []byte(`{"EndpointID":"`+id+`","Hostname":"`+host+`"}`), 0o600)
	}
	recs := d.loadRecords()
	if len(recs) != 1 || recs[0].EndpointID != good {
		t.Errorf("records %+v; want only the valid one", recs)
	}
}

// TestRecordKeepsSSH: a recovered endpoint gets its ts.ssh allow-list back
// from its record (a new plugin process has no labels to read).
func TestRecordKeepsSSH(t *testing.T) {
	d := New(Config{StateRoot: t.TempDir()})
	id := strings.Repeat("a", 64)
	ep := d.newEndpoint(id, "n1", "c1", "web", "/run/docker/netns/0123456789ab", "web", tsopts.Serve{})
	ep.ssh = tsopts.SSH{Logins: []string{"alice@example.com"}, Tags: []string{"tag:ops"}}
	d.saveRecord(ep)
	recs := d.loadRecords()
	if len(recs) != 1 || !reflect.DeepEqual(recs[0].SSH, ep.ssh) {
		t.Fatalf("records %+v; want SSH %+v", recs, ep.ssh)
	}
	b, _ := os.ReadFile(d.dir.EndpointRecord(id))
	ep.ssh = tsopts.SSH{}
	d.saveRecord(ep)
	if b2, _ := os.ReadFile(d.dir.EndpointRecord(id)); strings.Contains(string(b2), `"SSH"`) || !strings.Contains(string(b), `"SSH"`) {
		t.Errorf("records: with ts.ssh %s, without %s", b, b2)
	}
}
