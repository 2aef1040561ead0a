package boundedlog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotatesAtLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "debug.log")
	l, err := Open(p, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		l.Logf("line %d %s", i, strings.Repeat("x", 40))
	}
	l.Close()
	for _, f := range []string{p, p + ".1"} {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() > 1000 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), "line 99") {
		t.Errorf("newest line missing from %s", p)
	}
	l.Logf("after close") // must not panic
}
