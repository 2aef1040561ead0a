package enginestate

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

const (
	nid = "c2492a6f3f805e0484ab9e5c0a24b624141d92f38a35863a4b5faa30a3e17801"
	eid = "bdcc7b9c9e8cb6dee2037e87c942faa8e1b2234a42ec153d66e6406f889dfcf4"
	sid = "2dcead40aca362c2e74c612aee135a7b56a3b00281f18a6394806f2cbcec24e8"
	cid = "883007809cf6cfbb323078dda11a7953331f705a0663e9ecb7b6c5cfdecab7c0"
	// imgHex is the container's image ID.
	imgHex = "9e55c8c1d4bd4a5c2b1c0bd6e3c8e6f7a1b2c3d4e5f60718293a4b5c6d7e8f90"
)

// fakeEngine lays out a data-root as dockerd 20.10 writes it: libnetwork's
// store (values behind libkv's 8-byte index) and one container config.
func fakeEngine(t *testing.T) *Engine {
	t.Helper()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "network", "files"), 0o700)
	db, err := bolt.Open(filepath.Join(root, StorePath), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b *bolt.Bucket, k, v string) {
		val := binary.LittleEndian.AppendUint64(nil, 7)
		if err := b.Put([]byte(k), append(val, v...)); err != nil {
			t.Fatal(err)
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("libnetwork"))
		if err != nil {
			return err
		}
		put(b, "docker/network/v1.0/endpoint/"+nid+"/"+eid+"/", `{"id":"`+eid+`","name":"web","sandbox":""}`)
		put(b, "docker/network/v1.0/sandbox/"+sid+"/", `{"ID":"`+sid+`","Cid":"`+cid+`"}`)
		put(b, "docker/network/v1.0/network/"+nid+"/", `{"id":"`+nid+`","generic":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"ts.ephemeral":"false","ts.authkey-file":"prod"}},"networkType":"tslink:latest"}`)
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "containers", cid)
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "config.v2.json"), []byte(`{"ID":"`+cid+`","Name":"/web","Image":"sha256:`+imgHex+`","Driver":"overlay2","Config":{"Labels":{"ts.hostname":"api","ts.serve.22":"tcp:22","maintainer":"x"}}}`), 0o600)
	// The image's config as dockerd 20.10 stores it (trimmed).
	imgDir := filepath.Join(root, "image", "overlay2", "imagedb", "content", "sha256")
	os.MkdirAll(imgDir, 0o700)
	os.WriteFile(filepath.Join(imgDir, imgHex), []byte(`{"architecture":"amd64","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"],"Labels":{"ts.serve.22":"tcp:22","maintainer":"x"}},"container_config":{"Labels":{"ts.hostname":"stale"}},"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), 0o600)
	return &Engine{Root: root}
}

func TestForJoinFindsTheContainer(t *testing.T) {
	e := fakeEngine(t)
	f, err := e.ForJoin(nid, eid, "/var/run/docker/netns/"+sid[:12])
	if err != nil {
		t.Fatal(err)
	}
	if f.ContainerID != cid || f.EndpointName != "web" {
		t.Fatalf("ForJoin = %+v", f)
	}
	c, err := e.Container(f.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "web" || c.Labels["ts.hostname"] != "api" || c.Image != "sha256:"+imgHex {
		t.Fatalf("Container = %+v", c)
	}
	if c.ImageLabelsErr != nil || len(c.ImageLabels) != 2 || c.ImageLabels["ts.serve.22"] != "tcp:22" || c.ImageLabels["ts.hostname"] != "" {
		t.Fatalf("image labels %v, %v", c.ImageLabels, c.ImageLabelsErr)
	}
	if c, err := e.ContainerByName("/web"); err != nil || c.ID != cid {
		t.Fatalf("ContainerByName = %+v, %v", c, err)
	}
}

func TestImageLabelsUnreadable(t *testing.T) {
	e := fakeEngine(t)
	if _, err := e.ImageLabels("overlay2", "sha256:"+strings.Repeat("a", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing image: %v", err)
	}
	for _, bad := range [][2]string{{"overlay2", "sha256:../../x"}, {"overlay2", imgHex}, {"../..", "sha256:" + imgHex}, {"", "sha256:" + imgHex}} {
		if _, err := e.ImageLabels(bad[0], bad[1]); err == nil {
			t.Errorf("ImageLabels(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if labels, err := e.ImageLabels("overlay2", "sha256:"+imgHex); err != nil || labels["maintainer"] != "x" {
		t.Errorf("ImageLabels = %v, %v", labels, err)
	}
}

func TestForJoinUnknownEndpoint(t *testing.T) {
	e := fakeEngine(t)
	_, err := e.ForJoin(nid, strings.Repeat("0", 64), "/var/run/docker/netns/ffffffffffff")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if _, err := e.Container("../../etc"); err == nil {
		t.Fatal("a container ID that is not 64 hex digits was accepted")
	}
}

func TestNetworkOptions(t *testing.T) {
	e := fakeEngine(t)
	opts, err := e.NetworkOptions(nid)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts) != 2 || opts["ts.ephemeral"] != "false" || opts["ts.authkey-file"] != "prod" {
		t.Fatalf("NetworkOptions = %v", opts)
	}
	if _, err := e.NetworkOptions(strings.Repeat("1", 64)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown network: err = %v", err)
	}
}

func TestDataRootFromFlags(t *testing.T) {
	proc := t.TempDir()
	write := func(args ...string) {
		os.WriteFile(filepath.Join(proc, "cmdline"), []byte(strings.Join(args, "\x00")+"\x00"), 0o600)
	}
	write("dockerd", "--data-root", "/srv/docker")
	if got := dataRootFromFlags(proc); got != "/srv/docker" {
		t.Fatalf("--data-root X: %q", got)
	}
	write("dockerd", "--data-root=/srv/d2")
	if got := dataRootFromFlags(proc); got != "/srv/d2" {
		t.Fatalf("--data-root=X: %q", got)
	}
	os.MkdirAll(filepath.Join(proc, "root", "etc"), 0o700)
	os.WriteFile(filepath.Join(proc, "root", "etc", "d.json"), []byte(`{"data-root":"/srv/d3"}`), 0o600)
	write("dockerd", "--config-file", "/etc/d.json")
	if got := dataRootFromFlags(proc); got != "/srv/d3" {
		t.Fatalf("config file: %q", got)
	}
}
