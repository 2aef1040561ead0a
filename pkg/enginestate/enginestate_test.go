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
	os.WriteFile(filepath.Join(dir, "config.v2.json"), []byte(`{"ID":"`+cid+`","Name":"/web","Image":"sha256:9e55","Config":{"Labels":{"ts.hostname":"api"}}}`), 0o600)
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
	if c.Name != "web" || c.Labels["ts.hostname"] != "api" || c.Image != "sha256:9e55" {
		t.Fatalf("Container = %+v", c)
	}
	if c, err := e.ContainerByName("/web"); err != nil || c.ID != cid {
		t.Fatalf("ContainerByName = %+v, %v", c, err)
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
