package director

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/vrrp"
)

// TestSyncGroupRules: a member's own fault holds the others (not itself)
// down, until it clears; a member gone from MASTER to BACKUP steps the
// group's other masters down; members of other groups are left alone.
func TestSyncGroupRules(t *testing.T) {
	var down []string
	changes := 0
	s := newSyncGroups(slog.New(slog.DiscardHandler), nil, func() { changes++ }, func(in, cause string) { down = append(down, in+": "+cause) })
	t.Cleanup(s.stop)
	s.update(context.Background(), []conf.SyncGroup{{Name: "G", Instances: []string{"a", "b", "c"}}, {Name: "H", Instances: []string{"x"}}})

	s.ownFault("a", "link down")
	if h := s.hold("b"); h != "sync group G: a in FAULT (link down)" {
		t.Errorf("b's hold %q", h)
	}
	if h := s.hold("a"); h != "" {
		t.Errorf("a holds itself down: %q", h)
	}
	if h := s.hold("x"); h != "" {
		t.Errorf("another group's member held: %q", h)
	}
	before := changes
	s.ownFault("a", "")
	if s.hold("b") != "" || changes != before+1 {
		t.Errorf("cleared: hold %q, %d changes", s.hold("b"), changes-before)
	}

	for _, m := range []string{"a", "b", "x"} {
		s.state(m, vrrp.Master)
	}
	s.state("c", vrrp.Backup)
	s.state("a", vrrp.Backup)
	if want := []string{"b: sync group G: a went BACKUP"}; !slices.Equal(down, want) {
		t.Errorf("stepped down %q, want %q", down, want)
	}
	down = nil
	s.state("c", vrrp.Fault)
	s.state("c", vrrp.Backup)
	if len(down) != 0 {
		t.Errorf("FAULT to BACKUP stepped down %q", down)
	}
}
