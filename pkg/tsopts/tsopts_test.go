package tsopts

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseNetwork(t *testing.T) {
	tests := []struct {
		name    string
		opts    map[string]string
		env     Env
		wantErr string // substring; "" = success
		check   func(*testing.T, *Network)
	}{
		{name: "defaults", opts: map[string]string{"ts.authkey": "tskey-auth-x"}, check: func(t *testing.T, n *Network) {
			if !n.Ephemeral || n.Timeout != DefaultTimeout || n.AuthKey != "tskey-auth-x" {
				t.Errorf("got %+v", n)
			}
		}},
		{name: "env fallback", env: Env{AuthKey: "tskey-auth-env", ControlURL: "http://localhost:1"}, check: func(t *testing.T, n *Network) {
			if n.AuthKey != "tskey-auth-env" || n.ControlURL != "http://localhost:1" {
				t.Errorf("got %+v", n)
			}
		}},
		{name: "all", opts: map[string]string{"ts.authkey": "k", "ts.controlurl": "http://c:1/", "ts.insecure-control": "true", "ts.ephemeral": "false", "ts.tags": "tag:a, tag:b", "ts.timeout": "15s", "com.docker.network.foo": "x"}, check: func(t *testing.T, n *Network) {
			if n.Ephemeral || n.ControlURL != "http://c:1" || n.Timeout != 15*time.Second || strings.Join(n.Tags, ",") != "tag:a,tag:b" {
				t.Errorf("got %+v", n)
			}
		}},
		{name: "unknown", opts: map[string]string{"ts.bogus": "1"}, wantErr: "unknown option ts.bogus"},
		{name: "bad timeout", opts: map[string]string{"ts.timeout": "banana"}, wantErr: "option ts.timeout=\"banana\": want a duration"},
		{name: "bad tag", opts: map[string]string{"ts.tags": "notatag"}, wantErr: "option ts.tags: \"notatag\" is not a tag"},
		{name: "bad bool", opts: map[string]string{"ts.ephemeral": "maybe"}, wantErr: "want true or false"},
		{name: "bad url", opts: map[string]string{"ts.controlurl": "ftp://x"}, wantErr: "option ts.controlurl: scheme \"ftp\": want https://host[:port][/path]"},
		{name: "env url checked", env: Env{AuthKey: "k", ControlURL: "http://10.0.0.1:8080"}, wantErr: "the plugin's TS_CONTROL_URL: plain http to 10.0.0.1:8080, which is not loopback"},
		{name: "env url insecure", env: Env{AuthKey: "k", ControlURL: "http://10.0.0.1:8080/"}, opts: map[string]string{"ts.insecure-control": "true"}, check: func(t *testing.T, n *Network) {
			if n.ControlURL != "http://10.0.0.1:8080" || !n.InsecureControl {
				t.Errorf("got %+v", n)
			}
		}},
		{name: "bad insecure", opts: map[string]string{"ts.insecure-control": "yes please"}, wantErr: "option ts.insecure-control=\"yes please\": want true or false"},
		{name: "bad key file", opts: map[string]string{"ts.authkey-file": "../etc/passwd"}, wantErr: "want a file name"},
		{name: "key and file", opts: map[string]string{"ts.authkey": "k", "ts.authkey-file": "f"}, wantErr: "give one, not both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := ParseNetwork(tt.opts, tt.env)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v; want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, n)
		})
	}
}

func TestParseControlURL(t *testing.T) {
	tests := []struct {
		in       string
		insecure bool
		want     string // normalized; "" = refused
		wantErr  string
	}{
		{in: "https://hs.example.com", want: "https://hs.example.com"},
		{in: "HTTPS://hs.example.com:8443/", want: "https://hs.example.com:8443"},
		{in: "https://hs.example.com/prefix/", want: "https://hs.example.com/prefix"},
		{in: "http://127.0.0.1:8080", want: "http://127.0.0.1:8080"},
		{in: "http://127.1.2.3:8080", want: "http://127.1.2.3:8080"},
		{in: "http://localhost:8080", want: "http://localhost:8080"},
		{in: "http://[::1]:8080", want: "http://[::1]:8080"},
		{in: "http://10.238.0.1:8080", insecure: true, want: "http://10.238.0.1:8080"},
		{in: "http://10.238.0.1:8080", wantErr: "plain http to 10.238.0.1:8080, which is not loopback, sends the auth key unprotected: use https://, or add --opt ts.insecure-control=true"},
		{in: "http://169.254.169.254/latest/meta-data", wantErr: "not loopback"},
		{in: "http://localhost.evil.example", wantErr: "not loopback"},
		{in: "https://", wantErr: "no host"},
		{in: "https:hs.example.com", wantErr: "no host"},
		{in: "https://:443", wantErr: "no host"},
		{in: "ftp://hs.example.com", wantErr: "scheme \"ftp\""},
		{in: "hs.example.com", wantErr: "scheme \"\""},
		{in: "https://admin:s3cret@hs.example.com", wantErr: "user info (user:password@) is not accepted"},
		{in: "https://admin@hs.example.com", wantErr: "user info"},
		{in: "https://hs/?token=abc", wantErr: "?query or #fragment"},
		{in: "https://hs/?", wantErr: "?query or #fragment"},
		{in: "https://hs/#x", wantErr: "?query or #fragment"},
		{in: "https://hs.example.com\ntags: tag:prod", wantErr: "whitespace or control characters"},
		{in: "https://hs.example.com/ ephemeral", wantErr: "whitespace or control characters"},
		{in: "https://hs.example.com\x7f", wantErr: "whitespace or control characters"},
		{in: "https://hs.example.com:99999", wantErr: "port \"99999\""},
		{in: "https://hs.example.com:0", wantErr: "port \"0\""},
		{in: "https://%zz", wantErr: "not a URL"},
	}
	for _, tt := range tests {
		got, err := ParseControlURL(tt.in, tt.insecure)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseControlURL(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			if err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "token")) {
				t.Errorf("ParseControlURL(%q): error echoes a secret: %v", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseControlURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	// Through ParseNetwork, the error names the option.
	_, err := ParseNetwork(map[string]string{"ts.authkey": "k", "ts.controlurl": "https://admin:s3cret@hs"}, Env{})
	if err == nil || !strings.Contains(err.Error(), "option ts.controlurl: user info") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("ParseNetwork with user info: %v", err)
	}
}

func TestParseNetworkNeverEchoesKey(t *testing.T) {
	_, err := ParseNetwork(map[string]string{"ts.authkey": "tskey-auth-SECRET with space"}, Env{})
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("err = %v; want an error without the key", err)
	}
}

func TestParseContainer(t *testing.T) {
	tests := []struct {
		labels  map[string]string
		name    string
		want    string
		wantErr string
	}{
		{name: "/my_App.1", want: "my-app-1"},
		{labels: map[string]string{"ts.hostname": "Web"}, name: "x", want: "web"},
		{labels: map[string]string{"ts.hostname": "-bad"}, wantErr: "label ts.hostname=\"-bad\": want a hostname"},
		{labels: map[string]string{"ts.hostname": "has space"}, wantErr: "want a hostname"},
		{labels: map[string]string{"ts.tags": "tag:ok,nope"}, name: "x", wantErr: "label ts.tags: \"nope\" is not a tag"},
		{labels: map[string]string{"ts.nope": "1"}, name: "x", wantErr: "unknown label ts.nope"},
		{labels: map[string]string{"other": "1"}, name: "___", wantErr: "gives no valid hostname"},
	}
	for _, tt := range tests {
		c, err := ParseContainer(tt.labels, tt.name)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseContainer(%v, %q) err = %v; want %q", tt.labels, tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || c.Hostname != tt.want {
			t.Errorf("ParseContainer(%v, %q) = %+v, %v; want hostname %q", tt.labels, tt.name, c, err, tt.want)
		}
	}
}

func TestCaps(t *testing.T) {
	labels := func(n int) map[string]string {
		m := map[string]string{}
		for i := 1; i <= n; i++ {
			m[fmt.Sprintf("ts.serve.%d", i)] = fmt.Sprintf("tcp:%d", i)
		}
		return m
	}
	tags := func(n int) string {
		var l []string
		for i := range n {
			l = append(l, fmt.Sprintf("tag:t%d", i))
		}
		return strings.Join(l, ",")
	}
	if c, err := ParseContainer(labels(MaxServe), "c"); err != nil || len(c.Serve.Endpoints) != MaxServe {
		t.Errorf("%d serve labels: %v", MaxServe, err)
	}
	if _, err := ParseContainer(labels(MaxServe+1), "c"); err == nil || !strings.Contains(err.Error(), "ts.serve.<port>: 65 given, tslink serves at most 64 ports") {
		t.Errorf("%d serve labels: %v", MaxServe+1, err)
	}
	if _, err := ParseContainer(labels(10000), "c"); err == nil {
		t.Error("10000 serve labels accepted")
	}
	if c, err := ParseContainer(map[string]string{"ts.tags": tags(MaxTags)}, "c"); err != nil || len(c.Tags) != MaxTags {
		t.Errorf("%d tags: %v", MaxTags, err)
	}
	// Duplicates count once.
	if _, err := ParseContainer(map[string]string{"ts.tags": tags(MaxTags) + ",tag:t0,tag:t1"}, "c"); err != nil {
		t.Errorf("%d tags with duplicates: %v", MaxTags, err)
	}
	for _, k := range []string{"label ts.tags", "option ts.tags"} {
		var err error
		if strings.HasPrefix(k, "label") {
			_, err = ParseContainer(map[string]string{"ts.tags": tags(5000)}, "c")
		} else {
			_, err = ParseNetwork(map[string]string{"ts.authkey": "k", "ts.tags": tags(MaxTags + 1)}, Env{})
		}
		if err == nil || !strings.Contains(err.Error(), k+": more than 32 tags") {
			t.Errorf("%s with too many tags: %v", k, err)
		}
	}
}

func TestCheckImageLabels(t *testing.T) {
	image := map[string]string{"ts.hostname": "db", "ts.serve.2222": "tcp:22", "maintainer": "x"}
	tests := []struct {
		name    string
		labels  map[string]string
		image   map[string]string
		imgErr  error
		wantErr string // "" = allowed
	}{
		{name: "no image labels", labels: map[string]string{"ts.hostname": "web"}},
		{name: "image without ts labels", labels: map[string]string{"ts.hostname": "web", "maintainer": "x"}, image: map[string]string{"maintainer": "x"}},
		{name: "image labels", labels: map[string]string{"ts.hostname": "db", "ts.serve.2222": "tcp:22", "maintainer": "x"}, image: image,
			wantErr: "label ts.hostname, ts.serve.2222 comes from the container's image, and tslink obeys the ts.* labels of images only on networks created with --opt ts.image-labels=true"},
		{name: "overridden by the container", labels: map[string]string{"ts.hostname": "web", "ts.serve.2222": "tcp:2222", "maintainer": "x"}, image: image},
		{name: "same value as the image", labels: map[string]string{"ts.hostname": "db", "ts.serve.2222": "tcp:2222"}, image: image, wantErr: "label ts.hostname comes from"},
		{name: "many", labels: labelsN(10), image: labelsN(10), wantErr: "label ts.serve.1, ts.serve.10, ts.serve.2, ts.serve.3, ts.serve.4 and 5 more comes from"},
		{name: "unreadable, no ts labels", labels: map[string]string{"a": "b"}, imgErr: errors.New("no image store")},
		{name: "unreadable", labels: map[string]string{"ts.hostname": "web"}, imgErr: errors.New("no image store"), wantErr: "its image's labels cannot be read from the engine's state (no image store)"},
	}
	for _, tt := range tests {
		err := CheckImageLabels(tt.labels, tt.image, tt.imgErr)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: %v; want %q", tt.name, err, tt.wantErr)
		}
	}
	n, err := ParseNetwork(map[string]string{"ts.authkey": "k", "ts.image-labels": "true"}, Env{})
	if err != nil || !n.ImageLabels {
		t.Errorf("ts.image-labels=true: %+v, %v", n, err)
	}
}

func labelsN(n int) map[string]string {
	m := map[string]string{}
	for i := 1; i <= n; i++ {
		m[fmt.Sprintf("ts.serve.%d", i)] = "tcp:1"
	}
	return m
}

func FuzzParseContainer(f *testing.F) {
	f.Add("ts.hostname", "web", "c")
	f.Add("ts.tags", "tag:a,tag:b", "")
	f.Add("ts.serve.443", "https:8080", "x")
	f.Fuzz(func(t *testing.T, k, v, name string) {
		c, err := ParseContainer(map[string]string{k: v}, name)
		if err == nil && !ValidHostname(c.Hostname) {
			t.Fatalf("accepted invalid hostname %q", c.Hostname)
		}
	})
}

func TestParseServe(t *testing.T) {
	good := []struct {
		labels map[string]string
		want   Serve
	}{
		{map[string]string{"ts.serve.443": "https:8080"}, Serve{Endpoints: []ServeEndpoint{{Port: 443, Proto: ProtoHTTPS, Target: 8080, Path: "/"}}}},
		{map[string]string{"ts.serve.80": "http:3000/api/", "ts.serve.5432": "tcp:5432"},
			Serve{Endpoints: []ServeEndpoint{{Port: 80, Proto: ProtoHTTP, Target: 3000, Path: "/api"}, {Port: 5432, Proto: ProtoTCP, Target: 5432, Path: ""}}}},
		{map[string]string{"ts.serve.993": "tls-terminated-tcp:143", "ts.service": "svc:Mail", "ts.tags": "tag:mail", "ts.direct": "false"},
			Serve{Endpoints: []ServeEndpoint{{Port: 993, Proto: ProtoTLSTerminatedTCP, Target: 143, Path: ""}}, Service: "svc:mail", ServiceOnly: true}},
	}
	for _, tc := range good {
		c, err := ParseContainer(tc.labels, "c")
		if err != nil {
			t.Errorf("%v: %v", tc.labels, err)
			continue
		}
		if !reflect.DeepEqual(c.Serve, tc.want) {
			t.Errorf("%v: got %+v, want %+v", tc.labels, c.Serve, tc.want)
		}
	}
	bad := []struct {
		labels map[string]string
		want   []string // substrings of the error
	}{
		{map[string]string{"ts.serve.web": "http:80"}, []string{"ts.serve.web", "1-65535"}},
		{map[string]string{"ts.serve.70000": "http:80"}, []string{"ts.serve.70000", "1-65535"}},
		{map[string]string{"ts.serve.0": "http:80"}, []string{"ts.serve.0", "1-65535"}},
		{map[string]string{"ts.serve.80": "http:0"}, []string{"ts.serve.80", "target port", "1-65535"}},
		{map[string]string{"ts.serve.80": "http:eighty"}, []string{"target port", "<proto>:<port>"}},
		{map[string]string{"ts.serve.80": "ftp:21"}, []string{"unknown protocol \"ftp\"", "tls-terminated-tcp"}},
		{map[string]string{"ts.serve.80": "8080"}, []string{"ts.serve.80", "<proto>:<port>"}},
		{map[string]string{"ts.serve.22": "tcp:22/ssh"}, []string{"/path applies to http and https only", "tcp:<port>"}},
		{map[string]string{"ts.serve.80": "http:80/../etc"}, []string{"no .."}},
		{map[string]string{"ts.serve.80": "http:80", "ts.serve.080": "tcp:81"}, []string{"port 80 is already served"}},
		{map[string]string{"ts.service": "my-api", "ts.serve.80": "http:80"}, []string{"ts.service", "svc:<name>"}},
		{map[string]string{"ts.service": "svc:my-api"}, []string{"ts.service=svc:my-api needs at least one ts.serve.<port>"}},
		{map[string]string{"ts.direct": "maybe"}, []string{"ts.direct", "true or false"}},
		{map[string]string{"ts.direct": "false", "ts.serve.80": "http:80"}, []string{"ts.direct=false", "ts.service"}},
	}
	for _, tc := range bad {
		_, err := ParseContainer(tc.labels, "c")
		if err == nil {
			t.Errorf("%v: accepted", tc.labels)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not contain %q", tc.labels, err, w)
			}
		}
	}
}
