package statedir

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestSSHHostKey(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	keys := make([][]byte, 4)
	for i := range keys {
		wg.Go(func() {
			s, err := SSHHostKey(dir)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = s.PublicKey().Marshal()
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k, keys[0]) {
			t.Fatal("concurrent first calls made different keys")
		}
	}
	p := filepath.Join(dir, SSHHostKeyName)
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	again, err := SSHHostKey(dir)
	if err != nil || !bytes.Equal(again.PublicKey().Marshal(), keys[0]) || again.PublicKey().Type() != "ssh-ed25519" {
		t.Fatalf("second call: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp*")); len(left) > 0 {
		t.Errorf("temp files left: %v", left)
	}
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, err := SSHHostKey(dir); err == nil || !strings.Contains(err.Error(), "remove it for a new key") {
		t.Errorf("damaged key: %v", err)
	}
}
