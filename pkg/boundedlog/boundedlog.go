// Package boundedlog is a size-bounded append-only log file: when the file
// reaches its limit it is renamed to <name>.1 (replacing the previous one)
// and a new file is started, so a node's debug.log never exceeds twice the
// limit on disk.
package boundedlog

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// DefaultMaxBytes is the size at which a log rotates.
const DefaultMaxBytes = 4 << 20

// File is a bounded log file. Its methods are safe for concurrent use.
type File struct {
	path string
	max  int64

	mu   sync.Mutex
	f    *os.File
	size int64
}

// Open opens (appending to) or creates path, mode 0600. maxBytes <= 0 means
// [DefaultMaxBytes].
func Open(path string, maxBytes int64) (*File, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	l := &File{path: path, max: maxBytes}
	if err := l.openLocked(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *File) openLocked() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening log %s: %w", l.path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, fi.Size()
	return nil
}

// Logf writes one timestamped line; it has the shape of logger.Logf.
func (l *File) Logf(format string, args ...any) {
	line := time.Now().UTC().Format("2006-01-02T15:04:05.000Z ") + fmt.Sprintf(format, args...)
	if len(line) == 0 || line[len(line)-1] != '\n' {
		line += "\n"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if l.size+int64(len(line)) > l.max {
		l.f.Close()
		os.Rename(l.path, l.path+".1")
		if err := l.openLocked(); err != nil {
			l.f = nil
			return
		}
	}
	n, _ := l.f.WriteString(line)
	l.size += int64(n)
}

// Close closes the file; later Logf calls are dropped.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
