package tsopts

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseSSH(t *testing.T) {
	tests := []struct {
		in      string
		want    SSH
		wantErr string // substring; "" = success
	}{
		{in: "alice@example.com", want: SSH{Logins: []string{"alice@example.com"}}},
		{in: "alice@example.com,tag:ops", want: SSH{Logins: []string{"alice@example.com"}, Tags: []string{"tag:ops"}}},
		{in: " tag:ops , bob@github ,, tag:ops,BOB@github", want: SSH{Logins: []string{"bob@github"}, Tags: []string{"tag:ops"}}},
		{in: "", wantErr: "label ts.ssh: empty: want comma-separated tailnet user login names and ACL tags, e.g. alice@example.com,tag:ops"},
		{in: " , ", wantErr: "label ts.ssh: empty"},
		{in: "alice", wantErr: `label ts.ssh: "alice" is neither a user login name (name@domain) nor a tag (tag:name): want comma-separated`},
		{in: "tag:", wantErr: `label ts.ssh: "tag:" is not a tag`},
		{in: "tag:9ops", wantErr: `"tag:9ops" is not a tag`},
		{in: "@example.com", wantErr: "is neither"},
		{in: "alice@", wantErr: "is neither"},
		{in: "a@b@c", wantErr: "is neither"},
		{in: "al ice@example.com", wantErr: "is neither"},
		{in: "alice@exa\x00mple.com", wantErr: "is neither"},
		{in: "*", wantErr: "is neither"},
	}
	for _, tt := range tests {
		got, err := ParseSSH(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSSH(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseSSH(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseSSHCap(t *testing.T) {
	var es []string
	for i := range MaxSSH {
		es = append(es, fmt.Sprintf("u%d@example.com", i))
	}
	if _, err := ParseSSH(strings.Join(es, ",")); err != nil {
		t.Fatalf("%d entries: %v", MaxSSH, err)
	}
	_, err := ParseSSH(strings.Join(append(es, "tag:one-more"), ","))
	if err == nil || !strings.Contains(err.Error(), "label ts.ssh: more than 64 entries") {
		t.Fatalf("%d entries: got %v", MaxSSH+1, err)
	}
}

func TestContainerSSH(t *testing.T) {
	c, err := ParseContainer(map[string]string{"ts.ssh": "alice@example.com,tag:ops", "ts.serve.80": "http:8080"}, "web")
	if err != nil {
		t.Fatal(err)
	}
	if c.SSH.String() != "alice@example.com,tag:ops" {
		t.Errorf("SSH = %q", c.SSH.String())
	}
	if c, err := ParseContainer(map[string]string{"ts.serve.22": "tcp:2222"}, "web"); err != nil || c.SSH.Enabled() {
		t.Errorf("ts.serve.22 without ts.ssh: %+v, %v", c, err)
	}
	_, err = ParseContainer(map[string]string{"ts.ssh": "tag:ops", "ts.serve.22": "tcp:2222"}, "web")
	if err == nil || !strings.Contains(err.Error(), "labels ts.serve.22 and ts.ssh: tailnet port 22 of the node belongs to ts.ssh") {
		t.Errorf("ts.serve.22 with ts.ssh: %v", err)
	}
	_, err = ParseContainer(map[string]string{"ts.ssh": "nobody"}, "web")
	if err == nil || !strings.Contains(err.Error(), "label ts.ssh: \"nobody\"") {
		t.Errorf("bad ts.ssh: %v", err)
	}
	_, err = ParseContainer(map[string]string{"ts.bogus": "1"}, "web")
	if err == nil || !strings.Contains(err.Error(), "ts.ssh") {
		t.Errorf("unknown label error does not list ts.ssh: %v", err)
	}
}

func TestSSHAllows(t *testing.T) {
	s, err := ParseSSH("alice@example.com,tag:ops")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		login string
		tags  []string
		want  bool
	}{
		{"alice@example.com", nil, true},
		{"Alice@Example.COM", nil, true},
		{"bob@example.com", nil, false},
		{"", nil, false},
		{"alice@example.com.evil", nil, false},
		{"tagged-devices", []string{"tag:ops"}, true},
		{"tagged-devices", []string{"tag:web", "tag:ops"}, true},
		{"tagged-devices", []string{"tag:web"}, false},
		// A tagged node is matched by its tags only, whatever login it shows.
		{"alice@example.com", []string{"tag:web"}, false},
		{"tagged-devices", []string{"tag:OPS"}, false},
	}
	for _, tt := range tests {
		if got := s.Allows(tt.login, tt.tags); got != tt.want {
			t.Errorf("Allows(%q, %v) = %v, want %v", tt.login, tt.tags, got, tt.want)
		}
	}
	if (SSH{}).Allows("alice@example.com", nil) || (SSH{}).Enabled() {
		t.Error("the zero SSH allows someone")
	}
}
