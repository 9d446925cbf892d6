package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The synctest tests in this file run the Manager with a fake checker on
// fake time. A fake is not a prober, so these checks run the goroutine
// path, the one production's exec and https checks take (fakeSpec says
// exec); reactor_manager_test.go runs plain http and tcp checks against loopback
// servers on the reactor, as production does.

// scripted is a fake checker: per target a function of the check number.
type scripted struct {
	mu       sync.Mutex
	n        map[netip.AddrPort]int
	running  map[netip.AddrPort]int
	overlap  bool
	inFlight int
	maxIn    int
	fn       func(ctx context.Context, target netip.AddrPort, n int) error
}

func newScripted(fn func(ctx context.Context, target netip.AddrPort, n int) error) *scripted {
	return &scripted{n: map[netip.AddrPort]int{}, running: map[netip.AddrPort]int{}, fn: fn}
}

func (s *scripted) Check(ctx context.Context, target netip.AddrPort) error {
	s.mu.Lock()
	n := s.n[target]
	s.n[target]++
	s.running[target]++
	if s.running[target] > 1 {
		s.overlap = true
	}
	s.inFlight++
	s.maxIn = max(s.maxIn, s.inFlight)
	s.mu.Unlock()
	err := s.fn(ctx, target, n)
	s.mu.Lock()
	s.running[target]--
	s.inFlight--
	s.mu.Unlock()
	return err
}

func (s *scripted) count(target netip.AddrPort) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[target]
}

func rs(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 1, byte(i)}), 80)
}

func target(i int, spec Spec) Target {
	return Target{ID: fmt.Sprintf("rs%d", i), Addr: rs(i), Spec: spec}
}

func fakeSpec(rise, fall int) Spec {
	return Spec{Type: TypeExec, Argv: []string{"fake"}, Interval: time.Second, Timeout: 500 * time.Millisecond, Rise: rise, Fall: fall, InitialUp: true}
}

// withChecker makes the Manager check every target with c.
func withChecker(c Checker) Option {
	return func(m *Manager) { m.newChecker = func(Spec) (Checker, error) { return c, nil } }
}

// startManager runs a Manager with a fake checker inside the synctest bubble
// and returns a function that stops it.
func startManager(t *testing.T, c Checker, opts ...Option) (*Manager, func()) {
	t.Helper()
	m := NewManager(nil, append(opts, withChecker(c))...)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	return m, func() { cancel(); <-done }
}

func state(m *Manager, id string) TargetState {
	for _, s := range m.Snapshot() {
		if s.ID == id {
			return s
		}
	}
	return TargetState{}
}

func TestManagerDownAfterFallUpAfterRise(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Checks 0-1 pass, 2-4 fail (503), then pass again.
		c := newScripted(func(_ context.Context, _ netip.AddrPort, n int) error {
			if n >= 2 && n <= 4 {
				return &StatusError{503}
			}
			return nil
		})
		m, stop := startManager(t, c)
		defer stop()
		if err := m.Update([]Target{target(1, fakeSpec(2, 3))}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		tr := <-m.Transitions()
		if tr.Up || tr.Reason != "status 503" || tr.ID != "rs1" {
			t.Fatalf("transition %+v", tr)
		}
		if n := c.count(rs(1)); n != 5 {
			t.Errorf("DOWN after %d checks, want 5 (2 ok + fall 3)", n)
		}
		// First check within one interval, then one per interval.
		// (A round may start a check up to startQuantum late.)
		if el := time.Since(start); el < 4*time.Second || el > 5*time.Second+startQuantum {
			t.Errorf("DOWN after %v, want [4s, 5s+%v]", el, startQuantum)
		}
		tr = <-m.Transitions()
		if !tr.Up || tr.Reason != "ok" {
			t.Fatalf("transition %+v", tr)
		}
		if n := c.count(rs(1)); n != 7 {
			t.Errorf("UP after %d checks, want 7 (rise 2)", n)
		}
		s := state(m, "rs1")
		if !s.Up || s.Checks != 7 || s.Failures != 3 || s.LastError != "status 503" || !s.LastChange.Equal(tr.At) {
			t.Errorf("snapshot %+v", s)
		}
	})
}

func TestManagerFlappingNoTransition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(_ context.Context, _ netip.AddrPort, n int) error {
			if n%2 == 1 {
				return errors.New("flap")
			}
			return nil
		})
		m, stop := startManager(t, c)
		defer stop()
		m.Update([]Target{target(1, fakeSpec(2, 2))})
		time.Sleep(60 * time.Second)
		synctest.Wait()
		select {
		case tr := <-m.Transitions():
			t.Fatalf("transition while flapping within rise/fall: %+v", tr)
		default:
		}
		if s := state(m, "rs1"); !s.Up || s.Checks < 59 || s.Failures < 29 {
			t.Errorf("snapshot %+v", s)
		}
	})
}

func TestManagerInitialState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(context.Context, netip.AddrPort, int) error { return nil })
		m, stop := startManager(t, c)
		defer stop()
		down := fakeSpec(3, 1)
		down.InitialUp = false
		m.Update([]Target{target(1, down), target(2, fakeSpec(3, 1))})
		synctest.Wait()
		if s := state(m, "rs1"); s.Up || s.Checks != 0 {
			t.Fatalf("initially DOWN target: %+v", s)
		}
		if s := state(m, "rs2"); !s.Up {
			t.Fatalf("initially UP target: %+v", s)
		}
		tr := <-m.Transitions()
		if tr.ID != "rs1" || !tr.Up || c.count(rs(1)) != 3 {
			t.Fatalf("transition %+v after %d checks", tr, c.count(rs(1)))
		}
	})
}

// TestManagerSpread checks the random initial offset: 1000 targets with a
// 1s interval start spread over the interval, not all at once.
func TestManagerSpread(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		first := map[netip.AddrPort]time.Duration{}
		start := time.Now()
		c := newScripted(func(_ context.Context, target netip.AddrPort, n int) error {
			if n == 0 {
				mu.Lock()
				first[target] = time.Since(start)
				mu.Unlock()
			}
			return nil
		})
		m, stop := startManager(t, c)
		defer stop()
		var ts []Target
		for i := range 1000 {
			ts = append(ts, Target{ID: fmt.Sprint(i), Addr: netip.AddrPortFrom(rs(1).Addr(), uint16(i+1)), Spec: fakeSpec(1, 1)})
		}
		m.Update(ts)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		// Every target's first check falls within the first interval (plus
		// a round's lateness), about a tenth of them in each tenth of it.
		var deciles [10]int
		for _, d := range first {
			if d > time.Second+startQuantum {
				t.Fatalf("a first check at %v, after the interval", d)
			}
			deciles[min(int(d/(100*time.Millisecond)), 9)]++
		}
		if len(first) != 1000 {
			t.Fatalf("%d targets checked, want 1000", len(first))
		}
		for i, n := range deciles {
			if n < 50 || n > 150 {
				t.Errorf("%d first checks in [%d00ms, %d00ms), want about 100", n, i, i+1)
			}
		}
	})
}

// TestManagerHungServer: a server that never answers holds only its own
// check; the others keep their cadence, and its checks never overlap.
func TestManagerHungServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(ctx context.Context, target netip.AddrPort, n int) error {
			if target == rs(1) {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})
		m, stop := startManager(t, c)
		defer stop()
		hung := fakeSpec(1, 1)
		hung.Timeout = 5 * time.Second // longer than the interval
		m.Update([]Target{target(1, hung), target(2, fakeSpec(1, 1)), target(3, fakeSpec(1, 1))})
		tr := <-m.Transitions()
		if tr.ID != "rs1" || tr.Up || tr.Reason != "timeout after 5s" {
			t.Fatalf("transition %+v", tr)
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		for _, i := range []int{2, 3} {
			if n := c.count(rs(i)); n < 34 || n > 36 {
				t.Errorf("rs%d ran %d checks in 35s, want one per second", i, n)
			}
		}
		// Timeout 5s > interval 1s: the next check starts when one ends.
		if n := c.count(rs(1)); n < 6 || n > 8 {
			t.Errorf("hung rs1 ran %d checks in 35s, want about 7", n)
		}
		if c.overlap {
			t.Error("a target's checks overlapped")
		}
	})
}

func TestManagerMaxInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(ctx context.Context, target netip.AddrPort, n int) error {
			time.Sleep(300 * time.Millisecond)
			return nil
		})
		m, stop := startManager(t, c, WithMaxInFlight(3))
		defer stop()
		var ts []Target
		for i := range 20 {
			ts = append(ts, target(i, fakeSpec(1, 1)))
		}
		m.Update(ts)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if c.maxIn != 3 {
			t.Errorf("max in flight %d, want 3", c.maxIn)
		}
		// 3 slots x 10s / 0.3s = 100 checks at most; the queue is served
		// FIFO so every target gets its turn.
		for i := range 20 {
			if n := c.count(rs(i)); n < 3 {
				t.Errorf("rs%d starved: %d checks", i, n)
			}
		}
	})
}

func TestManagerUpdateKeepsState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(_ context.Context, target netip.AddrPort, n int) error {
			return errors.New("down")
		})
		m, stop := startManager(t, c)
		defer stop()
		spec := fakeSpec(1, 2)
		m.Update([]Target{target(1, spec), target(2, spec)})
		for range 2 {
			if tr := <-m.Transitions(); tr.Up {
				t.Fatalf("transition %+v", tr)
			}
		}
		before := state(m, "rs1")
		// Reload: rs1 unchanged, rs2 with another spec, rs3 new.
		other := spec
		other.Fall = 5
		m.Update([]Target{target(1, spec), target(2, other), target(3, spec)})
		synctest.Wait()
		after := state(m, "rs1")
		if after.Up || after.Checks != before.Checks || !after.LastChange.Equal(before.LastChange) {
			t.Errorf("unchanged target lost state: before %+v after %+v", before, after)
		}
		if s := state(m, "rs2"); !s.Up || s.Checks != 0 {
			t.Errorf("changed target kept old state: %+v", s)
		}
		// The reader saw rs2 DOWN; it restarted UP: told so.
		if tr := <-m.Transitions(); tr.ID != "rs2" || !tr.Up || tr.Reason != "check changed" {
			t.Errorf("transition %+v, want rs2 UP: check changed", tr)
		}
		if s := state(m, "rs3"); !s.Up || s.Checks != 0 {
			t.Errorf("new target: %+v", s)
		}
		// rs1 keeps its schedule: one check per interval (a round may
		// start a check up to startQuantum late, so count over ten).
		n := c.count(rs(1))
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := c.count(rs(1)) - n; got < 9 || got > 11 {
			t.Errorf("rs1 ran %d checks in the 10 intervals after the reload", got)
		}
		// Removal stops checking.
		m.Update([]Target{target(3, spec)})
		synctest.Wait()
		n1 := c.count(rs(1))
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if c.count(rs(1)) != n1 || len(m.Snapshot()) != 1 {
			t.Errorf("removed target still checked: %d -> %d, %d in snapshot", n1, c.count(rs(1)), len(m.Snapshot()))
		}
		if err := m.Update([]Target{{ID: "bad", Spec: Spec{}}}); err == nil {
			t.Error("invalid spec accepted")
		}
		if len(m.Snapshot()) != 1 {
			t.Error("a rejected update changed the targets")
		}
	})
}

// TestManagerSlowReader: nobody reads Transitions for a while; checking goes
// on, and a target that went DOWN and back UP meanwhile yields nothing,
// while one that went DOWN yields one transition with the latest reason.
func TestManagerSlowReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(_ context.Context, target netip.AddrPort, n int) error {
			switch {
			case target == rs(1) && n >= 3 && n < 6: // down then up again
				return errors.New("blip")
			case target == rs(2) && n >= 3:
				return fmt.Errorf("fail %d", n)
			}
			return nil
		})
		m, stop := startManager(t, c)
		defer stop()
		m.Update([]Target{target(1, fakeSpec(1, 1)), target(2, fakeSpec(1, 1))})
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if n := c.count(rs(1)); n < 19 {
			t.Fatalf("checking stalled: %d checks", n)
		}
		tr := <-m.Transitions()
		if tr.ID != "rs2" || tr.Up || tr.Reason != "fail 3" {
			t.Fatalf("transition %+v", tr)
		}
		select {
		case tr := <-m.Transitions():
			t.Fatalf("unexpected %+v", tr)
		default:
		}
	})
}

func TestManagerObserver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Check n takes n*10ms; odd checks fail with 503.
		c := newScripted(func(_ context.Context, _ netip.AddrPort, n int) error {
			time.Sleep(time.Duration(n) * 10 * time.Millisecond)
			if n%2 == 1 {
				return &StatusError{503}
			}
			return nil
		})
		type obs struct {
			id     string
			took   time.Duration
			reason string
		}
		var mu sync.Mutex
		var got []obs
		m, stop := startManager(t, c, WithObserver(func(id string, took time.Duration, reason string) {
			mu.Lock()
			got = append(got, obs{id, took, reason})
			mu.Unlock()
		}))
		defer stop()
		if err := m.Update([]Target{target(1, fakeSpec(1, 5))}); err != nil {
			t.Fatal(err)
		}
		// The first check starts at a random offset within the 1 s
		// interval, so the fourth ends by 1 s + 3 s + 30 ms at the latest.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(got) < 4 {
			t.Fatalf("observed %d checks, want at least 4", len(got))
		}
		for n, o := range got[:4] {
			want := ""
			if n%2 == 1 {
				want = ClassStatus
			}
			if o.id != "rs1" || o.reason != want || o.took != time.Duration(n)*10*time.Millisecond {
				t.Errorf("check %d observed as %+v, want reason %q, took %v", n, o, want, time.Duration(n)*10*time.Millisecond)
			}
		}
	})
}

// TestManagerResume: a new target with Resume starts in that state, not in
// Spec.InitialUp, and a Resume on a known target changes nothing.
func TestManagerResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(context.Context, netip.AddrPort, int) error { return nil })
		m, stop := startManager(t, c)
		defer stop()
		since := time.Now().Add(-time.Hour)
		down, up := &Resume{Up: false, Since: since}, &Resume{Up: true}
		r1 := target(1, fakeSpec(2, 1)) // InitialUp true
		r1.Resume = down
		if err := m.Update([]Target{r1}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if s := state(m, "rs1"); s.Up || !s.LastChange.Equal(since) {
			t.Fatalf("resumed DOWN target starts %+v", s)
		}
		// Two good checks (rise 2) bring it UP, reported as a transition.
		if tr := <-m.Transitions(); tr.ID != "rs1" || !tr.Up {
			t.Errorf("transition %+v, want rs1 UP", tr)
		}
		if n := c.count(rs(1)); n != 2 {
			t.Errorf("UP after %d checks, want rise 2", n)
		}
		// Already known: Resume is no reason to restart it.
		r1.Resume = down
		r2 := target(2, fakeSpec(1, 1))
		r2.Spec.InitialUp = false
		r2.Resume = up
		if err := m.Update([]Target{r1, r2}); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if s := state(m, "rs1"); !s.Up || s.Checks < 2 {
			t.Errorf("known target reset by Resume: %+v", s)
		}
		if s := state(m, "rs2"); !s.Up {
			t.Errorf("resumed UP target starts %+v", s)
		}
	})
}

// TestManagerSharesCheckers: targets with the same check share one
// Checker, made once; a check that comes back after its last target went
// is set up anew.
func TestManagerSharesCheckers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newScripted(func(context.Context, netip.AddrPort, int) error { return nil })
		var made []Spec
		m := NewManager(nil)
		m.newChecker = func(s Spec) (Checker, error) {
			made = append(made, s)
			return c, nil
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { m.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		a, b := fakeSpec(1, 1), fakeSpec(2, 2)
		update := func(ts ...Target) {
			t.Helper()
			if err := m.Update(ts); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		update(target(1, a), target(2, b), target(3, a))
		if len(made) != 2 {
			t.Fatalf("%d checkers made for 2 checks", len(made))
		}
		update(target(1, a), target(2, b), target(3, a), target(4, b))
		if len(made) != 2 {
			t.Fatalf("a new target with a known check made a checker (%d)", len(made))
		}
		update(target(1, a), target(3, a)) // b's last targets go
		update(target(1, a), target(3, a), target(2, b))
		if len(made) != 3 || made[2].Rise != 2 {
			t.Fatalf("checkers made: %+v, want b's again", made)
		}
	})
}
