package healthcheck

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// The schedule's tests pass the time: no sleeps, no clock, no goroutines.

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// offsets returns an offset function that hands out ds in turn (the last
// one from then on).
func offsets(ds ...time.Duration) func(time.Duration) time.Duration {
	return func(time.Duration) time.Duration {
		d := ds[0]
		if len(ds) > 1 {
			ds = ds[1:]
		}
		return d
	}
}

func coreSpec(rise, fall int) Spec {
	return Spec{Type: TypeTCP, Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: rise, Fall: fall, InitialUp: true}
}

func coreTarget(id string, spec Spec) Target {
	return Target{ID: id, Addr: netip.MustParseAddrPort("127.0.0.1:80"), Spec: spec}
}

// ids lists the targets' IDs (a copy: Due reuses its slice).
func ids(ts []*tracked) []string {
	out := []string{}
	for _, t := range ts {
		out = append(out, t.id)
	}
	return out
}

func wantDue(t *testing.T, s *schedule, now time.Duration, want ...string) []*tracked {
	t.Helper()
	got := slices.Clone(s.Due(at(now)))
	if !slices.Equal(ids(got), append([]string{}, want...)) {
		t.Fatalf("Due(%v) = %v, want %v", now, ids(got), want)
	}
	return got
}

func wantNext(t *testing.T, s *schedule, want time.Duration) {
	t.Helper()
	if got := s.Next(); !got.Equal(at(want)) {
		t.Fatalf("Next() = %v, want %v", got.Sub(t0), want)
	}
}

func TestHysteresis(t *testing.T) {
	for _, tc := range []struct {
		name       string
		up         bool
		rise, fall int
		results    string // s = success, f = failure
		changes    string // state after each result that changed it: U or D, else .
	}{
		{"down after fall", true, 2, 3, "fff", "..D"},
		{"reset by a success", true, 2, 3, "ffsff", "....."},
		{"up after rise", false, 2, 3, "ss", ".U"},
		{"flapping within rise/fall", true, 2, 2, "fsfsfsfs", "........"},
		{"flapping while down", false, 2, 2, "sfsfsf", "......"},
		{"fall 1 rise 1", true, 1, 1, "fsfs", "DUDU"},
		{"down then up", true, 2, 2, "ffss", ".D.U"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, streak := tc.up, 0
			got := ""
			for _, r := range tc.results {
				if hysteresis(&up, &streak, r == 's', tc.rise, tc.fall) {
					got += map[bool]string{true: "U", false: "D"}[up]
				} else {
					got += "."
				}
			}
			if got != tc.changes {
				t.Errorf("%s: got %s, want %s", tc.results, got, tc.changes)
			}
		})
	}
}

// TestScheduleRiseFall runs result sequences through the schedule: which
// check makes the transition, with what reason, time and snapshot.
func TestScheduleRiseFall(t *testing.T) {
	for _, tc := range []struct {
		name       string
		initialUp  bool
		rise, fall int
		results    string // s = success, f = failure (reason "status 503")
		changes    string // state after each check that changed it: U or D, else .
	}{
		// 2 ok, then fall 3 failures, then rise 2 successes.
		{"down after fall, up after rise", true, 2, 3, "ssfffss", "....D.U"},
		{"flapping within rise/fall", true, 2, 2, "sfsfsfsfsf", ".........."},
		{"initially down, up after rise", false, 3, 1, "sss", "..U"},
		{"fall 1", true, 1, 1, "fsf", "DUD"},
		{"a success resets the failures", true, 1, 2, "fsffsf", "...DU."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := coreSpec(tc.rise, tc.fall)
			spec.InitialUp = tc.initialUp
			s := newSchedule(10, offsets(0))
			s.Update(t0, []Target{coreTarget("rs1", spec)})
			got := ""
			var last Transition
			failures := 0
			for i, r := range tc.results {
				start := time.Duration(i) * time.Second
				ts := wantDue(t, s, start, "rs1")
				reason := "ok"
				if r == 'f' {
					reason = "status 503"
					failures++
				}
				tr, changed := s.Result(at(start+10*time.Millisecond), ts[0], r == 's', reason)
				if !changed {
					got += "."
					continue
				}
				got += map[bool]string{true: "U", false: "D"}[tr.Up]
				if tr.ID != "rs1" || tr.Reason != reason || !tr.At.Equal(at(start+10*time.Millisecond)) {
					t.Errorf("check %d: transition %+v", i, tr)
				}
				last = tr
			}
			if got != tc.changes {
				t.Fatalf("%s: got %s, want %s", tc.results, got, tc.changes)
			}
			snap := s.Snapshot()[0]
			if snap.Checks != uint64(len(tc.results)) || snap.Failures != uint64(failures) || !snap.LastChange.Equal(last.At) ||
				snap.LastOK != (tc.results[len(tc.results)-1] == 's') {
				t.Errorf("snapshot %+v", snap)
			}
			if failures > 0 && snap.LastError != "status 503" {
				t.Errorf("snapshot last error %q", snap.LastError)
			}
		})
	}
}

// TestScheduleCadence: the first check at the random offset, then one per
// interval counted from the start of the last (not its end); after a check
// that overran its interval the next starts at once, with no catch-up.
func TestScheduleCadence(t *testing.T) {
	s := newSchedule(10, offsets(300*time.Millisecond))
	s.Update(t0, []Target{coreTarget("rs1", coreSpec(1, 1))})
	wantNext(t, s, 300*time.Millisecond)
	wantDue(t, s, 0)
	wantNext(t, s, 300*time.Millisecond)
	x := wantDue(t, s, 300*time.Millisecond, "rs1")[0]
	if !s.Next().IsZero() {
		t.Fatalf("Next() = %v while the only check runs, want none (checks never overlap)", s.Next().Sub(t0))
	}
	s.Result(at(350*time.Millisecond), x, true, "ok")
	wantNext(t, s, 1300*time.Millisecond)
	wantDue(t, s, 1250*time.Millisecond)
	wantDue(t, s, 1300*time.Millisecond, "rs1")
	// Took 1.5 s: due again at its end (2.3 s has passed).
	s.Result(at(2800*time.Millisecond), x, false, "timeout after 500ms")
	wantNext(t, s, 2800*time.Millisecond)
	wantDue(t, s, 2800*time.Millisecond, "rs1")
	s.Result(at(2850*time.Millisecond), x, true, "ok")
	wantNext(t, s, 3800*time.Millisecond)
}

// TestScheduleRounds: due checks are taken at most startQuantum apart.
func TestScheduleRounds(t *testing.T) {
	s := newSchedule(10, offsets(300*time.Millisecond, 310*time.Millisecond))
	s.Update(t0, []Target{coreTarget("a", coreSpec(1, 1)), coreTarget("b", coreSpec(1, 1))})
	wantDue(t, s, 300*time.Millisecond, "a")
	wantNext(t, s, 300*time.Millisecond+startQuantum) // b is due at 310 ms
	wantDue(t, s, 310*time.Millisecond)
	wantDue(t, s, 300*time.Millisecond+startQuantum, "b")
}

// TestScheduleMaxInFlight: at most maxInFlight run; the rest wait in the
// order they fell due and start as soon as a result frees a slot.
func TestScheduleMaxInFlight(t *testing.T) {
	s := newSchedule(2, offsets(300*time.Millisecond, 100*time.Millisecond, 200*time.Millisecond))
	s.Update(t0, []Target{coreTarget("a", coreSpec(1, 1)), coreTarget("b", coreSpec(1, 1)), coreTarget("c", coreSpec(1, 1))})
	run := wantDue(t, s, time.Second, "b", "c")
	if !s.Waiting() {
		t.Fatal("a is not waiting for a slot")
	}
	wantDue(t, s, time.Second+time.Millisecond)
	s.Result(at(time.Second+2*time.Millisecond), run[0], true, "ok")
	wantDue(t, s, time.Second+2*time.Millisecond, "a") // same round
	if s.Waiting() {
		t.Fatal("still waiting")
	}
	// b is due again at 1.1 s, but both slots are taken.
	wantDue(t, s, 2*time.Second)
	s.Result(at(2*time.Second), run[1], true, "ok")
	// c is due again now, but b has waited longer.
	wantDue(t, s, 2*time.Second, "b")
}

// TestScheduleUpdate: a reload keeps unchanged targets, restarts changed
// ones (telling the reader when the state it saw changes), starts new ones
// in their initial or resumed state, and forgets removed ones, whose
// running check's result then only frees its slot.
func TestScheduleUpdate(t *testing.T) {
	ms := time.Millisecond
	s := newSchedule(10, offsets(0, 1*ms, 2*ms, 3*ms, 4*ms))
	spec := coreSpec(1, 1)
	s.Update(t0, []Target{coreTarget("a", spec), coreTarget("b", spec)})
	run := wantDue(t, s, 10*ms, "a", "b")
	s.Result(at(11*ms), run[0], false, "down")
	s.Result(at(11*ms), run[1], false, "down")
	for range 2 {
		tr, ok := s.Outgoing()
		if !ok || tr.Up {
			t.Fatalf("Outgoing() = %+v, %v", tr, ok)
		}
		s.Delivered(tr)
	}
	bOld := wantDue(t, s, 1001*ms, "a", "b")[1]
	s.Result(at(1002*ms), run[0], false, "down") // a stays DOWN

	other := spec
	other.Fall = 5
	since := t0.Add(-time.Hour)
	b, c, d := coreTarget("b", other), coreTarget("c", spec), coreTarget("d", spec)
	b.Resume = &Resume{Up: false, Since: since} // replaced: ignored
	c.Resume = &Resume{Up: false, Since: since}
	d.Spec.InitialUp = false
	aKept := coreTarget("a", spec)
	aKept.Resume = &Resume{Up: true} // known: ignored
	added, removed := s.Update(at(1500*ms), []Target{aKept, b, c, d})
	if got := ids(added); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("added %v", got)
	}
	if got := ids(removed); !slices.Equal(got, []string{"b"}) || removed[0] != bOld || !bOld.gone {
		t.Errorf("removed %v", got)
	}
	if added[1].spec != s.targets["a"].spec || added[0].spec == added[1].spec {
		t.Error("targets with the same check do not share one Spec")
	}
	want := map[string]struct {
		up     bool
		checks uint64
		change time.Time
	}{
		"a": {false, 2, at(11 * ms)},
		"b": {true, 0, time.Time{}},
		"c": {false, 0, since},
		"d": {false, 0, time.Time{}},
	}
	for _, st := range s.Snapshot() {
		w := want[st.ID]
		if st.Up != w.up || st.Checks != w.checks || !st.LastChange.Equal(w.change) {
			t.Errorf("%s: %+v, want up %v, %d checks, last change %v", st.ID, st, w.up, w.checks, w.change)
		}
	}
	// The reader saw b DOWN; it restarted UP: told so.
	tr, ok := s.Outgoing()
	if !ok || tr.ID != "b" || !tr.Up || tr.Reason != "check changed" || !tr.At.Equal(at(1500*ms)) {
		t.Fatalf("Outgoing() = %+v, %v; want b UP: check changed", tr, ok)
	}
	s.Delivered(tr)
	if tr, ok := s.Outgoing(); ok {
		t.Fatalf("Outgoing() = %+v", tr)
	}
	// The old b's check ends: it counts for nothing but frees its slot.
	if tr, changed := s.Result(at(1600*ms), bOld, true, "ok"); changed {
		t.Errorf("removed target's result made %+v", tr)
	}
	if s.running != 0 {
		t.Errorf("%d running, want 0", s.running)
	}
	// a kept its schedule (due at 2 s); the others start at their offsets.
	wantDue(t, s, 1600*ms, "b", "c", "d")
	wantNext(t, s, 2*time.Second)

	// A changed check that starts in the state the reader saw (DOWN):
	// no transition; removed targets leave none either.
	downAgain := other
	downAgain.InitialUp = false
	s.Update(at(3*time.Second), []Target{coreTarget("a", downAgain)})
	if tr, ok := s.Outgoing(); ok {
		t.Fatalf("Outgoing() = %+v, want nothing", tr)
	}
	if snap := s.Snapshot(); len(snap) != 1 || snap[0].Up {
		t.Errorf("snapshot %+v", snap)
	}
}

// TestScheduleSlowReader: transitions the reader has not taken yet are
// kept one per target, in order; a target back to what the reader saw
// yields nothing.
func TestScheduleSlowReader(t *testing.T) {
	s := newSchedule(10, offsets(0, 10*time.Millisecond))
	s.Update(t0, []Target{coreTarget("rs1", coreSpec(1, 1)), coreTarget("rs2", coreSpec(1, 1))})
	results := map[string]string{"rs1": "fsss", "rs2": "sffs"}
	for i := range 4 {
		now := time.Duration(i) * time.Second
		for _, x := range wantDue(t, s, now+10*time.Millisecond, "rs1", "rs2") {
			ok := results[x.id][i] == 's'
			reason := "ok"
			if !ok {
				reason = fmt.Sprintf("fail %d", i)
			}
			s.Result(at(now+20*time.Millisecond), x, ok, reason)
		}
		if i == 1 {
			// rs1 went DOWN and UP again; rs2 DOWN: only rs2's, with
			// the reason of the check that took it DOWN.
			tr, ok := s.Outgoing()
			if !ok || tr.ID != "rs2" || tr.Up || tr.Reason != "fail 1" {
				t.Fatalf("Outgoing() = %+v, %v", tr, ok)
			}
			if again, _ := s.Outgoing(); again != tr {
				t.Fatalf("Outgoing() not stable until delivered: %+v", again)
			}
		}
	}
	// Not delivered meanwhile: rs2 is back UP, which the reader saw.
	if tr, ok := s.Outgoing(); ok {
		t.Fatalf("Outgoing() = %+v, want nothing", tr)
	}
}

// TestScheduleSpread: new targets' first checks spread over the interval.
func TestScheduleSpread(t *testing.T) {
	s := newSchedule(10000, func(d time.Duration) time.Duration { return rand.N(d) })
	var ts []Target
	for i := range 1000 {
		ts = append(ts, coreTarget(fmt.Sprint(i), coreSpec(1, 1)))
	}
	s.Update(t0, ts)
	var deciles [10]int
	for _, x := range s.targets {
		d := x.due.Sub(t0)
		if d < 0 || d >= time.Second {
			t.Fatalf("a first check due at %v, outside the interval", d)
		}
		deciles[d/(100*time.Millisecond)]++
	}
	for i, n := range deciles {
		if n < 50 || n > 150 {
			t.Errorf("%d first checks in [%d00ms, %d00ms), want about 100", n, i, i+1)
		}
	}
}

// TestScheduleUpdateVia: a target whose Via changes (its check now goes
// through a VIP, or with another mark) is a new check; the same Via keeps
// it.
func TestScheduleUpdateVia(t *testing.T) {
	s := newSchedule(10, offsets(0, 0, 0, 0))
	spec := coreSpec(1, 1)
	a := coreTarget("a", spec)
	s.Update(t0, []Target{a})
	a.Via = Via{VIP: netip.MustParseAddr("10.0.0.100"), Mark: 7}
	if added, _ := s.Update(at(time.Millisecond), []Target{a}); len(added) != 1 || added[0].via != a.Via {
		t.Fatalf("via set: added %v", ids(added))
	}
	if added, _ := s.Update(at(2*time.Millisecond), []Target{a}); len(added) != 0 {
		t.Fatalf("same via: added %v", ids(added))
	}
	a.Via.Mark = 8
	if added, _ := s.Update(at(3*time.Millisecond), []Target{a}); len(added) != 1 {
		t.Fatalf("new mark: added %v", ids(added))
	}
}
