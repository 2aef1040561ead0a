// Package execssh is an SSH server whose sessions are processes started in
// a container rather than on the host: what `ssh <user>@<node>` gets from a
// container with the ts.ssh label. It knows nothing of Tailscale or Docker:
// [Server.Authorize] decides who may log in (package stack asks the node
// who the peer is), and an [Execer] starts the session's process (package
// dockerapi, through Docker's exec API).
//
// The SSH protocol is github.com/tailscale/gliderssh's (Tailscale's fork of
// gliderlabs/ssh, on golang.org/x/crypto/ssh): it parses the session's
// pty-req, window-change, env, exec/shell and signal requests and sends
// exit-status. Authentication is SSH's "none" method, accepted only when
// Authorize accepts the connection's peer, as Tailscale SSH does: the
// tailnet identity behind the connection's source address is the
// credential. No other method is offered, so a refused peer gets
// "Permission denied" before any session. Port forwarding, agent
// forwarding and subsystems (sftp) are refused.
package execssh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gliderssh "github.com/tailscale/gliderssh"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// Request is one session's process, as the client asked for it.
type Request struct {
	// User is the SSH user name: the container user the process runs as,
	// in docker exec --user's form (name, uid, name:group or uid:gid).
	User string
	// Command is the client's command (`ssh host cmd`), for the user's
	// shell to run with -c; "" asks for an interactive login shell.
	Command string
	// TTY: the client asked for a terminal (pty-req). Without one, the
	// process's stdout and stderr are separate streams.
	TTY bool
	// Width and Height are the terminal's size in characters (TTY only;
	// 0 when the client did not say).
	Width, Height int
	// Env is KEY=value pairs for the process: TERM (with a terminal),
	// SSH_CONNECTION, SSH_CLIENT and the client's variables that
	// [AcceptEnv] lets through.
	Env []string
}

// Process is a session's running process.
type Process interface {
	// Stdin is the process's standard input; closing it is EOF to the
	// process.
	Stdin() io.WriteCloser
	// CopyOutput copies the process's output to stdout and stderr (with a
	// terminal, everything goes to stdout) until the process and whatever
	// it started have closed it.
	CopyOutput(stdout, stderr io.Writer) error
	// Resize sets the terminal's size in characters.
	Resize(ctx context.Context, width, height int) error
	// Signal sends sig to the process, if it still runs.
	Signal(ctx context.Context, sig syscall.Signal) error
	// Wait returns the process's exit status once it has ended.
	Wait(ctx context.Context) (int, error)
	// Close releases the connection to the process (not the process).
	Close() error
}

// Execer starts sessions' processes.
type Execer interface {
	Start(ctx context.Context, req Request) (Process, error)
}

// Server serves SSH connections from one listener.
type Server struct {
	// HostKey identifies the server to clients. Required.
	HostKey gossh.Signer
	// Authorize decides whether the peer at remote may log in. It returns
	// a description of the peer for logs (e.g. its login name), or the
	// reason it is refused; the client only learns that it was refused.
	Authorize func(ctx context.Context, remote netip.AddrPort) (who string, err error)
	// Exec starts the sessions' processes. Required.
	Exec Execer
	// Logf receives one line per login, refusal and session end; nil
	// discards them.
	Logf func(format string, args ...any)

	preAuth chan struct{} // slots of connections not yet logged in: maxPreAuth

	mu     sync.Mutex
	srv    *gliderssh.Server
	closed bool
	wg     sync.WaitGroup // session handlers
}

// handshakeTimeout bounds a connection's key exchange and authentication.
const handshakeTimeout = 30 * time.Second

// maxPreAuth bounds the connections of one server that have not logged in
// yet. golang.org/x/crypto/ssh allocates what a peer's packet header claims
// (up to 256 KiB) during key exchange, before any authentication.
const maxPreAuth = 16

// ctxKeyWho is where a connection's context keeps who Authorize let in.
type ctxKeyWho struct{}

// Serve accepts connections on ln until [Server.Close] (then it returns
// nil) or ln fails.
func (s *Server) Serve(ln net.Listener) error {
	if s.HostKey == nil || s.Exec == nil || s.Authorize == nil {
		return errors.New("execssh: Server needs HostKey, Authorize and Exec")
	}
	s.preAuth = make(chan struct{}, maxPreAuth)
	srv := &gliderssh.Server{
		Version: "tslink",
		// A peer Authorize refuses is disconnected before the SSH
		// handshake, and at most maxPreAuth others handshake at once:
		// what a peer can make the plugin hold before it has logged in
		// stays bounded.
		ConnCallback: s.admit,
		HostSigners:  []gliderssh.Signer{s.HostKey},
		Handler:      s.session,
		// A connection that has not logged in by then is closed.
		HandshakeTimeout: handshakeTimeout,
		// "none" is accepted for an authorised peer (OpenSSH and Go's
		// client try it first); keyboard-interactive, with no questions,
		// is the same check for clients that skip "none", and gives a
		// refused client a method to fail with ("Permission denied"
		// rather than a dropped connection).
		ServerConfigCallback: func(gliderssh.Context) *gossh.ServerConfig {
			return &gossh.ServerConfig{NoClientAuth: true}
		},
		NoClientAuthHandler: s.authorize,
		KeyboardInteractiveHandler: func(ctx gliderssh.Context, challenge gossh.KeyboardInteractiveChallenge) bool {
			// An info request without prompts: clients (Go's among
			// them) expect one before the verdict.
			if _, err := challenge("", "", nil, nil); err != nil {
				return false
			}
			return s.authorize(ctx) == nil
		},
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.srv = srv
	s.mu.Unlock()
	err := srv.Serve(ln)
	if errors.Is(err, gliderssh.ErrServerClosed) {
		return nil
	}
	return err
}

// admit is the server's ConnCallback: it refuses a peer Authorize refuses,
// and one over maxPreAuth, before any SSH byte is read; a connection it
// admits holds a pre-authentication slot until it logs in or closes.
func (s *Server) admit(ctx gliderssh.Context, conn net.Conn) net.Conn {
	remote, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return nil
	}
	if _, err := s.Authorize(ctx, remote); err != nil {
		s.logf("ssh: refused %v: %v", remote, err)
		return nil
	}
	select {
	case s.preAuth <- struct{}{}:
	default:
		s.logf("ssh: refused %v: %d connections are already logging in", remote, maxPreAuth)
		return nil
	}
	c := &preAuthConn{Conn: conn, release: sync.OnceFunc(func() { <-s.preAuth })}
	ctx.SetValue(ctxKeyPreAuth{}, c)
	return c
}

// ctxKeyPreAuth is where a connection's context keeps its *preAuthConn.
type ctxKeyPreAuth struct{}

// preAuthConn gives back its pre-authentication slot when it logs in or
// closes, whichever comes first.
type preAuthConn struct {
	net.Conn
	release func()
}

func (c *preAuthConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// ctxKeyRefused marks a connection whose refusal was logged.
type ctxKeyRefused struct{}

// authorize asks Authorize about the connection's peer and keeps the
// answer in the connection's context.
func (s *Server) authorize(ctx gliderssh.Context) error {
	remote, err := netip.ParseAddrPort(ctx.RemoteAddr().String())
	if err != nil {
		return fmt.Errorf("remote address %v: %w", ctx.RemoteAddr(), err)
	}
	who, err := s.Authorize(ctx, remote)
	if err != nil {
		if ctx.Value(ctxKeyRefused{}) == nil {
			ctx.SetValue(ctxKeyRefused{}, true)
			s.logf("ssh: refused %v as %q: %v", remote, ctx.User(), err)
		}
		return errors.New("permission denied")
	}
	ctx.SetValue(ctxKeyWho{}, who)
	if c, ok := ctx.Value(ctxKeyPreAuth{}).(*preAuthConn); ok {
		c.release()
	}
	return nil
}

// Close stops accepting, cuts every connection and waits for the sessions'
// handlers to end. It asks nothing of the Execer (the processes the sessions
// started keep running; the caller closes the server when their container
// stops): the calls a session still had under way end with its connection's
// context.
func (s *Server) Close() error {
	s.mu.Lock()
	srv := s.srv
	s.closed = true
	s.mu.Unlock()
	var err error
	if srv != nil {
		err = srv.Close()
	}
	s.wg.Wait()
	return err
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// userRE is the accepted form of an SSH user name: a container user as
// docker exec --user takes it.
var userRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,63})?$`)

// AcceptEnv reports whether a variable the client sends (SSH "env"
// request) reaches the process: LANG and LC_*, as Debian's sshd_config
// accepts them.
func AcceptEnv(name string) bool {
	return name == "LANG" || strings.HasPrefix(name, "LC_") && len(name) > 3
}

// sessionHangup is the signal a session's process gets when its client goes
// away while it runs: sshd's process sees its terminal hang up (SIGHUP), but
// Docker keeps an exec's terminal open until the process ends.
const sessionHangup = unix.SIGHUP

func (s *Server) session(sess gliderssh.Session) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sess.Exit(255)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	ctx := sess.Context()
	who, _ := ctx.Value(ctxKeyWho{}).(string)
	pty, winCh, isPty := sess.Pty()
	if isPty {
		// The process's own terminal (Docker's) translates newlines.
		sess.DisablePTYEmulation()
	}
	nl := "\n"
	if isPty {
		nl = "\r\n"
	}
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		s.logf("ssh: %s as %q: %s", who, sess.User(), msg)
		fmt.Fprintf(sess.Stderr(), "tslink: %s%s", msg, nl)
		sess.CloseWrite()
		sess.Exit(1)
	}
	if !userRE.MatchString(sess.User()) {
		fail("user %q: want a user name or uid of the container, as docker exec --user takes it (name, uid, name:group or uid:gid)", sess.User())
		return
	}
	req := Request{User: sess.User(), Command: sess.RawCommand(), TTY: isPty}
	if isPty {
		req.Width, req.Height = pty.Window.Width, pty.Window.Height
		if pty.Term != "" {
			req.Env = append(req.Env, "TERM="+pty.Term)
		}
	}
	req.Env = append(req.Env, connectionEnv(sess.RemoteAddr(), sess.LocalAddr())...)
	for _, kv := range sess.Environ() {
		if k, _, ok := strings.Cut(kv, "="); ok && AcceptEnv(k) {
			req.Env = append(req.Env, kv)
		}
	}
	proc, err := s.Exec.Start(ctx, req)
	if err != nil {
		fail("%v", err)
		return
	}
	defer proc.Close()
	what := "a shell"
	if req.Command != "" {
		what = "a command"
	}
	if isPty {
		what += ", with a terminal"
	}
	s.logf("ssh: %s logged in as %q (%s)", who, req.User, what)

	sigCh := make(chan gliderssh.Signal, 8)
	sess.Signals(sigCh)
	defer sess.Signals(nil)
	ended := make(chan struct{})
	hungUp := make(chan struct{})
	go func() {
		for {
			select {
			case <-ended:
				return
			case <-ctx.Done():
				// The client went away while the process runs. When the
				// server closes instead (the node stops with its
				// container), nothing is asked of Execer: the container's
				// processes end with it.
				if !s.isClosed() {
					sctx, cancel := context.WithTimeout(context.Background(), signalTimeout)
					proc.Signal(sctx, sessionHangup)
					cancel()
				}
				close(hungUp)
				proc.Close() // ends CopyOutput
				return
			case w, ok := <-winCh:
				if !ok {
					winCh = nil
					continue
				}
				if err := proc.Resize(ctx, w.Width, w.Height); err != nil {
					s.logf("ssh: %s: window change: %v", who, err)
				}
			case sig := <-sigCh:
				if n := unix.SignalNum("SIG" + string(sig)); n != 0 {
					proc.Signal(ctx, n)
				}
			}
		}
	}()
	go func() {
		io.Copy(proc.Stdin(), sess)
		if !isPty {
			// With a TTY, dockerd ends the exec's output when its
			// input closes, as a terminal cannot be half-closed;
			// sshd also keeps a pty open after the client's EOF.
			proc.Stdin().Close()
		}
	}()
	outErr := proc.CopyOutput(sess, sess.Stderr())
	close(ended)
	select {
	case <-hungUp:
		s.logf("ssh: %s: connection closed while the process ran", who)
		return
	default:
	}
	code, err := proc.Wait(ctx)
	if err != nil {
		s.logf("ssh: %s: exit status: %v (output: %v)", who, err, outErr)
		code = 255
	}
	sess.CloseWrite()
	sess.Exit(code)
	s.logf("ssh: %s: session ended, exit status %d", who, code)
}

// signalTimeout bounds the Docker calls behind a signal.
const signalTimeout = 5 * time.Second

// connectionEnv is sshd's SSH_CONNECTION ("client-ip client-port server-ip
// server-port") and SSH_CLIENT ("client-ip client-port server-port").
func connectionEnv(remote, local net.Addr) []string {
	r, err1 := netip.ParseAddrPort(remote.String())
	l, err2 := netip.ParseAddrPort(local.String())
	if err1 != nil || err2 != nil {
		return nil
	}
	rp, lp := strconv.Itoa(int(r.Port())), strconv.Itoa(int(l.Port()))
	return []string{
		"SSH_CONNECTION=" + r.Addr().String() + " " + rp + " " + l.Addr().String() + " " + lp,
		"SSH_CLIENT=" + r.Addr().String() + " " + rp + " " + lp,
	}
}
