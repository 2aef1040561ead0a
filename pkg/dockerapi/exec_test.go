package dockerapi

import (
	"strings"
	"testing"
)

func TestShellOf(t *testing.T) {
	passwd := `root:x:0:0:root:/root:/bin/ash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
broken line
bob:x:1001:1001::/home/bob:
`
	for user, want := range map[string]string{
		"root": "/bin/ash", "0": "/bin/ash", "alice": "/bin/bash", "1000": "/bin/bash",
		"daemon": "", "bob": "", "nobody": "", "": "",
	} {
		if got := shellOf(strings.NewReader(passwd), user); got != want {
			t.Errorf("shellOf(%q) = %q, want %q", user, got, want)
		}
	}
}
