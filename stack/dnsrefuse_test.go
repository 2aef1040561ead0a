package stack

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Destinations a container could not reach with its own query are never
// forwarded to, whatever its routes.
func TestForwardableRefusesHostOnlyDestinations(t *testing.T) {
	for _, dst := range []string{"127.0.0.53", "127.0.0.1", "::1", "169.254.169.254", "fe80::1", "224.0.0.251", "ff02::fb", "0.0.0.0", "::", "255.255.255.255", "100.100.100.100", "fd7a:115c:a1e0::53", "::ffff:127.0.0.1"} {
		if err := forwardable("/nonexistent", netip.MustParseAddr(dst)); !errors.Is(err, errRefusedDestination) {
			t.Errorf("forwardable(%s) = %v, want errRefusedDestination", dst, err)
		}
	}
	if err := forwardable("", netip.MustParseAddr("192.0.2.53")); !errors.Is(err, errRefusedDestination) {
		t.Errorf("forwardable without a netns = %v, want errRefusedDestination", err)
	}
}

func TestRefusedAnswer(t *testing.T) {
	q, err := aQuery(dnsmessage.MustNewName("secret.corp.internal."))
	if err != nil {
		t.Fatal(err)
	}
	q[0], q[1] = 0x12, 0x34
	resp, err := refusedAnswer(q)
	if err != nil {
		t.Fatal(err)
	}
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		t.Fatal(err)
	}
	question, err := p.Question()
	if err != nil || h.ID != 0x1234 || !h.Response || h.RCode != dnsmessage.RCodeRefused || question.Name.String() != "secret.corp.internal." {
		t.Errorf("refusedAnswer = %+v %+v (%v), want REFUSED for ID 0x1234 and the question", h, question, err)
	}
}
