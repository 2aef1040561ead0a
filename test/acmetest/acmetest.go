// Package acmetest runs a local ACME server for tests of HTTPS certificate
// issuance: Let's Encrypt's test CA pebble (github.com/letsencrypt/pebble/v2),
// in the test process, with a DNS server that answers its DNS-01 lookups
// from the TXT records the test publishes (the records a node asks control
// to set through /machine/set-dns). Nothing leaves loopback.
//
// Tailscale's ACME client (tailscale.com/feature/acme) takes its directory
// URL from the envknob TS_DEBUG_ACME_DIRECTORY_URL and talks to it with
// Go's default HTTP client, which trusts the system roots. pebble accepts
// only HTTPS (its JWS checks expect https:// URLs), so the process that
// fetches certificates must trust this server's TLS certificate: on Linux
// Go reads the roots from SSL_CERT_FILE once per process, hence
// [Server.TLSCertFile] goes to a child process's environment, never to the
// test process's. The certificates the server issues chain to a root made
// at [Start]; [Server.Roots] holds it.
package acmetest

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Server is a running ACME server. Its methods are safe for concurrent use.
type Server struct {
	http     *httptest.Server
	certFile string
	roots    *x509.CertPool
	orders   atomic.Int32
	issued   atomic.Int32

	mu  sync.Mutex
	txt map[string][]string // lowercase FQDN with trailing dot -> TXT values
}

// Start runs an ACME server until t ends. Its validation authority checks
// DNS-01 challenges for real, against the records given to
// [Server.SetTXT]. pebble reads its knobs from the environment when it
// starts (t.Setenv: no random validation delays, no injected bad nonces),
// so t must not be parallel.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{txt: map[string][]string{}}

	dnsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("acmetest: DNS listener: %v", err)
	}
	dnsSrv := &dns.Server{Listener: dnsLn, Net: "tcp", Handler: dns.HandlerFunc(s.serveDNS)}
	go dnsSrv.ActivateAndServe()
	t.Cleanup(func() { dnsSrv.Shutdown() })

	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	t.Setenv("PEBBLE_VA_ALWAYS_VALID", "")
	logger := log.New(io.Discard, "", 0)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	validator := va.New(logger, 0, 0, false, dnsLn.Addr().String(), store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	acme := front.Handler()

	s.roots = x509.NewCertPool()
	s.roots.AddCert(authority.GetRootCert(0).Cert)

	s.http = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			switch {
			case r.URL.Path == "/order-plz":
				s.orders.Add(1)
			case strings.HasPrefix(r.URL.Path, "/finalize-order/"):
				s.issued.Add(1)
				// Let's Encrypt names the order in the finalize
				// answer's Location header, and tailscale's ACME
				// client (tempfork/acme CreateOrderCert) polls that
				// URL while the order is processing; pebble sets none.
				id := strings.TrimPrefix(r.URL.Path, "/finalize-order/")
				w.Header().Set("Location", "https://"+r.Host+"/my-order/"+id)
			}
		}
		acme.ServeHTTP(w, r)
	}))
	s.http.Config.ErrorLog = logger
	s.http.StartTLS()
	t.Cleanup(s.http.Close)
	s.certFile = filepath.Join(t.TempDir(), "acme-server.pem")
	if err := os.WriteFile(s.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.http.Certificate().Raw}), 0o644); err != nil {
		t.Fatalf("acmetest: %v", err)
	}
	return s
}

// DirectoryURL is the ACME directory (HTTPS on 127.0.0.1), the value for
// TS_DEBUG_ACME_DIRECTORY_URL.
func (s *Server) DirectoryURL() string { return s.http.URL + wfe.DirectoryPath }

// TLSCertFile is a PEM file holding the server's own TLS certificate
// (self-signed, for 127.0.0.1), the value for SSL_CERT_FILE in the process
// that fetches certificates.
func (s *Server) TLSCertFile() string { return s.certFile }

// Issued is the number of orders finalized (certificates issued) so far.
func (s *Server) Issued() int { return int(s.issued.Load()) }

// Roots holds the root certificate the issued certificates chain to.
func (s *Server) Roots() *x509.CertPool { return s.roots }

// Orders is the number of certificate orders (new-order requests) so far.
func (s *Server) Orders() int { return int(s.orders.Load()) }

// SetTXT publishes a TXT record for name (a DNS name, e.g.
// "_acme-challenge.web.tailnet.ts.net") to the validation authority.
func (s *Server) SetTXT(name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := dns.Fqdn(strings.ToLower(name))
	s.txt[k] = append(s.txt[k], value)
}

// serveDNS answers TXT questions from s.txt and every other question with
// no records.
func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	for _, q := range req.Question {
		if q.Qtype != dns.TypeTXT {
			continue
		}
		s.mu.Lock()
		vals := s.txt[strings.ToLower(q.Name)]
		s.mu.Unlock()
		for _, v := range vals {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0}, Txt: []string{v}})
		}
	}
	w.WriteMsg(m)
}
