package devcontrol

import (
	"errors"
	"reflect"
	"sync"
	"unsafe"
)

// findControlLock returns testcontrol.Server's unexported mutex, under which
// testcontrol reads its exported settings (DNSConfig, RequireMachineAuth,
// TagOwners, DefaultNodeCapabilities) while it registers nodes and builds
// map responses. Writing those fields under the same mutex is what makes a
// setter safe while nodes are connected.
func (s *Server) findControlLock() (*sync.Mutex, error) {
	f := reflect.ValueOf(s.control).Elem().FieldByName("mu")
	if !f.IsValid() || f.Type() != reflect.TypeFor[sync.Mutex]() {
		return nil, errors.New("devcontrol: testcontrol.Server has no mu field of type sync.Mutex (tailscale.com changed): cannot change its settings safely")
	}
	return (*sync.Mutex)(unsafe.Pointer(f.UnsafeAddr())), nil
}

// withControlLocked runs set while holding testcontrol's own mutex. set must
// only assign testcontrol fields: it must not call testcontrol methods,
// which take the same mutex.
func (s *Server) withControlLocked(set func()) {
	s.controlMu.Lock()
	defer s.controlMu.Unlock()
	set()
}
