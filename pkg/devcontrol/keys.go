package devcontrol

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"time"
	"unsafe"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Register-request rules, as Tailscale's control applies them (testcontrol's
// RequireAuthKey refuses every request without the one key, including the
// key-less refresh every restarted node sends, so devcontrol decides itself):
//
//   - A request carrying an auth key control does not accept (unknown,
//     revoked, expired) is refused, even from a node whose node key is
//     valid: Tailscale's control answers "invalid key: API key does not
//     exist" (tailscale/tailscale#16987, #19501), which is why a client must
//     not keep sending a key once its node is logged in.
//   - A request without an auth key for a node key control knows is the
//     refresh a node sends when it starts from its state: accepted (and
//     answered NodeKeyExpired if that key has expired).
//   - A request without an auth key for a node key control does not know (a
//     new node, or a new node key after expiry) gets an AuthURL: an
//     interactive login, which nobody completes here. A tailnet without any
//     required key (no [Options.AuthKey], no [Server.AddAuthKey]) accepts it,
//     as testcontrol does.
const (
	errUnknownKey = "invalid authkey"
	errRevokedKey = "invalid key: API key does not exist"
)

// checkRegisterRequests routes testcontrol's /machine/register through
// [Server.serveRegister]. Register requests arrive over Noise, which
// testcontrol terminates and serves from its own unexported ServeMux; a more
// specific pattern registered on that mux takes precedence over its
// "/machine/" handler, to which serveRegister then hands the request.
func (s *Server) checkRegisterRequests() error {
	s.control.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/generate_204", nil)) // builds testcontrol's mux
	f := reflect.ValueOf(s.control).Elem().FieldByName("mux")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*http.ServeMux]() {
		return errors.New("devcontrol: testcontrol.Server has no mux field of type *http.ServeMux (tailscale.com changed): cannot check auth keys")
	}
	mux := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*http.ServeMux)
	machine, pattern := mux.Handler(httptest.NewRequest("POST", "/machine/register", nil))
	if pattern != "/machine/" {
		return fmt.Errorf("devcontrol: testcontrol serves /machine/register under %q, not /machine/ (tailscale.com changed)", pattern)
	}
	mux.HandleFunc("/machine/register", func(w http.ResponseWriter, r *http.Request) { s.serveRegister(w, r, machine) })
	return nil
}

func (s *Server) serveRegister(w http.ResponseWriter, r *http.Request, next http.Handler) {
	s.registers.Add(1)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req tailcfg.RegisterRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Followup != "" {
		next.ServeHTTP(w, r) // testcontrol's own handling of bad requests and follow-ups
		return
	}
	var res tailcfg.RegisterResponse
	switch authKey := authKeyOf(&req); {
	case authKey != "":
		res.Error = s.refusal(authKey, &req)
	case s.knownNodeKey(req.NodeKey) || !s.requiresAuthKey():
	default:
		res.AuthURL = s.url + "/auth/" + randomHex()
	}
	if res.Error == "" && res.AuthURL == "" {
		isNew := !s.knownNodeKey(req.NodeKey) && !s.knownNodeKey(req.OldNodeKey)
		// The answer waits until the node is named, so its first map
		// poll sees the name.
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		s.nameNode(req.NodeKey, isNew)
		s.noteEphemeral(&req)
		if authKey := authKeyOf(&req); authKey != "" {
			s.applyAPIKey(req.NodeKey, authKey)
		}
		maps.Copy(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		if !req.OldNodeKey.IsZero() && req.OldNodeKey != req.NodeKey && s.knownNodeKey(req.NodeKey) {
			s.keyReplaced(req.OldNodeKey)
			if authKeyOf(&req) != "" {
				s.renewKeyExpiry(req.NodeKey)
			}
		}
		return
	}
	b, _ := json.Marshal(res)
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// nameNode names a node after its register request, as Tailscale's control
// does: a new node gets "<hostname>.<domain>", or "<hostname>-1" (-2, ...)
// when another node, online or not, holds that name. testcontrol names
// every node after its hostname (or, with [Options.NoHTTPSCerts], without
// the domain). A node deleted by its logout ([Server.Nodes]) holds no name.
func (s *Server) nameNode(k key.NodePublic, isNew bool) {
	n := s.control.Node(k)
	if n == nil || (!isNew && strings.Contains(n.Name, ".")) {
		return
	}
	base, _, _ := strings.Cut(n.Name, ".")
	taken := map[string]bool{}
	for _, o := range s.Nodes() {
		if o.NodeKey != k.String() {
			label, _, _ := strings.Cut(o.Name, ".")
			taken[label] = true
		}
	}
	name := base
	for i := 1; taken[name]; i++ {
		name = fmt.Sprintf("%s-%d", base, i)
	}
	if full := name + "." + s.domain + "."; full != n.Name {
		n.Name = full
		s.control.UpdateNode(n)
	}
}

// keyReplaced records that a node now uses another node key: testcontrol
// keeps the old key's entry (for an unfinished interactive login), which
// [Server.Nodes] then leaves out, so a node is listed once, as by Tailscale's
// control.
func (s *Server) keyReplaced(old key.NodePublic) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaced[old] = true
}

// renewKeyExpiry clears the expiry testcontrol copied from the old node key
// when a node replaced an expired key by logging in with an auth key: a new
// login gives the node key a new expiry (here: none).
func (s *Server) renewKeyExpiry(k key.NodePublic) {
	n := s.control.Node(k)
	if n == nil || n.KeyExpiry.IsZero() || n.KeyExpiry.After(time.Now()) {
		return
	}
	n.KeyExpiry = time.Time{}
	s.control.UpdateNode(n)
}

func authKeyOf(req *tailcfg.RegisterRequest) string {
	if req.Auth == nil {
		return ""
	}
	return req.Auth.AuthKey
}

// refusal is why control refuses authKey in req, or "" if it accepts it.
func (s *Server) refusal(authKey string, req *tailcfg.RegisterRequest) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if refusal, ok := s.apiKeyRefusalLocked(authKey, req); ok {
		return refusal
	}
	switch {
	case s.revoked[authKey]:
		return errRevokedKey
	case len(s.authKeys) > 0 && !s.authKeys[authKey]:
		return errUnknownKey
	}
	return ""
}

func (s *Server) requiresAuthKey() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.authKeys) > 0 || len(s.revoked) > 0
}

func (s *Server) knownNodeKey(k key.NodePublic) bool {
	return !k.IsZero() && s.control.Node(k) != nil
}

func randomHex() string {
	b := make([]byte, 10)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// AddAuthKey makes control accept authKey for new nodes from now on (a key
// created in the admin console), beside the keys it already accepts.
func (s *Server) AddAuthKey(authKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authKeys[authKey] = true
	delete(s.revoked, authKey)
}

// RevokeAuthKey makes control refuse authKey from now on, as when a key is
// revoked in the admin console or reaches its expiry. Nodes already logged in
// with it keep working: their map polls go on, and a node that restarts from
// its state without sending the key is accepted; any register request that
// carries the key is refused with "invalid key: API key does not exist".
func (s *Server) RevokeAuthKey(authKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.authKeys, authKey)
	s.revoked[authKey] = true
}

// SetNodeKeyExpiry sets when the node key nodeKey (as in [Node.NodeKey])
// expires, as the admin console's "Expire key" (a time in the past) and
// "Extend key expiry" do; the zero time means it never expires. Every
// connected node gets a map response with the change at once. A node whose
// key has expired is told so in its map responses and, when it registers
// with that key, answered NodeKeyExpired.
func (s *Server) SetNodeKeyExpiry(nodeKey string, expiry time.Time) error {
	var k key.NodePublic
	if err := k.UnmarshalText([]byte(nodeKey)); err != nil {
		return fmt.Errorf("parsing node key: %w", err)
	}
	n := s.control.Node(k)
	if n == nil {
		return fmt.Errorf("no node with key %s", nodeKey)
	}
	n.KeyExpiry = expiry
	s.control.UpdateNode(n)
	s.pushAll() // nodes on custom filters get no automatic map responses
	return nil
}
