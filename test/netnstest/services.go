package netnstest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// ServeDNS answers DNS queries on pc until it is closed: every A query with
// answer, other types with no records. Each question's name (lowercase, with
// the trailing dot) goes to record if it is not nil. It stands in for a
// host's resolver.
func ServeDNS(pc net.PacketConn, answer netip.Addr, record func(name string)) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		if record != nil {
			record(strings.ToLower(q.Name.String()))
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RecursionAvailable: true})
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		if q.Type == dnsmessage.TypeA {
			b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: answer.As4()})
		}
		out, _ := b.Finish()
		pc.WriteTo(out, from)
	}
}

// HTTPGet fetches url from inside ns with the given Host header ("" keeps
// the URL's) and returns "<status code> <start of the body>".
func (n *NetNS) HTTPGet(url, host string, timeout time.Duration) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return n.Dial(ctx, network, addr)
	}}
	c := &http.Client{Transport: tr, Timeout: timeout}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return "", err
	}
	if host != "" {
		req.Host = host
	}
	res, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	return fmt.Sprintf("%d %s", res.StatusCode, b), nil
}
