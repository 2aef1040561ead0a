// Package hostpath opens paths as dockerd sees them, from inside a managed
// plugin. A managed plugin has its own mount namespace (its rootfs), so the
// sandbox key (a netns bind mount under dockerd's exec-root, which is not
// always /var/run/docker) and dockerd's API socket (re-created on every
// dockerd restart, which breaks a bind-mounted socket file) are not visible at
// their own paths. With "pidhost": true and CAP_SYS_PTRACE the plugin can walk
// /proc/<dockerd pid>/root instead, which always shows dockerd's current view.
//
// Absolute symlinks on the way (e.g. /var/run -> /run) would resolve against
// the plugin's root, so the walk is done with filepath-securejoin, which
// resolves them inside dockerd's root.
package hostpath

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	securejoin "github.com/cyphar/filepath-securejoin"
)

var (
	mu        sync.Mutex
	lastPID   int
	preferred int // the dockerd that calls the plugin; 0 until known
)

// Prefer names the dockerd whose view is meant: the peer of the plugin
// socket's connections (package engine). Once set, no other process is
// asked, whatever its name.
func Prefer(pid int) {
	mu.Lock()
	preferred = pid
	mu.Unlock()
}

// Resolve returns a path at which this process can open p as dockerd sees
// it: p itself if it exists here, otherwise p under /proc/<pid>/root of a
// running dockerd. It fails if neither exists.
func Resolve(p string) (string, error) {
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if pid, ok := dockerdHaving(p); ok {
		if rp, ok := under(pid, p); ok {
			return rp, nil
		}
	}
	return "", fmt.Errorf("%s: not found here nor under any dockerd's root (/proc/<pid>/root; the plugin needs pidhost and CAP_SYS_PTRACE): %w", p, os.ErrNotExist)
}

// InDockerd returns p under /proc/<pid>/root of dockerd (the one that calls
// the plugin, once known), never this process's own view of p: for host files
// the plugin's rootfs has a copy of (e.g. /etc/resolv.conf).
func InDockerd(p string) (string, error) {
	if pid, ok := dockerdHaving(p); ok {
		if rp, ok := under(pid, p); ok {
			return rp, nil
		}
	}
	return "", fmt.Errorf("%s: not found under any dockerd's root: %w", p, os.ErrNotExist)
}

// Path returns where this process sees p as dockerd sees it, whether or not
// it exists yet (for polling a path dockerd is about to create): p itself if
// its parent directory exists here, else p under the root of the dockerd
// whose root holds that directory.
func Path(p string) (string, error) {
	dir := filepath.Dir(p)
	if _, err := os.Stat(dir); err == nil {
		return p, nil
	}
	pid, ok := dockerdHaving(dir)
	if !ok {
		return "", fmt.Errorf("%s: its directory is not under any dockerd's root (the plugin needs pidhost): %w", p, os.ErrNotExist)
	}
	return securejoin.SecureJoin("/proc/"+strconv.Itoa(pid)+"/root", p)
}

// dockerdHaving returns the dockerd whose root holds p: the preferred one
// ([Prefer]) if known, else the one found last time if it still does, else
// the first that does (several may run, e.g. test engines with their own
// exec-roots).
func dockerdHaving(p string) (int, bool) {
	mu.Lock()
	pid, pref := lastPID, preferred
	mu.Unlock()
	if pref != 0 {
		_, ok := under(pref, p)
		return pref, ok
	}
	if pid != 0 && isDockerd(pid) {
		if _, ok := under(pid, p); ok {
			return pid, true
		}
	}
	for _, pid := range dockerdPIDs() {
		if _, ok := under(pid, p); ok {
			mu.Lock()
			lastPID = pid
			mu.Unlock()
			return pid, true
		}
	}
	return 0, false
}

func under(pid int, p string) (string, bool) {
	root := "/proc/" + strconv.Itoa(pid) + "/root"
	rp, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return "", false
	}
	if _, err := os.Stat(rp); err != nil {
		return "", false
	}
	return rp, true
}

func isDockerd(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	return err == nil && strings.TrimSpace(string(b)) == "dockerd"
}

func dockerdPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && isDockerd(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}
