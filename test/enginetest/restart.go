package enginetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The engine restarts below return once the new dockerd process has started,
// without waiting for its API: while dockerd restores its containers (and
// calls the plugin's Join for each restart-policy one) it serves no API, and
// tests measure that wait with [Engine.WaitAPI] from [Engine.Started].

// RestartGracefully stops dockerd with SIGTERM and waits for it to exit,
// as `systemctl restart docker` does (without live-restore dockerd stops
// the containers and the plugin first), then starts it again with the same
// flags, data-root and exec-root. A dockerd that needs more than 30 s to
// stop is killed and fails t.
func (e *Engine) RestartGracefully(t testing.TB) {
	t.Helper()
	if err := e.stopDaemon(); err != nil {
		t.Errorf("graceful stop: %v\n%s", err, e.LogTail(30))
	}
	e.launch(t)
}

// RestartAfterCrash kills dockerd alone with SIGKILL, as a crash or the
// OOM killer does, and starts it again. What dockerd started lives on or not
// as it would: its containerd dies with it (dockerd starts containerd with
// a parent-death signal), the shims, containers and the plugin live on.
func (e *Engine) RestartAfterCrash(t testing.TB) {
	t.Helper()
	if e.cmd != nil && e.cmd.Process != nil {
		fmt.Fprintf(e.log, "=== enginetest: SIGKILL to dockerd %d\n", e.cmd.Process.Pid)
		e.cmd.Process.Kill()
		e.cmd.Wait()
		e.cmd = nil
	}
	e.forgetDeadContainerd()
	e.launch(t)
}

// forgetDeadContainerd waits for the containerd that dockerd started to die
// with it and removes its pidfile if it is a zombie: the restarted dockerd
// reuses a containerd whose pid answers kill(pid, 0), which a zombie does,
// and then waits for a socket nobody serves. On a host, init reaps the
// orphan and the pid is gone; this machine's PID 1 may not reap.
func (e *Engine) forgetDeadContainerd() {
	pidfile := filepath.Join(e.ExecRoot(), "containerd", "containerd.pid")
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	for deadline := time.Now().Add(10 * time.Second); alive(pid) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if !alive(pid) && syscall.Kill(pid, 0) == nil {
		fmt.Fprintf(e.log, "=== enginetest: containerd %d is a zombie: removing %s\n", pid, pidfile)
		os.Remove(pidfile)
	}
}

// Reboot simulates a host reboot and starts the engine as the boot would:
//
//   - every process of the engine dies at once (SIGKILL): dockerd, its
//     containerd, the shims, the containers' processes and the plugin's;
//   - the exec-root (a tmpfs under /run on a real host) is unmounted and
//     removed, with the containers' netns bind mounts under it; every other
//     mount the engine made (overlay layers) is unmounted;
//   - every link Docker or tslink made in the engine's network namespace is
//     deleted (see [deleteEngineLinks]), and the firewall is emptied (nft
//     flush ruleset), as after a boot;
//   - the data-root and the plugin's state dir ([Engine.StateDir]) stay.
//
// Then dockerd starts with the same flags.
func (e *Engine) Reboot(t testing.TB) {
	t.Helper()
	fmt.Fprintf(e.log, "=== enginetest: simulated reboot\n")
	e.killAll()
	var errs []string
	for range 5 {
		e.unmountAll()
		if err := os.RemoveAll(e.ExecRoot()); err != nil {
			errs = append(errs, err.Error())
			time.Sleep(200 * time.Millisecond)
			continue
		}
		errs = nil
		break
	}
	if errs != nil {
		t.Fatalf("reboot: removing the exec-root: %s", strings.Join(errs, "; "))
	}
	// The kernel destroys a netns (and the veth ends and macvlans in it)
	// asynchronously once its last reference is gone.
	if err := waitLinksGone(10 * time.Second); err != nil {
		fmt.Fprintf(e.log, "=== enginetest: reboot: %v; deleting them\n", err)
	}
	if left := deleteEngineLinks(); len(left) > 0 {
		t.Fatalf("reboot: links that could not be deleted: %v", left)
	}
	if out, err := exec.Command("nft", "flush", "ruleset").CombinedOutput(); err != nil {
		t.Fatalf("reboot: nft flush ruleset: %v: %s", err, out)
	}
	e.launch(t)
}

// killAll SIGKILLs every process of the engine: dockerd, the processes
// whose command line names the engine's dir (containerd, the shims) and
// every descendant of those (the containers' processes, the plugin), and
// waits until they are gone.
func (e *Engine) killAll() {
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Kill()
		e.cmd.Wait()
		e.cmd = nil
	}
	var killed []int
	for range 5 {
		pids := e.processes()
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		killed = append(killed, pids...)
		time.Sleep(100 * time.Millisecond)
	}
	// Orphans are reaped by init; a zombie holds nothing.
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range killed {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if len(killed) > 0 {
		fmt.Fprintf(e.log, "=== enginetest: killed %d engine processes\n", len(killed))
	}
}

// processes lists the live processes of the engine other than dockerd:
// those whose command line names e.Dir and their descendants.
func (e *Engine) processes() []int {
	parent := map[int]int{}
	var roots []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		if pid == os.Getpid() || !alive(pid) {
			continue
		}
		if ppid := ppidOf(pid); ppid > 0 {
			parent[pid] = ppid
		}
		cmd, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		if strings.Contains(string(cmd), e.Dir+"/") {
			roots = append(roots, pid)
		}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	for grew := true; grew; {
		grew = false
		for pid, ppid := range parent {
			if in[ppid] && !in[pid] {
				in[pid], grew = true, true
			}
		}
	}
	var out []int
	for pid := range in {
		out = append(out, pid)
	}
	return out
}

// ppidOf reads a process's parent from /proc/<pid>/stat (the field after
// the parenthesised command name and the state).
func ppidOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b)[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(string(b)[i+1:]), "Z")
}

// unmountAll detaches every mount under e.Dir, deepest first, until none is
// left (a shared mount may show up again once its parent is gone).
func (e *Engine) unmountAll() {
	for range 5 {
		mounts := mountsUnder(e.Dir + "/")
		if len(mounts) == 0 {
			return
		}
		for i := len(mounts) - 1; i >= 0; i-- {
			syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
}

func mountsUnder(prefix string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], prefix) {
			mounts = append(mounts, f[4])
		}
	}
	return mounts
}

// engineLink reports whether a link of the engine's netns was made by
// Docker (docker0, docker_gwbridge, the host ends of container veths) or
// by tslink (a network's parent veth pair tsb…/tsp…, an endpoint's macvlan
// tsc… before Docker moves it, a TUN tsl… before it reaches a container;
// see pkg/netdriver/links_linux.go and stack.HostTUNName). The lab's own
// veths are named otherwise (netnstest, startInternet).
func engineLink(name string) bool {
	if name == "docker0" || name == "docker_gwbridge" || strings.HasPrefix(name, "veth") {
		return true
	}
	for _, p := range []string{"tsb", "tsp", "tsc", "tsl"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// engineLinks lists the engine's links in the current netns.
func engineLinks() []string {
	links, _ := netlink.LinkList()
	var out []string
	for _, l := range links {
		if engineLink(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// waitLinksGone waits for the container veths to go with their netns
// (the other links stay until deleted).
func waitLinksGone(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var vethsLeft []string
		for _, n := range engineLinks() {
			if strings.HasPrefix(n, "veth") {
				vethsLeft = append(vethsLeft, n)
			}
		}
		if len(vethsLeft) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("container veths still there after %v: %v", d, vethsLeft)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deleteEngineLinks deletes every link of [engineLink] in the current
// netns and returns the ones still there afterwards.
func deleteEngineLinks() []string {
	for _, name := range engineLinks() {
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	}
	return engineLinks()
}
