package dockerapi

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"golang.org/x/sys/unix"

	"github.com/tslink/tslink/pkg/execssh"
)

// Execer returns an [execssh.Execer] that runs SSH sessions in the
// container with the given ID through Docker's exec API, as `docker exec
// [-it] --user <user>` does. Its calls are made when a session starts, never
// from a plugin call.
func (c *Client) Execer(containerID string) execssh.Execer {
	return &containerExec{c: c, id: containerID}
}

type containerExec struct {
	c  *Client
	id string
}

// fallbackShell is the shell of a user the container's /etc/passwd does
// not name (or names with a shell the container lacks).
const fallbackShell = "/bin/sh"

// detachKeys replace Docker's default detach sequence for terminal
// sessions: dockerd watches a terminal exec's input for ctrl-p,ctrl-q
// unless told otherwise (container/stream's copyEscapable), which would
// hold back every ctrl-p typed in a shell. This sequence is unlikely to be
// typed; its first key is still held until the next one arrives.
const detachKeys = "ctrl-],ctrl-^,ctrl-],ctrl-^"

// Start creates and starts the session's process: req.Command run by the
// user's shell with -c, or that shell as a login shell (-l). The shell is
// the user's from the container's /etc/passwd if the container has it,
// else /bin/sh.
func (e *containerExec) Start(ctx context.Context, req execssh.Request) (execssh.Process, error) {
	shell := e.loginShell(ctx, req.User)
	cmd := []string{shell, "-l"}
	if req.Command != "" {
		cmd = []string{shell, "-c", req.Command}
	}
	opts := container.ExecOptions{
		User:         req.User,
		Tty:          req.TTY,
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		Env:          req.Env,
		Cmd:          cmd,
	}
	var size *[2]uint
	if req.TTY {
		opts.DetachKeys = detachKeys
		if req.Width > 0 && req.Height > 0 {
			// Dropped by the client below API 1.42 (Docker 20.10 speaks
			// 1.41): the size is then set once the process runs.
			size = &[2]uint{uint(req.Height), uint(req.Width)}
			opts.ConsoleSize = size
		}
	}
	created, err := e.c.c.ContainerExecCreate(ctx, e.id, opts)
	if err != nil {
		return nil, fmt.Errorf("docker exec: %w", err)
	}
	hijacked, err := e.c.c.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{Tty: req.TTY, ConsoleSize: size})
	if err != nil {
		return nil, fmt.Errorf("docker exec start: %w", err)
	}
	p := &execProcess{c: e.c, id: created.ID, tty: req.TTY, conn: hijacked}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if size != nil {
		p.size = [2]int{req.Width, req.Height}
		p.sizing = true
		go p.initialSize()
	}
	return p, nil
}

// loginShell returns user's shell from the container's /etc/passwd
// (fetched with the archive API, read up to passwdLimit bytes) if the
// container has that file, else [fallbackShell].
func (e *containerExec) loginShell(ctx context.Context, user string) string {
	name, _, _ := strings.Cut(user, ":")
	rc, _, err := e.c.c.CopyFromContainer(ctx, e.id, "/etc/passwd")
	if err != nil {
		return fallbackShell
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	h, err := tr.Next()
	if err != nil || h.Typeflag != tar.TypeReg {
		return fallbackShell
	}
	shell := shellOf(io.LimitReader(tr, passwdLimit), name)
	if shell == "" || !path.IsAbs(shell) || path.Clean(shell) != shell {
		return fallbackShell
	}
	if _, err := e.c.c.ContainerStatPath(ctx, e.id, shell); err != nil {
		return fallbackShell
	}
	return shell
}

// passwdLimit bounds how much of a container's /etc/passwd is read.
const passwdLimit = 1 << 20

// shellOf returns the shell field of the passwd(5) entry whose name or uid
// is user; "" if none. Shells that refuse logins (nologin, false) count as
// none: docker exec --user runs a command for such users too.
func shellOf(r io.Reader, user string) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) != 7 || (f[0] != user && f[2] != user) {
			continue
		}
		switch path.Base(f[6]) {
		case "nologin", "false":
			return ""
		}
		return f[6]
	}
	return ""
}

// execProcess is a started exec.
type execProcess struct {
	c      *Client
	id     string
	tty    bool
	conn   types.HijackedResponse
	ctx    context.Context // ends with Close
	cancel context.CancelFunc

	mu     sync.Mutex
	size   [2]int // the terminal size last asked for, width and height
	sized  bool   // a size took: later ones go to dockerd at once
	sizing bool   // initialSize runs
}

func (p *execProcess) Stdin() io.WriteCloser { return stdinOf{p} }

type stdinOf struct{ p *execProcess }

func (s stdinOf) Write(b []byte) (int, error) { return s.p.conn.Conn.Write(b) }

// Close half-closes the attach connection: dockerd then closes the
// process's stdin (attach's CloseStdin).
func (s stdinOf) Close() error { return s.p.conn.CloseWrite() }

// CopyOutput copies the attach stream: raw with a terminal, else
// demultiplexed into stdout and stderr (Docker's stream framing, stdcopy).
func (p *execProcess) CopyOutput(stdout, stderr io.Writer) error {
	var err error
	if p.tty {
		_, err = io.Copy(stdout, p.conn.Reader)
	} else {
		_, err = stdcopy.StdCopy(stdout, stderr, p.conn.Reader)
	}
	return err
}

// Resize sets the terminal's size. Until the first size took (dockerd
// refuses a resize until the exec's process runs) it only records it, and
// initialSize applies the latest one.
func (p *execProcess) Resize(ctx context.Context, width, height int) error {
	if width <= 0 || height <= 0 {
		return nil
	}
	p.mu.Lock()
	p.size = [2]int{width, height}
	sized, start := p.sized, !p.sized && !p.sizing
	p.sizing = p.sizing || start
	p.mu.Unlock()
	if start {
		go p.initialSize()
	}
	if !sized {
		return nil
	}
	return p.resize(ctx, width, height)
}

func (p *execProcess) resize(ctx context.Context, width, height int) error {
	return p.c.c.ContainerExecResize(ctx, p.id, container.ResizeOptions{Width: uint(width), Height: uint(height)})
}

// initialSize sets the terminal's first size, the latest one asked for:
// dockerd refuses a resize until the exec's process has started, so it
// retries for a while, as the Docker CLI does.
func (p *execProcess) initialSize() {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	defer func() {
		p.mu.Lock()
		p.sizing = false
		p.mu.Unlock()
	}()
	for i := 0; ; i++ {
		p.mu.Lock()
		size := p.size
		p.mu.Unlock()
		if p.resize(ctx, size[0], size[1]) == nil {
			p.mu.Lock()
			latest := p.size
			p.sized = latest == size
			p.mu.Unlock()
			if latest == size {
				return
			}
			continue // a window change came meanwhile
		}
		if i == 20 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(i+1) * 10 * time.Millisecond):
		}
	}
}

// Signal sends sig to the exec's process. Docker's API has no call for it:
// the plugin shares dockerd's PID namespace (config.json "pidhost"), so
// the PID from ExecInspect is the process's here. The exec is inspected
// right before, so a process that ended is not signalled (its PID may be
// another's by then).
func (p *execProcess) Signal(ctx context.Context, sig syscall.Signal) error {
	st, err := p.c.c.ContainerExecInspect(ctx, p.id)
	if err != nil {
		return err
	}
	if !st.Running || st.Pid <= 0 {
		return nil
	}
	return unix.Kill(st.Pid, sig)
}

// Wait polls ExecInspect until the exec no longer runs and returns its exit
// code. The attach stream ends when the process closes its output, a
// moment before dockerd records the exit.
func (p *execProcess) Wait(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	for {
		st, err := p.c.c.ContainerExecInspect(ctx, p.id)
		if err != nil {
			return 0, err
		}
		if !st.Running {
			return st.ExitCode, nil
		}
		select {
		case <-ctx.Done():
			return 0, errors.New("the process closed its output but still runs")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitLimit bounds Wait: a process can close its output and run on (e.g.
// `exec >&-; sleep 1000`).
const waitLimit = 10 * time.Second

func (p *execProcess) Close() error {
	p.cancel()
	p.conn.Close()
	return nil
}
