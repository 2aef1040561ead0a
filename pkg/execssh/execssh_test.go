package execssh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// fakeExec records requests; its processes run a tiny line interpreter:
// "exit N" ends with status N, "sleep" waits until signalled, anything
// else is echoed. A command request prints "out:<cmd>" to stdout and
// "err:<cmd>" to stderr and exits 7.
type fakeExec struct {
	mu       sync.Mutex
	reqs     []Request
	resizes  [][2]int
	signals  []syscall.Signal
	startErr error
}

func (f *fakeExec) Start(ctx context.Context, req Request) (Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.startErr != nil {
		return nil, f.startErr
	}
	inR, inW := io.Pipe()
	p := &fakeProc{f: f, req: req, stdin: inW, in: inR, done: make(chan struct{}), sig: make(chan syscall.Signal, 4), closed: make(chan struct{})}
	return p, nil
}

type fakeProc struct {
	f      *fakeExec
	req    Request
	stdin  *io.PipeWriter
	in     *io.PipeReader
	code   int
	done   chan struct{}
	sig    chan syscall.Signal
	closed chan struct{} // Close cuts the output, as closing the attach stream does
	once   sync.Once
}

func (p *fakeProc) Stdin() io.WriteCloser { return p.stdin }

func (p *fakeProc) CopyOutput(stdout, stderr io.Writer) error {
	defer close(p.done)
	if p.req.Command != "" {
		fmt.Fprintf(stdout, "out:%s\n", p.req.Command)
		fmt.Fprintf(stderr, "err:%s\n", p.req.Command)
		p.code = 7
		return nil
	}
	sc := bufio.NewScanner(p.in)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "exit "):
			fmt.Sscan(strings.TrimPrefix(line, "exit "), &p.code)
			return nil
		case line == "sleep":
			fmt.Fprintf(stdout, "sleeping\r\n")
			select {
			case <-p.sig:
				p.code = 129
				return nil
			case <-p.closed:
				return io.ErrClosedPipe
			}
		default:
			fmt.Fprintf(stdout, "%s\r\n", line)
		}
	}
	return nil
}

func (p *fakeProc) Resize(ctx context.Context, w, h int) error {
	p.f.mu.Lock()
	p.f.resizes = append(p.f.resizes, [2]int{w, h})
	p.f.mu.Unlock()
	return nil
}

func (p *fakeProc) Signal(ctx context.Context, sig syscall.Signal) error {
	p.f.mu.Lock()
	p.f.signals = append(p.f.signals, sig)
	p.f.mu.Unlock()
	select {
	case p.sig <- sig:
	default:
	}
	return nil
}

func (p *fakeProc) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.code, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (p *fakeProc) Close() error {
	p.once.Do(func() {
		p.in.CloseWithError(io.EOF)
		close(p.closed)
	})
	return nil
}

// startServer serves on loopback; allow decides Authorize.
func startServer(t *testing.T, ex Execer, allow func(netip.AddrPort) error) (addr string, hostKey gossh.PublicKey, logs *lockedBuf) {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = &lockedBuf{}
	s := &Server{
		HostKey: signer,
		Authorize: func(ctx context.Context, remote netip.AddrPort) (string, error) {
			if err := allow(remote); err != nil {
				return "", err
			}
			return "alice@example.com", nil
		},
		Exec: ex,
		Logf: func(f string, a ...any) { logs.printf(f, a...) },
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), signer.PublicKey(), logs
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) printf(f string, a ...any) {
	l.mu.Lock()
	fmt.Fprintf(&l.b, f+"\n", a...)
	l.mu.Unlock()
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func dial(t *testing.T, addr, user string, hostKey gossh.PublicKey) (*gossh.Client, error) {
	return gossh.Dial("tcp", addr, &gossh.ClientConfig{
		User:            user,
		HostKeyCallback: gossh.FixedHostKey(hostKey),
		Timeout:         5 * time.Second,
	})
}

func TestShellWithTerminal(t *testing.T) {
	ex := &fakeExec{}
	addr, hk, logs := startServer(t, ex, func(netip.AddrPort) error { return nil })
	c, err := dial(t, addr, "root", hk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	sess.Setenv("LANG", "C.UTF-8")
	sess.Setenv("LC_ALL", "C")
	sess.Setenv("EVIL", "1") // not passed on
	if err := sess.RequestPty("xterm-256color", 40, 100, gossh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sess.Stdout = &out
	stdin, _ := sess.StdinPipe()
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(stdin, "hello\n")
	time.Sleep(50 * time.Millisecond)
	if err := sess.WindowChange(50, 132); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	fmt.Fprintf(stdin, "exit 3\n")
	err = sess.Wait()
	var exitErr *gossh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
		t.Fatalf("Wait = %v, want exit status 3", err)
	}
	// No newline translation on top of the container's own terminal.
	if out.String() != "hello\r\n" {
		t.Errorf("output %q", out.String())
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	r := ex.reqs[0]
	if r.User != "root" || r.Command != "" || !r.TTY || r.Width != 100 || r.Height != 40 {
		t.Errorf("request %+v", r)
	}
	for _, want := range []string{"TERM=xterm-256color", "LANG=C.UTF-8", "LC_ALL=C"} {
		if !slices.Contains(r.Env, want) {
			t.Errorf("env %q lacks %s", r.Env, want)
		}
	}
	if slices.Contains(r.Env, "EVIL=1") {
		t.Errorf("env %q has a variable sshd would not accept", r.Env)
	}
	if !slices.ContainsFunc(r.Env, func(kv string) bool { return strings.HasPrefix(kv, "SSH_CONNECTION=127.0.0.1 ") }) {
		t.Errorf("env %q lacks SSH_CONNECTION", r.Env)
	}
	if !slices.Contains(ex.resizes, [2]int{132, 50}) {
		t.Errorf("resizes %v, want 132x50", ex.resizes)
	}
	if !strings.Contains(logs.String(), `alice@example.com logged in as "root" (a shell, with a terminal)`) {
		t.Errorf("log:\n%s", logs)
	}
}

func TestCommandWithoutTerminal(t *testing.T) {
	ex := &fakeExec{}
	addr, hk, _ := startServer(t, ex, func(netip.AddrPort) error { return nil })
	c, err := dial(t, addr, "1000:1000", hk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, _ := c.NewSession()
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run("echo hi")
	var exitErr *gossh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 7 {
		t.Fatalf("Run = %v, want exit status 7", err)
	}
	if stdout.String() != "out:echo hi\n" || stderr.String() != "err:echo hi\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if r := ex.reqs[0]; r.User != "1000:1000" || r.Command != "echo hi" || r.TTY {
		t.Errorf("request %+v", r)
	}
}

func TestRefusedPeer(t *testing.T) {
	ex := &fakeExec{}
	addr, hk, logs := startServer(t, ex, func(netip.AddrPort) error { return errors.New("bob@example.com is not in ts.ssh") })
	// Refused before the SSH handshake: the client sees the connection close.
	_, err := dial(t, addr, "root", hk)
	if err == nil {
		t.Fatalf("dial = %v, want the connection refused", err)
	}
	if len(ex.reqs) != 0 {
		t.Errorf("a refused peer started %v", ex.reqs)
	}
	if !strings.Contains(logs.String(), `refused 127.0.0.1:`) || !strings.Contains(logs.String(), "bob@example.com is not in ts.ssh") {
		t.Errorf("log:\n%s", logs)
	}
}

func TestBadUserAndStartError(t *testing.T) {
	ex := &fakeExec{}
	addr, hk, _ := startServer(t, ex, func(netip.AddrPort) error { return nil })
	for _, tt := range []struct{ user, want string }{
		{"ro ot", `tslink: user "ro ot": want a user name or uid`},
		{"-x", `tslink: user "-x"`},
	} {
		c, err := dial(t, addr, tt.user, hk)
		if err != nil {
			t.Fatal(err)
		}
		sess, _ := c.NewSession()
		var stderr bytes.Buffer
		sess.Stderr = &stderr
		err = sess.Run("true")
		var exitErr *gossh.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 1 || !strings.Contains(stderr.String(), tt.want) {
			t.Errorf("user %q: %v, stderr %q", tt.user, err, stderr.String())
		}
		c.Close()
	}
	ex.mu.Lock()
	ex.startErr = errors.New(`unable to find user nobody2: no matching entries in passwd file`)
	ex.mu.Unlock()
	c, err := dial(t, addr, "nobody2", hk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, _ := c.NewSession()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	err = sess.Run("true")
	if !strings.Contains(stderr.String(), "tslink: unable to find user nobody2") {
		t.Errorf("start error: %v, stderr %q", err, stderr.String())
	}
}

func TestForwardingRefused(t *testing.T) {
	addr, hk, _ := startServer(t, &fakeExec{}, func(netip.AddrPort) error { return nil })
	c, err := dial(t, addr, "root", hk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if conn, err := c.Dial("tcp", "127.0.0.1:1"); err == nil {
		conn.Close()
		t.Error("direct-tcpip was accepted")
	}
	sess, _ := c.NewSession()
	if err := sess.RequestSubsystem("sftp"); err == nil {
		t.Error("sftp subsystem was accepted")
	}
}

func TestClientGoneHangsUp(t *testing.T) {
	ex := &fakeExec{}
	addr, hk, logs := startServer(t, ex, func(netip.AddrPort) error { return nil })
	c, err := dial(t, addr, "root", hk)
	if err != nil {
		t.Fatal(err)
	}
	sess, _ := c.NewSession()
	sess.RequestPty("xterm", 24, 80, nil)
	out, _ := sess.StdoutPipe()
	stdin, _ := sess.StdinPipe()
	sess.Shell()
	fmt.Fprintf(stdin, "sleep\n")
	buf := make([]byte, 8)
	io.ReadFull(out, buf)
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ex.mu.Lock()
		got := slices.Clone(ex.signals)
		ex.mu.Unlock()
		if slices.Contains(got, syscall.SIGHUP) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SIGHUP after the client went away (signals %v); log:\n%s", got, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAcceptEnv(t *testing.T) {
	for name, want := range map[string]bool{"LANG": true, "LC_ALL": true, "LC_": false, "PATH": false, "LD_PRELOAD": false, "TERM": false} {
		if AcceptEnv(name) != want {
			t.Errorf("AcceptEnv(%q) = %v", name, !want)
		}
	}
}

func TestKeyboardInteractive(t *testing.T) {
	allowed := true
	var mu sync.Mutex
	addr, hk, _ := startServer(t, &fakeExec{}, func(netip.AddrPort) error {
		mu.Lock()
		defer mu.Unlock()
		if !allowed {
			return errors.New("not listed")
		}
		return nil
	})
	asked := 0
	cfg := &gossh.ClientConfig{
		User:            "root",
		HostKeyCallback: gossh.FixedHostKey(hk),
		Auth: []gossh.AuthMethod{gossh.KeyboardInteractive(func(name, instruction string, questions []string, echos []bool) ([]string, error) {
			asked += len(questions)
			return nil, nil
		})},
		Timeout: 5 * time.Second,
	}
	c, err := gossh.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("allowed peer: %v", err)
	}
	c.Close()
	if asked != 0 {
		t.Errorf("keyboard-interactive asked %d questions", asked)
	}
	mu.Lock()
	allowed = false
	mu.Unlock()
	if _, err = gossh.Dial("tcp", addr, cfg); err == nil {
		t.Fatalf("refused peer logged in")
	}
}

// TestPreAuthSlots: at most maxPreAuth connections handshake at once (each
// can make x/crypto/ssh hold what its packet header claims); one more is
// closed at once, and a slot comes back when a connection closes.
func TestPreAuthSlots(t *testing.T) {
	ex := &fakeExec{}
	addr, hk, logs := startServer(t, ex, func(netip.AddrPort) error { return nil })
	var idle []net.Conn
	for range maxPreAuth {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// The server sends its version only after admit took a slot, and it
	// admits in a goroutine per connection: wait for every banner so the
	// next login is sure to find the slots taken.
	for i, c := range idle {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		banner := make([]byte, 4)
		if _, err := io.ReadFull(c, banner); err != nil || string(banner) != "SSH-" {
			t.Fatalf("idle connection %d: no SSH banner (%q, %v)", i, banner, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "already logging in") && time.Now().Before(deadline) {
		if c, err := dial(t, addr, "root", hk); err == nil {
			c.Close()
			t.Fatal("a login went through while every pre-authentication slot was taken")
		}
	}
	if !strings.Contains(logs.String(), "already logging in") {
		t.Fatalf("no refusal for lack of slots logged:\n%s", logs)
	}
	idle[0].Close()
	var err error
	for time.Now().Before(deadline.Add(5 * time.Second)) {
		var c *gossh.Client
		if c, err = dial(t, addr, "root", hk); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no login after a slot came back: %v", err)
}

// TestCloseAsksNothing: closing the server (the node stops with its
// container) cuts sessions without signalling their processes: the
// container's processes end with it, and a Docker call then could wait on
// the engine that is stopping the container.
func TestCloseAsksNothing(t *testing.T) {
	ex := &fakeExec{}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{HostKey: signer, Exec: ex, Authorize: func(context.Context, netip.AddrPort) (string, error) { return "x", nil }}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	c, err := dial(t, ln.Addr().String(), "root", signer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, _ := c.NewSession()
	out, _ := sess.StdoutPipe()
	stdin, _ := sess.StdinPipe()
	sess.Shell()
	fmt.Fprintf(stdin, "sleep\n")
	io.ReadFull(out, make([]byte, 8))
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if len(ex.signals) > 0 {
		t.Errorf("Close signalled %v", ex.signals)
	}
}
