package devcontrol

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Tailscale's API lets an OAuth client (a client secret "tskey-client-…"
// made in the admin console, with the auth_keys scope and a set of tags)
// create auth keys, which is how `tailscale up --auth-key=tskey-client-…`
// and tsnet log in with one (tailscale.com/feature/oauthkey):
//
//   - POST /api/v2/oauth/token, an OAuth 2.0 client-credentials grant
//     (RFC 6749 4.4; golang.org/x/oauth2/clientcredentials sends the secret
//     as the HTTP Basic password, or as the client_secret form field),
//     answers {"access_token", "token_type": "Bearer", "expires_in"};
//   - POST /api/v2/tailnet/-/keys with that bearer token and
//     {"capabilities": {"devices": {"create": {reusable, ephemeral,
//     preauthorized, tags}}}} answers the new key as {"id", "key", …}.
//     A key made by an OAuth client must carry tags, each one the client
//     may use.
//
// devcontrol serves both on its control URL. A node that registers with
// such a key gets the key's tags (whatever it asked for), is ephemeral if
// the key is, and approved if the key is preauthorized; a key that is not
// reusable registers one node.

// oauthTokenLifetime is how long an access token is valid, as Tailscale's
// API grants it (one hour).
const oauthTokenLifetime = time.Hour

// apiKey is an auth key created through the API, with its capabilities.
type apiKey struct {
	caps keyCreateCaps
	// usedBy holds the node keys of the node that used a single-use key:
	// that node may send it again (a client whose node key expired first
	// sends the key with the expired node key, then with a new one).
	usedBy map[key.NodePublic]bool
}

// keyCreateCaps is capabilities.devices.create of a key-creation request,
// as Tailscale's API (and tailscale.com/client/tailscale.KeyCapabilities)
// spells it.
type keyCreateCaps struct {
	Reusable      bool     `json:"reusable"`
	Ephemeral     bool     `json:"ephemeral"`
	Preauthorized bool     `json:"preauthorized"`
	Tags          []string `json:"tags,omitempty"`
}

// AddOAuthClient makes the API accept clientSecret ("tskey-client-…",
// without the ?attributes a client appends) as an OAuth client allowed to
// create auth keys carrying any of tags, as an OAuth client with the
// auth_keys scope made in the admin console.
func (s *Server) AddOAuthClient(clientSecret string, tags ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.oauthClients == nil {
		s.oauthClients = map[string][]string{}
	}
	s.oauthClients[clientSecret] = slices.Clone(tags)
}

// APIKeys counts the auth keys created through the API so far.
func (s *Server) APIKeys() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.apiKeys)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) serveOAuthToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type"})
		return
	}
	secret := r.PostForm.Get("client_secret")
	if _, pw, ok := r.BasicAuth(); ok {
		secret = pw
	}
	s.mu.Lock()
	_, known := s.oauthClients[secret]
	token := ""
	if known {
		token = "devcontrol-token-" + randomHex()
		if s.oauthTokens == nil {
			s.oauthTokens = map[string]string{}
		}
		s.oauthTokens[token] = secret
	}
	s.mu.Unlock()
	if !known {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "error_description": "invalid client credentials"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": token, "token_type": "Bearer", "expires_in": int(oauthTokenLifetime.Seconds())})
}

func (s *Server) serveCreateKey(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	client, known := s.oauthTokens[token]
	allowed := s.oauthClients[client]
	s.mu.Unlock()
	if !ok || !known {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "API token invalid"})
		return
	}
	var req struct {
		Capabilities struct {
			Devices struct {
				Create keyCreateCaps `json:"create"`
			} `json:"devices"`
		} `json:"capabilities"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "invalid JSON body"})
		return
	}
	caps := req.Capabilities.Devices.Create
	if len(caps.Tags) == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "auth keys created by an OAuth client must have tags"})
		return
	}
	for _, t := range caps.Tags {
		if !slices.Contains(allowed, t) {
			writeJSON(w, http.StatusForbidden, map[string]string{"message": fmt.Sprintf("requested tags %v are invalid or not permitted", caps.Tags)})
			return
		}
	}
	id := "k" + randomHex()
	secret := "tskey-auth-" + id + "-" + randomHex()
	s.mu.Lock()
	if s.apiKeys == nil {
		s.apiKeys = map[string]*apiKey{}
	}
	s.apiKeys[secret] = &apiKey{caps: caps}
	s.mu.Unlock()
	now := time.Now().UTC()
	res := map[string]any{
		"id":           id,
		"key":          secret,
		"created":      now,
		"expires":      now.Add(90 * 24 * time.Hour),
		"capabilities": map[string]any{"devices": map[string]any{"create": caps}},
	}
	writeJSON(w, http.StatusOK, res)
}

// apiKeyRefusalLocked is why control refuses authKey in req if the API
// created it (ok): a single-use key registers one node. s.mu must be held.
func (s *Server) apiKeyRefusalLocked(authKey string, req *tailcfg.RegisterRequest) (refusal string, ok bool) {
	k := s.apiKeys[authKey]
	if k == nil {
		return "", false
	}
	if !k.caps.Reusable && len(k.usedBy) > 0 && !k.usedBy[req.NodeKey] && (req.OldNodeKey.IsZero() || !k.usedBy[req.OldNodeKey]) {
		return errRevokedKey, true
	}
	if k.usedBy == nil {
		k.usedBy = map[key.NodePublic]bool{}
	}
	k.usedBy[req.NodeKey] = true
	return "", true
}

// applyAPIKey gives the node that just registered with authKey what the
// key says, if the API created it: its tags, ephemerality and approval.
func (s *Server) applyAPIKey(nodeKey key.NodePublic, authKey string) {
	s.mu.Lock()
	k := s.apiKeys[authKey]
	if k != nil && k.caps.Ephemeral {
		s.ephemeral[nodeKey] = true
	}
	s.mu.Unlock()
	if k == nil {
		return
	}
	n := s.control.Node(nodeKey)
	if n == nil {
		return
	}
	n.Tags = slices.Clone(k.caps.Tags)
	s.control.UpdateNode(n)
	if k.caps.Preauthorized && !n.MachineAuthorized {
		s.control.CompleteDeviceApproval(s.url, s.url+"/admin", &nodeKey)
	}
}
