package healthcheck

import (
	"container/heap"
	"net/netip"
	"slices"
	"time"
)

// schedule is the Manager's pure core: it decides which checks start when
// and what their results make of each target's state. It has no
// goroutines, sockets or clock (every method is given the time), so each
// rule below is tested with plain values. The Manager's Run (runner.go)
// drives it: it starts the checks Due returns, on the reactor or in
// goroutines, feeds their results to Result and delivers the transitions
// Outgoing hands out (see outbox).
//
// The rules:
//   - A new target's first check is due at a random offset within its
//     interval, so that targets added together do not all check at once.
//   - A target's next check is due one interval after its last one was due
//     (the start, not the end, so the cadence does not drift), but never
//     before the last one ended: checks of a target never overlap and a
//     check that overran its interval is not followed by a catch-up burst.
//   - Due checks are taken in rounds at most startQuantum apart, so probes
//     go out (and their answers come back) in batches rather than one
//     wake-up each. At most maxInFlight checks run at once; due checks
//     beyond that wait in FIFO order and start as soon as results free
//     slots, without waiting for the next round.
//   - Rise/fall: fall consecutive failures take an UP target DOWN, rise
//     consecutive successes a DOWN one UP; a result that agrees with the
//     state resets the count.
//   - A reload keeps the state and schedule of targets whose address and
//     check are unchanged; new and changed ones start in Spec.InitialUp
//     (a new one in its Resume state, if it has one).
type schedule struct {
	maxInFlight int
	// offset picks a new target's first due time within its interval
	// (rand.N in the Manager; fixed in tests).
	offset func(interval time.Duration) time.Duration

	targets   map[string]*tracked
	heap      trackedHeap
	ready     []*tracked // due but waiting for an in-flight slot, oldest first
	running   int        // started and not yet finished, removed targets' included
	lastRound time.Time
	started   []*tracked // Due's result, reused
	out       outbox
}

// startQuantum is the shortest time between two rounds of taking due
// checks.
const startQuantum = 20 * time.Millisecond

func newSchedule(maxInFlight int, offset func(time.Duration) time.Duration) *schedule {
	return &schedule{maxInFlight: maxInFlight, offset: offset, targets: make(map[string]*tracked), out: newOutbox()}
}

// tracked is one target's schedule and state. The Manager reads id, addr,
// spec and gone to run its checks; everything else is the schedule's.
type tracked struct {
	id   string
	addr netip.AddrPort
	via  Via
	spec *Spec // shared by the targets with the same check
	due  time.Time
	idx  int  // heap index, -1 when not in the heap (running, ready or removed)
	gone bool // removed or replaced by an Update

	up     bool
	streak int // consecutive results disagreeing with up

	lastOK     bool
	lastErr    string
	lastCheck  time.Time
	lastChange time.Time
	checks     uint64
	failures   uint64
}

// Update replaces the set of targets at now (a reload; targets valid and
// defaulted). It returns the targets it added (new ones, and replacements
// of changed ones) and the ones it removed (gone, or replaced): a check of
// a removed target that is running should be stopped, and its result is
// ignored. A replaced target whose starting state differs from the one the
// reader of transitions last saw gets a transition "check changed".
func (s *schedule) Update(now time.Time, desired []Target) (added, removed []*tracked) {
	keep := make(map[string]bool, len(desired))
	replaced := make(map[string]bool)
	// Targets with the same check share one Spec (and the Manager one
	// Checker): with 10,000 targets this saves megabytes. A shared Spec is
	// keyed once.
	keys := make(map[*Spec]SpecKey)
	specs := make(map[SpecKey]*Spec)
	for _, t := range s.targets {
		if _, ok := keys[t.spec]; !ok {
			k := t.spec.Key()
			keys[t.spec], specs[k] = k, t.spec
		}
	}
	for _, d := range desired {
		k := d.Spec.Key()
		if old := s.targets[d.ID]; old != nil {
			if old.addr == d.Addr && old.via == d.Via && keys[old.spec] == k {
				keep[d.ID] = true
				continue
			}
			replaced[d.ID] = true
		}
		spec := specs[k]
		if spec == nil {
			sp := d.Spec
			spec = &sp
			specs[k] = spec
		}
		t := &tracked{id: d.ID, addr: d.Addr, via: d.Via, spec: spec, idx: -1, up: d.Spec.InitialUp}
		if d.Resume != nil && !replaced[d.ID] {
			t.up, t.lastChange = d.Resume.Up, d.Resume.Since
		}
		t.due = now.Add(s.offset(d.Spec.Interval))
		added = append(added, t)
	}
	for id, t := range s.targets {
		if keep[id] {
			continue
		}
		t.gone = true
		if t.idx >= 0 {
			heap.Remove(&s.heap, t.idx)
		}
		delete(s.targets, id)
		s.out.remove(id, replaced[id])
		removed = append(removed, t)
	}
	for _, t := range added {
		s.targets[t.id] = t
		if replaced[t.id] {
			s.out.queue(Transition{ID: t.id, Addr: t.addr, Up: t.up, Reason: "check changed", At: now})
		} else {
			s.out.add(t.id, t.up)
		}
		heap.Push(&s.heap, t)
	}
	if len(removed) > 0 && len(s.ready) > 0 {
		s.ready = slices.DeleteFunc(s.ready, func(t *tracked) bool { return t.gone })
	}
	return added, removed
}

// Due returns the checks to start at now, in the order they fell due; each
// counts as running until its Result or Abandon. The slice is reused by the
// next call.
func (s *schedule) Due(now time.Time) []*tracked {
	if now.Sub(s.lastRound) >= startQuantum {
		for len(s.heap) > 0 && !s.heap[0].due.After(now) {
			s.ready = append(s.ready, heap.Pop(&s.heap).(*tracked))
		}
		s.lastRound = now
	}
	n := max(0, min(len(s.ready), s.maxInFlight-s.running))
	s.started = append(s.started[:0], s.ready[:n]...)
	if n > 0 {
		clear(s.ready[:n])
		s.ready = s.ready[n:]
		if len(s.ready) == 0 {
			s.ready = nil // let the backing array go after a burst
		}
	}
	s.running += n
	return s.started
}

// Waiting reports whether due checks wait for an in-flight slot.
func (s *schedule) Waiting() bool { return len(s.ready) > 0 }

// Next is the time at which Due will next take due checks: the earliest
// due time, or the next round if that is later; zero when no target waits
// for its time. (Checks that wait for a slot start on a Result.)
func (s *schedule) Next() time.Time {
	if len(s.heap) == 0 {
		return time.Time{}
	}
	return later(s.heap[0].due, s.NextRound())
}

// NextRound is the earliest time at which Due takes due checks again.
func (s *schedule) NextRound() time.Time { return s.lastRound.Add(startQuantum) }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Result records the outcome of t's check that ended at now: ok, or the
// failure's reason ("ok" for a success, which a transition to UP carries).
// It schedules t's next check and returns t's transition if its state
// changed. The result of a removed target only frees its slot.
func (s *schedule) Result(now time.Time, t *tracked, ok bool, reason string) (Transition, bool) {
	s.running--
	if t.gone {
		return Transition{}, false
	}
	t.checks++
	t.lastOK, t.lastCheck = ok, now
	if !ok {
		t.failures++
		t.lastErr = reason
	}
	changed := hysteresis(&t.up, &t.streak, ok, t.spec.Rise, t.spec.Fall)
	if changed {
		t.lastChange = now
	}
	t.due = t.due.Add(t.spec.Interval)
	if t.due.Before(now) {
		t.due = now
	}
	heap.Push(&s.heap, t)
	if !changed {
		return Transition{}, false
	}
	tr := Transition{ID: t.id, Addr: t.addr, Up: t.up, Reason: reason, At: now}
	s.out.queue(tr)
	return tr, true
}

// Abandon frees the slot of a check whose result does not count (the
// Manager is stopping).
func (s *schedule) Abandon(*tracked) { s.running-- }

// hysteresis applies one result to up and its streak of disagreeing
// results and reports whether up changed.
func hysteresis(up *bool, streak *int, ok bool, rise, fall int) bool {
	if ok == *up {
		*streak = 0
		return false
	}
	*streak++
	need := rise
	if *up {
		need = fall
	}
	if *streak < need {
		return false
	}
	*up, *streak = ok, 0
	return true
}

// Outgoing returns the transition to deliver next, if any.
func (s *schedule) Outgoing() (Transition, bool) { return s.out.next() }

// Delivered records that the transition Outgoing returned was received.
func (s *schedule) Delivered(tr Transition) { s.out.delivered(tr) }

// Snapshot returns the state of every target, in no particular order.
func (s *schedule) Snapshot() []TargetState {
	out := make([]TargetState, 0, len(s.targets))
	for _, t := range s.targets {
		out = append(out, TargetState{
			ID: t.id, Addr: t.addr, Up: t.up, LastOK: t.lastOK, LastError: t.lastErr,
			LastCheck: t.lastCheck, LastChange: t.lastChange, Checks: t.checks, Failures: t.failures,
		})
	}
	return out
}

// trackedHeap orders targets by due time.
type trackedHeap []*tracked

func (h trackedHeap) Len() int           { return len(h) }
func (h trackedHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h trackedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *trackedHeap) Push(x any) {
	t := x.(*tracked)
	t.idx = len(*h)
	*h = append(*h, t)
}
func (h *trackedHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.idx = -1
	*h = old[:len(old)-1]
	return t
}
