package netdriver

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tslink/tslink/pkg/enginestate"
	"github.com/tslink/tslink/pkg/tsopts"
)

// TestJoinPassesEgress: the egress labels reach the node's config and the
// endpoint record (a restarted plugin brings the node back with them); a
// bad one fails Join naming the label, before any node starts.
func TestJoinPassesEgress(t *testing.T) {
	labels := map[string]string{"ts.accept-routes": "true", "ts.exit-node": "laptop", "ts.exit-node-allow-lan": "true"}
	h := newHarness(t, map[string]*enginestate.Container{"ep1": ctr("c1", "web", labels), "ep2": ctr("c2", "db", map[string]string{"ts.advertise-routes": "10.0.0.1/24"})})
	res := h.join("ep1")
	cfg := h.waitStart(t)
	want := tsopts.Egress{AcceptRoutes: true, ExitNode: "laptop", ExitNodeAllowLAN: true}
	if !reflect.DeepEqual(cfg.Egress, want) {
		t.Errorf("node egress %+v, want %+v", cfg.Egress, want)
	}
	h.nodes.release <- nil
	if err := wait(t, res); err != nil {
		t.Fatalf("Join: %v", err)
	}
	b, err := os.ReadFile(h.d.dir.EndpointRecord("ep1"))
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil || !reflect.DeepEqual(rec.Egress, want) {
		t.Errorf("record egress %+v (%v), want %+v", rec.Egress, err, want)
	}
	if err := wait(t, h.join("ep2")); err == nil || !strings.Contains(err.Error(), "label ts.advertise-routes") || !strings.Contains(err.Error(), "10.0.0.0/24") {
		t.Errorf("Join with a bad route: %v", err)
	}
}
