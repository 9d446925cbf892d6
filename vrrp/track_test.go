package vrrp

import (
	"testing"
	"time"
)

// TestTrackFile follows keepalived's track_file: the number times the
// weight adds to the priority, within 1..254; below -253 is FAULT; weight
// 0 faults on any number but 0; a master whose priority drops tells its
// peers at once.
func TestTrackFile(t *testing.T) {
	c := cfg3(200)
	c.TrackFiles = []TrackFile{{Name: "drain", Weight: 1}, {Name: "stop", Weight: 0}, {Name: "rev", Weight: 2, Reverse: true}}
	m := master(t, c)
	now := t0.Add(10 * time.Second)

	acts := m.Step(now, TrackFileValue{Name: "drain", Value: -60})
	if m.Priority() != 140 || m.State() != Master {
		t.Fatalf("drain -60: priority %d state %v, want 140 MASTER", m.Priority(), m.State())
	}
	if a, ok := find[SendAdvert](acts); !ok || a.Priority != 140 {
		t.Errorf("a master whose priority dropped must advertise it at once: %v", acts)
	}
	if acts := m.Step(now, TrackFileValue{Name: "drain", Value: -60}); acts != nil {
		t.Errorf("an unchanged value acts: %v", acts)
	}
	m.Step(now, TrackFileValue{Name: "rev", Value: 10})
	if m.Priority() != 120 {
		t.Errorf("reverse weight 2, value 10: priority %d, want 120", m.Priority())
	}
	m.Step(now, TrackFileValue{Name: "rev", Value: 0})
	m.Step(now, TrackFileValue{Name: "drain", Value: -500})
	if m.State() != Fault {
		t.Fatalf("drain -500: state %v, want FAULT", m.State())
	}
	m.Step(now, TrackFileValue{Name: "drain", Value: -253})
	if m.State() != Backup || m.Priority() != 1 {
		t.Fatalf("drain -253: state %v priority %d, want BACKUP 1", m.State(), m.Priority())
	}
	m.Step(now, TrackFileValue{Name: "drain", Value: 0})
	m.Step(now, TrackFileValue{Name: "stop", Value: 3})
	if m.State() != Fault || m.Cause() != "tracked file stop: 3" {
		t.Fatalf("weight 0, value 3: state %v cause %q, want FAULT", m.State(), m.Cause())
	}
	m.Step(now, TrackFileValue{Name: "stop", Value: 0})
	if m.State() != Backup || m.Priority() != 200 {
		t.Fatalf("recovered: state %v priority %d", m.State(), m.Priority())
	}
	// Overflow: a huge value times a weight stays a huge negative.
	m.Step(now, TrackFileValue{Name: "rev", Value: 1 << 62})
	if m.State() != Fault {
		t.Errorf("value 2^62 reversed: state %v, want FAULT", m.State())
	}
}

// TestTrackScript follows keepalived's vrrp_script weights: a negative
// weight is added while failing, a positive one while succeeding, weight 0
// faults while failing, reverse swaps; a script not yet run counts as
// succeeding.
func TestTrackScript(t *testing.T) {
	c := cfg3(100)
	c.Scripts = []TrackScript{{Name: "gw", Weight: -60}, {Name: "up", Weight: 20}, {Name: "must", Weight: 0}, {Name: "rev", Weight: -10, Reverse: true}}
	m := master(t, c)
	if m.Priority() != 110 {
		// up +20 (succeeding), rev -10 (reverse: succeeding counts as failing)
		t.Fatalf("initial priority %d, want 110", m.Priority())
	}
	now := t0.Add(10 * time.Second)
	acts := m.Step(now, TrackScriptResult{Name: "gw", OK: false})
	if m.Priority() != 50 {
		t.Errorf("gw failing: priority %d, want 50", m.Priority())
	}
	if a, ok := find[SendAdvert](acts); !ok || a.Priority != 50 {
		t.Errorf("no advert at once: %v", acts)
	}
	m.Step(now, TrackScriptResult{Name: "up", OK: false})
	m.Step(now, TrackScriptResult{Name: "rev", OK: false})
	if m.Priority() != 40 {
		t.Errorf("up and rev failing: priority %d, want 40", m.Priority())
	}
	m.Step(now, TrackScriptResult{Name: "must", OK: false})
	if m.State() != Fault || m.Cause() != "tracked script must failing" {
		t.Fatalf("weight 0 failing: %v %q", m.State(), m.Cause())
	}
	m.Step(now, TrackScriptResult{Name: "must", OK: true})
	if m.State() != Backup {
		t.Fatalf("weight 0 back: %v", m.State())
	}
}

// TestReconfiguredTrack keeps the reported values across a reload that
// starts tracking them.
func TestReconfiguredTrack(t *testing.T) {
	m := master(t, cfg3(200))
	now := t0.Add(10 * time.Second)
	m.Step(now, TrackFileValue{Name: "drain", Value: -100})
	if m.Priority() != 200 {
		t.Fatalf("an untracked file changed the priority: %d", m.Priority())
	}
	acts := m.Step(now, Reconfigured{TrackFiles: []TrackFile{{Name: "drain", Weight: 1}}})
	if m.Priority() != 100 {
		t.Fatalf("after the reload: priority %d, want 100", m.Priority())
	}
	if a, ok := find[SendAdvert](acts); !ok || a.Priority != 100 {
		t.Errorf("no advert at once: %v", acts)
	}
}

// TestGroupFault: a sync group holds a member in FAULT while another is;
// OwnFault leaves the group out, so that members do not hold each other
// down for ever.
func TestGroupFault(t *testing.T) {
	c := cfg3(150)
	c.Track = []TrackInterface{{Name: "eth1", Weight: 0}}
	m := master(t, c)
	now := t0.Add(10 * time.Second)
	acts := m.Step(now, GroupFault{Cause: "sync group G: VI_2: link down"})
	if m.State() != Fault || m.Cause() != "sync group G: VI_2: link down" || m.OwnFault() != "" {
		t.Fatalf("group fault: %v %q own %q", m.State(), m.Cause(), m.OwnFault())
	}
	if a, ok := find[SendAdvert](acts); !ok || a.Priority != 0 {
		t.Errorf("a master held down by its group must send priority 0: %v", acts)
	}
	m.Step(now, TrackChanged{Name: "eth1", Up: false})
	if m.OwnFault() != "tracked interface eth1 down" {
		t.Errorf("own fault %q", m.OwnFault())
	}
	m.Step(now, GroupFault{})
	if m.State() != Fault {
		t.Fatalf("released by the group but its own interface is down: %v", m.State())
	}
	m.Step(now, TrackChanged{Name: "eth1", Up: true})
	if m.State() != Backup {
		t.Fatalf("all clear: %v", m.State())
	}
}

// TestGroupBackup: a master whose sync group partner went BACKUP follows
// with a priority-0 advert; a backup ignores it.
func TestGroupBackup(t *testing.T) {
	m := master(t, cfg3(150))
	now := t0.Add(10 * time.Second)
	acts := m.Step(now, GroupBackup{Cause: "sync group G: VI_2 BACKUP"})
	if m.State() != Backup || m.Cause() != "sync group G: VI_2 BACKUP" {
		t.Fatalf("after GroupBackup: %v %q", m.State(), m.Cause())
	}
	if a, ok := find[SendAdvert](acts); !ok || a.Priority != 0 {
		t.Errorf("no priority-0 advert: %v", acts)
	}
	if _, ok := find[RemoveVIPs](acts); !ok {
		t.Errorf("VIPs kept: %v", acts)
	}
	if acts := m.Step(now, GroupBackup{Cause: "again"}); acts != nil || m.Cause() != "sync group G: VI_2 BACKUP" {
		t.Errorf("a backup acted on GroupBackup: %v", acts)
	}
}
