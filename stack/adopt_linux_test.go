package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startHelper runs a child process holding the node (see runHelper) and
// returns it once the node is up, with its IPv4.
func startHelper(t *testing.T, cfg Config, netnsPath string) (*exec.Cmd, netip.Addr) {
	t.Helper()
	cmd, v4, _ := startHelperWithEnv(t, cfg, netnsPath, nil)
	return cmd, v4
}

// startHelperWithEnv is startHelper with env (KEY=value) added to the
// child's environment only; it also returns the path of the child's log.
func startHelperWithEnv(t *testing.T, cfg Config, netnsPath string, env []string) (*exec.Cmd, netip.Addr, string) {
	t.Helper()
	cfg.Logf = nil
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "TSLINK_HELPER=node", "TSLINK_HELPER_CONFIG="+string(js), "TSLINK_HELPER_NETNS="+netnsPath)
	cmd.Env = append(cmd.Env, env...)
	stderr, _ := os.Create(t.TempDir() + "/helper.log")
	cmd.Stderr = stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	line, _ := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "READY" {
		log, _ := os.ReadFile(stderr.Name())
		t.Fatalf("helper: %q\n%s", line, tail(string(log), 30))
	}
	return cmd, netip.MustParseAddr(f[1]), stderr.Name()
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func TestAdoptAfterKillKeepsTCP(t *testing.T) {
	l := newLab(t)
	cfg := l.config("survivor")
	ctr := newCtr(t)
	go echoServer(ctr.Listen(t, "tcp", ":8080"))

	first, v4 := startHelper(t, cfg, ctr.Path)
	var conn netConn
	err := waitFor(15*time.Second, func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err = l.laptop.NS.Dial(ctx, "tcp", netip.AddrPortFrom(v4, 8080).String())
		return err
	})
	if err != nil {
		t.Fatalf("laptop -> %v: %v", v4, err)
	}
	defer conn.Close()

	replies := make(chan time.Time, 1000)
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			replies <- time.Now()
		}
		close(replies)
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			fmt.Fprintf(conn, "line %d\n", i)
		}
	}()
	select {
	case <-replies:
	case <-time.After(5 * time.Second):
		t.Fatal("no reply before the kill")
	}

	first.Process.Kill() // SIGKILL: no cleanup runs in the child
	first.Wait()
	killed := time.Now()
	if out, err := ctr.Exec(context.Background(), "ip", "addr", "show", "dev", TUNName); err != nil || !strings.Contains(string(out), v4.String()) {
		t.Fatalf("tailscale0 did not survive the kill: %v\n%s", err, out)
	}
	for drained := false; !drained; {
		select {
		case <-replies:
		default:
			drained = true
		}
	}

	adopt := cfg
	adopt.AdoptNetNS = ctr.Path
	_, v4again := startHelper(t, adopt, "")
	running := time.Now()
	if v4again != v4 {
		t.Errorf("adopted node has %v; want %v", v4again, v4)
	}
	select {
	case at, ok := <-replies:
		if !ok {
			t.Fatal("TCP connection closed across the restart")
		}
		t.Logf("TCP connection survived: gap %v after kill, %v after the new process was Running (adopt took %v)",
			at.Sub(killed).Round(time.Millisecond), at.Sub(running).Round(time.Millisecond), running.Sub(killed).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("no reply on the old TCP connection after adopting")
	}
}
