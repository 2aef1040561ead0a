package statedir

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrInUse: another node holds a node dir's lock.
var ErrInUse = errors.New("state dir in use")

// Lock is an exclusive flock on a node dir's lock file ([LockFileName]). The
// kernel drops the lock when its holder dies, so a crashed plugin never
// leaves a stale lock; the file's content names the holder.
type Lock struct {
	f *os.File
}

// TakeLock creates dir (0700) if needed and takes its lock, recording owner
// in it. If another holder has it, the error wraps [ErrInUse] and names that
// holder.
func TakeLock(dir, owner string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, LockFileName), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state lock in %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			h := strings.TrimSpace(string(holder))
			if h == "" {
				h = "another node"
			}
			return nil, fmt.Errorf("%w: %s is held by %s", ErrInUse, dir, h)
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(owner+"\n"), 0)
	return &Lock{f: f}, nil
}

// Release drops the lock. It is idempotent and safe on a nil Lock.
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	l.f.Close() // closing the last fd drops the flock
	l.f = nil
}

// RemoveNodeDir removes the node dir dir while holding its lock, so a dir
// that a live node holds is never removed: the error then wraps [ErrInUse]
// and names the holder. A missing dir is no error.
func RemoveNodeDir(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	l, err := TakeLock(dir, "removal")
	if err != nil {
		return err
	}
	defer l.Release() // the unlinked lock file's fd: releasing it drops the flock
	return os.RemoveAll(dir)
}

// RemoveAbandoned removes dir if its lock was abandoned: the lock
// file still names a holder (a clean release empties it) but nobody holds
// the flock (the kernel dropped it with the holder's process). It takes the
// flock while removing, so a live holder is never raced. It reports the
// abandoned holder and whether dir was removed.
func RemoveAbandoned(dir string) (holder string, removed bool) {
	f, err := os.OpenFile(filepath.Join(dir, LockFileName), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", false
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	holder = strings.TrimSpace(string(b))
	if holder == "" || unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return holder, false
	}
	return holder, os.RemoveAll(dir) == nil
}
