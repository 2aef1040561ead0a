package stack

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"tailscale.com/types/logger"
)

// Markers of a login's steps in the backend log of tailscale.com v1.102.5:
// control/controlclient/direct.go (doLogin) logs each of them once per
// login attempt, after the step happened.
const (
	// logControlKey: control answered the fetch of its public keys
	// (GET /key), the first request of every login.
	logControlKey = "control server key from "
	// logRegisterSent: the registration request is about to go out
	// (POST /machine/register over the Noise connection).
	logRegisterSent = "RegisterReq: onode="
	// logRegisterAnswered: control answered the registration; the line
	// goes on "nodeKeyExpired=%v, machineAuthorized=%v; authURL=%v".
	logRegisterAnswered = "RegisterReq: got response;"
)

// controlProgress follows a node's login with control through the
// backend's log (the markers above). The IPN bus reports a login only once
// LocalBackend has processed control's answer (LoginFinished, then
// Starting), which on a starved host comes seconds after the answer; the
// log tells whether control answered at all.
type controlProgress struct {
	mu               sync.Mutex
	keyAnswered      time.Time // control's first answer of this start
	registerSent     time.Time // the last registration request sent
	registerAnswered time.Time // control's answer to it; zero while pending
	accepted         bool      // that answer authorized the node: no login URL, key not expired
}

// tap returns logf, also passing every line to p.
func (p *controlProgress) tap(logf logger.Logf) logger.Logf {
	return func(format string, args ...any) {
		p.observe(format, args...)
		logf(format, args...)
	}
}

// observe records the login step a backend log line reports, if any.
func (p *controlProgress) observe(format string, args ...any) {
	switch {
	case strings.Contains(format, logRegisterAnswered):
		line := fmt.Sprintf(format, args...)
		accepted := strings.Contains(line, "nodeKeyExpired=false") &&
			strings.Contains(line, "machineAuthorized=true") &&
			strings.Contains(line, "authURL=false")
		p.mu.Lock()
		p.registerAnswered, p.accepted = time.Now(), accepted
		p.mu.Unlock()
	case strings.Contains(format, logRegisterSent):
		p.mu.Lock()
		p.registerSent, p.registerAnswered, p.accepted = time.Now(), time.Time{}, false
		p.mu.Unlock()
	case strings.Contains(format, logControlKey):
		p.mu.Lock()
		if p.keyAnswered.IsZero() {
			p.keyAnswered = time.Now()
		}
		p.mu.Unlock()
	}
}

// controlAccepted reports whether control's last answer to a registration
// authorized the node (as the IPN bus's LoginFinished would).
func (p *controlProgress) controlAccepted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// describe says where the login stands at now, for an error: "" when
// control never answered.
func (p *controlProgress) describe(now time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.keyAnswered.IsZero():
		return ""
	case !p.registerAnswered.IsZero() && p.accepted:
		return fmt.Sprintf("control accepted the registration %v ago", now.Sub(p.registerAnswered).Round(100*time.Millisecond))
	case !p.registerAnswered.IsZero():
		return fmt.Sprintf("control answered the registration %v ago without authorizing the node", now.Sub(p.registerAnswered).Round(100*time.Millisecond))
	case !p.registerSent.IsZero():
		return fmt.Sprintf("control answered %v ago; its answer to the registration sent %v ago is pending",
			now.Sub(p.keyAnswered).Round(100*time.Millisecond), now.Sub(p.registerSent).Round(100*time.Millisecond))
	default:
		return fmt.Sprintf("control answered %v ago; the registration was not sent yet", now.Sub(p.keyAnswered).Round(100*time.Millisecond))
	}
}

// startPhases are the durations of a node start's steps before it waits
// for the node (Start), for its log and errors.
type startPhases struct {
	authKey       time.Duration // creating an auth key (OAuth client secret)
	tun           time.Duration // creating or opening the TUN
	memoryRelease time.Duration // waiting for releaseBeforeStart
	tsnetStart    time.Duration // tsnet.Server.Start and its LocalClient
}

func (s startPhases) total() time.Duration {
	return s.authKey + s.tun + s.memoryRelease + s.tsnetStart
}

// String lists the steps that took 10 ms or more, e.g. "TUN 20ms, tsnet
// start 3.1s".
func (s startPhases) String() string {
	var parts []string
	for _, p := range []struct {
		name string
		d    time.Duration
	}{
		{"auth key", s.authKey},
		{"TUN", s.tun},
		{"memory release", s.memoryRelease},
		{"tsnet start", s.tsnetStart},
	} {
		if p.d >= 10*time.Millisecond {
			parts = append(parts, p.name+" "+roundDuration(p.d).String())
		}
	}
	if len(parts) == 0 {
		return "nothing over 10ms"
	}
	return strings.Join(parts, ", ")
}

// roundDuration rounds d for a message: to the millisecond below a second,
// else to 100 ms.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}
