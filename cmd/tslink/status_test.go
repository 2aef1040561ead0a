package main

import "testing"

func TestPrintableStripsEscapes(t *testing.T) {
	if got := printable("bad\x1b[2Jkey\nhere\tx ü"); got != "bad [2Jkey here x ü" {
		t.Errorf("printable = %q", got)
	}
}
