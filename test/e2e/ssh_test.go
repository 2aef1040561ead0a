package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tslink/tslink/pkg/statedir"
	"github.com/tslink/tslink/test/netnstest"
)

// laptopSSH opens an SSH connection from the laptop (its netns, through
// its tailscaled) to addr as user, checking the host key against want (nil:
// any). It authenticates with nothing: the tailnet identity is the
// credential.
func (l *lab) laptopSSH(addr, user string, want gossh.PublicKey) (*gossh.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := l.laptop.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	hostKey := gossh.InsecureIgnoreHostKey()
	if want != nil {
		hostKey = gossh.FixedHostKey(want)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, chans, reqs, err := gossh.NewClientConn(conn, addr, &gossh.ClientConfig{User: user, HostKeyCallback: hostKey})
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return gossh.NewClient(c, chans, reqs), nil
}

// TestSSHIntoContainer: `ssh root@<node>` from the laptop, whose user is on
// the container's ts.ssh list, gets a shell in a busybox container (no
// sshd in it) with a terminal, TERM, window size and exit status; a
// non-interactive command keeps stdout and stderr apart; a container whose
// list does not name the laptop's user refuses it.
func TestSSHIntoContainer(t *testing.T) {
	l := newLab(t)
	st := l.laptop.Status(t)
	login := st.User[st.Self.UserID].LoginName
	if login == "" {
		t.Fatal("the laptop's user has no login name")
	}
	l.createNetwork("tn")
	l.docker("run", "-d", "--name", "shell", "--network", "tn", "--label", "ts.ssh="+login+",tag:ops", image, "sleep", "3600")
	l.docker("run", "-d", "--name", "closed", "--network", "tn", "--label", "ts.ssh=someone-else@example.com,tag:ops", image, "sleep", "3600")
	addr := net.JoinHostPort(l.tsIP("shell", "-4"), "22")

	// The host key is the one in the node's state dir.
	keyPEM, err := os.ReadFile(filepath.Join(l.engine.StateDir(), "by-hostname", "shell", statedir.SSHHostKeyName))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}

	var c *gossh.Client
	if err := netnstest.WaitFor(15*time.Second, func() (err error) {
		c, err = l.laptopSSH(addr, "root", signer.PublicKey())
		return err
	}); err != nil {
		t.Fatalf("ssh root@shell from the laptop: %v", err)
	}
	defer c.Close()

	// An interactive shell with a terminal.
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm-256color", 30, 100, gossh.TerminalModes{gossh.ECHO: 0}); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	sess.Stdout = &out
	stdin, _ := sess.StdinPipe()
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	if err := sess.WindowChange(45, 132); err != nil {
		t.Fatal(err)
	}
	// The size follows the window change once the shell runs (Docker 20.10
	// takes no size at exec creation).
	fmt.Fprintf(stdin, "id -u; echo \"term=$TERM\"; for i in 1 2 3 4 5 6 7 8 9 10; do [ \"$(stty size)\" = '45 132' ] && break; sleep 0.2; done; stty size; [ -t 0 ] && echo tty; exit 3\n")
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the shell did not end; output so far %q", out.String())
	}
	var exitErr *gossh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
		t.Fatalf("shell: %v, want exit status 3; output %q", err, out.String())
	}
	got := strings.ReplaceAll(out.String(), "\r", "")
	for _, want := range []string{"\n0\n", "term=xterm-256color\n", "45 132\n", "tty\n"} {
		if !strings.Contains("\n"+got, want) {
			t.Errorf("shell output lacks %q:\n%s", want, got)
		}
	}

	// A command with a terminal and no input (ssh -tt host cmd </dev/null):
	// its output still arrives after the client's EOF.
	sess, err = c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 24, 80, gossh.TerminalModes{gossh.ECHO: 0}); err != nil {
		t.Fatal(err)
	}
	sess.Stdin = strings.NewReader("")
	var ttyOut syncBuffer
	sess.Stdout = &ttyOut
	err = sess.Run(`sleep 0.5; echo after-eof; exit 4`)
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 4 || !strings.Contains(ttyOut.String(), "after-eof") {
		t.Errorf("command with a terminal and closed input: %v, output %q; want exit status 4 and after-eof", err, ttyOut.String())
	}

	// A command without a terminal: separate streams, its exit status.
	sess, err = c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run(`echo out; echo err >&2; [ -t 0 ] || echo notty; hostname; exit 5`)
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 5 {
		t.Errorf("command: %v, want exit status 5", err)
	}
	if stdout.String() != "out\nnotty\n"+containerHostname(t, l, "shell")+"\n" || stderr.String() != "err\n" {
		t.Errorf("command: stdout %q stderr %q", stdout.String(), stderr.String())
	}

	// Another user of the container, by uid.
	sess, _ = c.NewSession()
	b, err := sess.Output("id -u")
	if err != nil || string(b) != "0\n" {
		t.Errorf("id -u as root: %q, %v", b, err)
	}
	c2, err := l.laptopSSH(addr, "65534", nil)
	if err != nil {
		t.Fatal(err)
	}
	sess, _ = c2.NewSession()
	b, err = sess.Output("id -u")
	c2.Close()
	if err != nil || string(b) != "65534\n" {
		t.Errorf("id -u as 65534: %q, %v", b, err)
	}

	// ssh's signals reach the process; a client that goes away hangs it up.
	sess, _ = c.NewSession()
	out.Reset()
	sess.Stdout = &out
	if err := sess.Start(`trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done`); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, &out, "ready")
	if err := sess.Signal(gossh.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := sess.Wait(); !errors.As(err, &exitErr) || exitErr.ExitStatus() != 9 || !strings.Contains(out.String(), "got-int") {
		t.Errorf("after SIGINT: %v, output %q; want exit status 9 and got-int", err, out.String())
	}
	c3, err := l.laptopSSH(addr, "root", signer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	sess, _ = c3.NewSession()
	out.Reset()
	sess.Stdout = &out
	if err := sess.Start(`trap 'echo hup > /tmp/hup; exit 1' HUP; echo ready; while :; do sleep 0.1; done`); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, &out, "ready")
	c3.Close()
	if err := netnstest.WaitFor(10*time.Second, func() error {
		_, err := l.engine.Docker(context.Background(), "exec", "shell", "cat", "/tmp/hup")
		return err
	}); err != nil {
		t.Errorf("the process of a closed connection got no SIGHUP: %v", err)
	}

	// A container that does not list the laptop's user refuses it.
	closed := net.JoinHostPort(l.tsIP("closed", "-4"), "22")
	_, err = l.laptopSSH(closed, "root", nil)
	if err == nil {
		t.Errorf("ssh root@closed logged in; want the connection refused")
	}
	log, _ := os.ReadFile(filepath.Join(l.engine.StateDir(), "by-hostname", "closed", "debug.log"))
	if !strings.Contains(string(log), login+" (") || !strings.Contains(string(log), "is not in ts.ssh=someone-else@example.com,tag:ops") {
		t.Errorf("closed's debug.log does not say why it refused:\n%s", grepLines(string(log), "ssh"))
	}
}

// waitOutput waits until out (written by an SSH session) contains want.
func waitOutput(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	if err := netnstest.WaitFor(10*time.Second, func() error {
		if !strings.Contains(out.String(), want) {
			return fmt.Errorf("output %q lacks %q", out.String(), want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe to read while a session writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func containerHostname(t *testing.T, l *lab, ctr string) string {
	t.Helper()
	return strings.TrimSpace(l.docker("exec", ctr, "hostname"))
}
