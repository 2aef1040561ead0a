package e2e

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/tslink/tslink/test/enginetest"
	"github.com/tslink/tslink/test/netnstest"
)

// TestReleaseThroughRegistry runs `make release` as a maintainer would,
// against a loopback registry: both architectures' binaries are static
// Linux executables for their machine, and the host's architecture
// installs from the registry under its per-architecture tag and puts a
// container on the tailnet. It also pushes a manifest list over the two
// tags and records what Docker does with it (README, "Install").
func TestReleaseThroughRegistry(t *testing.T) {
	l := newLab(t)
	enginetest.StartRegistry(t)
	const version = "v9.9.9-rc.1"
	dist := t.TempDir()
	make := exec.Command("make", "-s", "release", "REGISTRY="+enginetest.RegistryAddr, "VERSION="+version, "DIST="+dist)
	make.Dir = netnstest.ModuleRoot()
	make.Env = append(os.Environ(), "DOCKER_HOST="+l.engine.Host, "DOCKER_CONFIG="+filepath.Join(l.engine.Dir, "cli"))
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		checkStaticELF(t, filepath.Join(dist, arch, "rootfs", "tslink"), machine)
	}

	ref := func(tag string) string { return enginetest.RegistryAddr + "/tslink:" + tag }
	l.docker("plugin", "disable", "-f", plugin)
	l.docker("plugin", "rm", plugin)
	l.docker(append([]string{"plugin", "install", "--grant-all-permissions", "--disable", "--alias", plugin, ref(version + "-" + runtime.GOARCH)}, l.engine.Settings()...)...)
	l.docker("plugin", "enable", plugin)
	l.createNetwork("tn")
	l.echoContainer("svc", "tn", "released")
	if !strings.Contains(l.engine.Log(), "version="+version) {
		t.Errorf("the plugin installed from the registry does not log version=%s", version)
	}

	pushManifestList(t, "tslink", version, version+"-amd64", version+"-arm64")
	out, err := l.engine.Docker(t.Context(), "plugin", "install", "--grant-all-permissions", "--disable", "--alias", "tslink-list:latest", ref(version))
	// Docker 20.10 resolves no platform for plugins: it looks for a plugin
	// config in the manifest the tag names, which a list has not.
	if err == nil || !strings.Contains(err.Error()+out, "did not find plugin config") {
		t.Errorf("docker plugin install of a manifest list: err=%v, output %q; README says it is refused with \"did not find plugin config\"", err, out)
	}
}

// checkStaticELF fails t unless path is an ELF executable for machine with
// no program interpreter (statically linked, as a FROM-scratch rootfs needs).
func checkStaticELF(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()
	if f.Machine != machine || f.Type != elf.ET_EXEC {
		t.Errorf("%s: machine %v type %v; want %v ET_EXEC", path, f.Machine, f.Type, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not statically linked", path)
		}
	}
}

// pushManifestList puts a Docker manifest list named repo:tag into the
// loopback registry that lists the manifests of repo:members, as
// multi-architecture image releases do.
func pushManifestList(t *testing.T, repo, tag string, members ...string) {
	t.Helper()
	base := "http://" + enginetest.RegistryAddr + "/v2/" + repo + "/manifests/"
	type descriptor struct {
		MediaType string            `json:"mediaType"`
		Size      int               `json:"size"`
		Digest    string            `json:"digest"`
		Platform  map[string]string `json:"platform"`
	}
	list := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{2, "application/vnd.docker.distribution.manifest.list.v2+json", nil}
	for _, m := range members {
		req, _ := http.NewRequest("GET", base+m, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("GET manifest %s: %s\n%s", m, res.Status, body)
		}
		arch := m[strings.LastIndex(m, "-")+1:]
		list.Manifests = append(list.Manifests, descriptor{res.Header.Get("Content-Type"), len(body), res.Header.Get("Docker-Content-Digest"), map[string]string{"os": "linux", "architecture": arch}})
	}
	b, _ := json.Marshal(list)
	req, _ := http.NewRequest("PUT", base+tag, bytes.NewReader(b))
	req.Header.Set("Content-Type", list.MediaType)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest list %s: %s\n%s", tag, res.Status, body)
	}
}
