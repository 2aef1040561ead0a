package devcontrol

import (
	"testing"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestSingleUseAPIKey: a key the API created without reusable registers
// one node, which may send it again with a new node key; another node is
// refused.
func TestSingleUseAPIKey(t *testing.T) {
	s := &Server{apiKeys: map[string]*apiKey{"one": {}, "many": {caps: keyCreateCaps{Reusable: true}}}}
	a, a2, b := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	for _, tc := range []struct {
		key     string
		req     tailcfg.RegisterRequest
		refused bool
	}{
		{"one", tailcfg.RegisterRequest{NodeKey: a}, false},
		{"one", tailcfg.RegisterRequest{NodeKey: a2, OldNodeKey: a}, false},
		{"one", tailcfg.RegisterRequest{NodeKey: b}, true},
		{"many", tailcfg.RegisterRequest{NodeKey: a}, false},
		{"many", tailcfg.RegisterRequest{NodeKey: b}, false},
	} {
		refusal, ok := s.apiKeyRefusalLocked(tc.key, &tc.req)
		if !ok || (refusal != "") != tc.refused {
			t.Errorf("key %s, node %v (old %v): refusal %q, %v; want refused=%v", tc.key, tc.req.NodeKey.ShortString(), tc.req.OldNodeKey.ShortString(), refusal, ok, tc.refused)
		}
	}
	if _, ok := s.apiKeyRefusalLocked("other", &tailcfg.RegisterRequest{NodeKey: a}); ok {
		t.Error("a key the API did not create is judged as one")
	}
}
