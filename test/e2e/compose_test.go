package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tslink/tslink/test/netnstest"
)

// composeFile is the README's compose example with this lab's key, control
// server and image.
const composeFile = `networks:
  tailnet:
    driver: tslink:latest
    driver_opts:
      ts.authkey: ${TS_AUTHKEY}
      ts.controlurl: ${TS_CONTROL_URL}
      ts.insecure-control: "true"

services:
  api:
    image: ` + image + `
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    labels:
      ts.hostname: api
    networks: [tailnet]
  worker:
    image: ` + image + `
    command: ["sleep", "3600"]
    labels:
      ts.hostname: worker
    networks: [tailnet]
`

func TestComposeExample(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		if os.Getenv("TSLINK_REQUIRE_ROOT_TESTS") == "1" {
			t.Fatal("docker-compose missing (Debian package docker-compose)")
		}
		t.Skip("skipping: needs docker-compose (Debian package docker-compose)")
	}
	l := newLab(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(composeFile), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(compose, append([]string{"-p", "demo"}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DOCKER_HOST="+l.engine.Host, "TS_AUTHKEY="+testAuthKey, "TS_CONTROL_URL="+l.control.URL())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker-compose %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("up", "-d")
	api := l.tsIP("demo_api_1", "-4")
	worker := l.tsIP("demo_worker_1", "-4")
	for _, h := range []string{"api", "worker"} {
		if n := l.control.NodesByHostname(h); len(n) != 1 || !n[0].Online {
			t.Errorf("control's nodes named %s: %+v; want one online", h, n)
		}
	}
	// worker -> api over the tailnet.
	err = netnstest.WaitFor(15*time.Second, func() error {
		out, err := l.httpGetIn("demo_worker_1", api, "8080")
		if err == nil && !strings.Contains(out, "hello from the container") {
			return context.DeadlineExceeded
		}
		return err
	})
	if err != nil {
		t.Errorf("worker (%s) -> api (%s) over the tailnet: %v", worker, api, err)
	}
	run("down")
	for _, h := range []string{"api", "worker"} {
		if n := l.control.NodesByHostname(h); len(n) != 1 || n[0].Online {
			t.Errorf("after down, %s: %+v; want offline (ephemeral, logged out)", h, n)
		}
	}
	if nets := l.docker("network", "ls", "-q", "--filter", "driver="+plugin); nets != "" {
		t.Errorf("networks left after down: %s", nets)
	}
	l.noLeftovers()
}
