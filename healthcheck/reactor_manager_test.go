package healthcheck

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lvsha/lvsha/healthcheck/hctest"
)

// The tests in this file run the Manager as production runs plain http and
// tcp checks: with NewChecker, on the epoll reactor, against loopback
// servers, in real time (the reactor waits in the runtime's network
// poller, which synctest's fake clock does not drive). The exact timing
// rules are the schedule's and tested there (schedule_test.go).

// runManager runs a Manager with the production checkers until the test
// ends. Make the servers first: cleanups run in reverse, so the Manager
// stops (closing its probes) before the servers wait for their connections.
func runManager(t *testing.T, opts ...Option) *Manager {
	t.Helper()
	m := NewManager(nil, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func nextTransition(t *testing.T, m *Manager) Transition {
	t.Helper()
	select {
	case tr := <-m.Transitions():
		return tr
	case <-time.After(testTimeout):
		t.Fatal("no transition")
	}
	panic("unreachable")
}

func noTransition(t *testing.T, m *Manager, within time.Duration) {
	t.Helper()
	select {
	case tr := <-m.Transitions():
		t.Fatalf("unexpected transition %+v", tr)
	case <-time.After(within):
	}
}

// waitSnapshot waits until the Manager's targets are exactly ids (an
// Update was applied) and returns their states by ID.
func waitSnapshot(t *testing.T, m *Manager, ids ...string) map[string]TargetState {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		snap := m.Snapshot()
		got := map[string]TargetState{}
		for _, s := range snap {
			got[s.ID] = s
		}
		match := len(got) == len(ids)
		for _, id := range ids {
			_, ok := got[id]
			match = match && ok
		}
		if match {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("targets %+v, want %v", snap, ids)
		}
		time.Sleep(time.Millisecond)
	}
}

const reactorInterval = 50 * time.Millisecond

// httpSpec is a complete spec (no field left to a default).
func httpSpec(rise, fall int) Spec {
	return Spec{Type: TypeHTTP, Path: "/", Method: "GET", Status: []StatusRange{{200, 299}}, MaxBody: 64 << 10,
		Interval: reactorInterval, Timeout: testTimeout, Rise: rise, Fall: fall, InitialUp: true}
}

// TestReactorRiseFall: DOWN after fall failed checks, UP after rise good
// ones, with their reasons, the snapshot and the observer's account.
func TestReactorRiseFall(t *testing.T) {
	// Checks 0-1 pass, 2-4 fail (503), then pass again.
	srv := hctest.NewServer(t, func(n int) hctest.Answer {
		if n >= 2 && n <= 4 {
			return hctest.Unavailable
		}
		return hctest.OK
	})
	var mu sync.Mutex
	var observed []string
	m := runManager(t, WithObserver(func(id string, took time.Duration, reason string) {
		mu.Lock()
		defer mu.Unlock()
		if id != "web" || took <= 0 {
			t.Errorf("observed %s took %v", id, took)
		}
		observed = append(observed, reason)
	}))
	start := time.Now()
	if err := m.Update([]Target{{ID: "web", Addr: srv.Addr, Spec: httpSpec(2, 3)}}); err != nil {
		t.Fatal(err)
	}
	tr := nextTransition(t, m)
	if tr.ID != "web" || tr.Up || tr.Reason != "status 503" || tr.Addr != srv.Addr {
		t.Fatalf("transition %+v", tr)
	}
	if n := srv.Before(tr.At); n != 5 {
		t.Errorf("DOWN after %d checks, want 5 (2 ok + fall 3)", n)
	}
	// The fifth check starts four intervals after the first.
	if el := tr.At.Sub(start); el < 4*reactorInterval {
		t.Errorf("DOWN after %v, want at least %v", el, 4*reactorInterval)
	}
	tr = nextTransition(t, m)
	if tr.ID != "web" || !tr.Up || tr.Reason != "ok" {
		t.Fatalf("transition %+v", tr)
	}
	if n := srv.Before(tr.At); n != 7 {
		t.Errorf("UP after %d checks, want 7 (rise 2)", n)
	}
	s := m.Snapshot()[0]
	if !s.Up || s.Checks < 7 || s.Failures != 3 || s.LastError != "status 503" || !s.LastChange.Equal(tr.At) {
		t.Errorf("snapshot %+v", s)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"", "", ClassStatus, ClassStatus, ClassStatus, "", ""}
	if len(observed) < len(want) {
		t.Fatalf("observed %q, want %q first", observed, want)
	}
	for i, w := range want {
		if observed[i] != w {
			t.Errorf("observed %q, want %q first", observed, want)
			break
		}
	}
}

// TestReactorFailures: each way a server fails gives its reason; a hung
// server holds only its own check, the others keep their cadence.
func TestReactorFailures(t *testing.T) {
	hang := hctest.NewServer(t, hctest.Always(hctest.Hang))
	closed := hctest.NewServer(t, hctest.Always(hctest.Close))
	ok := hctest.NewServer(t, hctest.Always(hctest.OK))
	listening := rawServer(t, func(net.Conn) {})
	m := runManager(t)
	hungSpec := httpSpec(1, 1)
	hungSpec.Timeout = 200 * time.Millisecond
	tcp := Spec{Type: TypeTCP, Interval: reactorInterval, Timeout: testTimeout, Rise: 1, Fall: 1, InitialUp: true}
	if err := m.Update([]Target{
		{ID: "hang", Addr: hang.Addr, Spec: hungSpec},
		{ID: "closed", Addr: closed.Addr, Spec: httpSpec(1, 1)},
		{ID: "ok", Addr: ok.Addr, Spec: httpSpec(1, 1)},
		{ID: "refused", Addr: refusedAddr(t), Spec: tcp},
		{ID: "tcp-ok", Addr: listening, Spec: tcp},
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"hang":    "timeout after 200ms (waiting for response)",
		"closed":  "waiting for response: unexpected EOF",
		"refused": "connection refused",
	}
	for len(want) > 0 {
		tr := nextTransition(t, m)
		if w, ok := want[tr.ID]; !ok || tr.Up || tr.Reason != w {
			t.Fatalf("transition %+v, want one of %v", tr, want)
		}
		delete(want, tr.ID)
	}
	// One check per interval at most (a check starts an interval after
	// the last one started, or later), and about that many.
	n0, t0 := ok.Count(), time.Now()
	noTransition(t, m, 20*reactorInterval)
	n, el := ok.Count()-n0, time.Since(t0)
	if most := int(el/reactorInterval) + 1; n > most || n < most/3 {
		t.Errorf("ok server checked %d times in %v, want about %d", n, el, most)
	}
	if h := hang.Count(); h < 2 || h > int(time.Since(t0)/(200*time.Millisecond))+3 {
		t.Errorf("hung server checked %d times", h)
	}
}

// TestReactorUpdate: a reload keeps unchanged targets' state, restarts
// changed ones, starts new ones, and stops checking removed ones.
func TestReactorUpdate(t *testing.T) {
	down1, down2, up := hctest.NewServer(t, hctest.Always(hctest.Unavailable)), hctest.NewServer(t, hctest.Always(hctest.Unavailable)), hctest.NewServer(t, hctest.Always(hctest.OK))
	m := runManager(t)
	spec := httpSpec(1, 2)
	if err := m.Update([]Target{{ID: "rs1", Addr: down1.Addr, Spec: spec}, {ID: "rs2", Addr: down2.Addr, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if tr := nextTransition(t, m); tr.Up {
			t.Fatalf("transition %+v", tr)
		}
	}
	before := waitSnapshot(t, m, "rs1", "rs2")["rs1"]
	// rs2's new check is due within ten hours: not during this test.
	other := spec
	other.Fall = 5
	other.Interval = 10 * time.Hour
	if err := m.Update([]Target{{ID: "rs1", Addr: down1.Addr, Spec: spec}, {ID: "rs2", Addr: down2.Addr, Spec: other}, {ID: "rs3", Addr: up.Addr, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	after := waitSnapshot(t, m, "rs1", "rs2", "rs3")
	if s := after["rs1"]; s.Up || s.Checks < before.Checks || !s.LastChange.Equal(before.LastChange) {
		t.Errorf("unchanged target lost state: before %+v after %+v", before, s)
	}
	if s := after["rs2"]; !s.Up || s.Checks != 0 {
		t.Errorf("changed target kept old state: %+v", s)
	}
	if s := after["rs3"]; !s.Up {
		t.Errorf("new target: %+v", s)
	}
	// The reader saw rs2 DOWN; it restarted UP: told so.
	if tr := nextTransition(t, m); tr.ID != "rs2" || !tr.Up || tr.Reason != "check changed" {
		t.Errorf("transition %+v, want rs2 UP: check changed", tr)
	}
	// Removal stops checking (a probe on its way may still arrive).
	if err := m.Update([]Target{{ID: "rs3", Addr: up.Addr, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, m, "rs3")
	n1 := down1.Count()
	time.Sleep(4 * reactorInterval)
	n2 := down1.Count()
	time.Sleep(4 * reactorInterval)
	if n2 > n1+1 || down1.Count() != n2 {
		t.Errorf("removed target still checked: %d, %d, %d connections", n1, n2, down1.Count())
	}
	if err := m.Update([]Target{{ID: "bad", Spec: Spec{Type: CheckType(99)}}}); err == nil {
		t.Error("invalid spec accepted")
	}
	time.Sleep(2 * reactorInterval)
	if snap := m.Snapshot(); len(snap) != 1 || snap[0].ID != "rs3" {
		t.Errorf("a rejected update changed the targets: %+v", snap)
	}
}

// TestReactorInitialAndResume: a target starts in Spec.InitialUp, or in
// its Resume state when new; a known target ignores Resume.
func TestReactorInitialAndResume(t *testing.T) {
	srv1, srv2 := hctest.NewServer(t, hctest.Always(hctest.OK)), hctest.NewServer(t, hctest.Always(hctest.OK))
	m := runManager(t)
	initialDown := httpSpec(3, 1)
	initialDown.InitialUp = false
	resumed := Target{ID: "rs2", Addr: srv2.Addr, Spec: httpSpec(2, 1), Resume: &Resume{Up: false, Since: time.Now().Add(-time.Hour)}}
	if err := m.Update([]Target{{ID: "rs1", Addr: srv1.Addr, Spec: initialDown}, resumed}); err != nil {
		t.Fatal(err)
	}
	// Both start DOWN and come UP after rise good checks.
	wantChecks := map[string]struct {
		srv *hctest.Server
		n   int
	}{"rs1": {srv1, 3}, "rs2": {srv2, 2}}
	for range 2 {
		tr := nextTransition(t, m)
		w, ok := wantChecks[tr.ID]
		if !ok || !tr.Up {
			t.Fatalf("transition %+v", tr)
		}
		if n := w.srv.Before(tr.At); n != w.n {
			t.Errorf("%s UP after %d checks, want %d", tr.ID, n, w.n)
		}
		delete(wantChecks, tr.ID)
	}
	// Already known: its Resume is no reason to restart it.
	if err := m.Update([]Target{{ID: "rs1", Addr: srv1.Addr, Spec: initialDown}, resumed}); err != nil {
		t.Fatal(err)
	}
	noTransition(t, m, 4*reactorInterval)
	for _, s := range m.Snapshot() {
		if !s.Up || s.Checks < 2 {
			t.Errorf("known target reset: %+v", s)
		}
	}
}

// TestReactorMaxInFlight: with two slots and six hung servers, at most two
// probes run at once, and the queue gives every server its turn.
func TestReactorMaxInFlight(t *testing.T) {
	var srvs []*hctest.Server
	for range 6 {
		srvs = append(srvs, hctest.NewServer(t, hctest.Always(hctest.Hang)))
	}
	m := runManager(t, WithMaxInFlight(2))
	const timeout = 300 * time.Millisecond
	spec := httpSpec(1, 1)
	spec.Timeout = timeout
	var ts []Target
	for i, s := range srvs {
		ts = append(ts, Target{ID: string(rune('a' + i)), Addr: s.Addr, Spec: spec})
	}
	start := time.Now()
	if err := m.Update(ts); err != nil {
		t.Fatal(err)
	}
	for range srvs {
		nextTransition(t, m)
	}
	el := time.Since(start)
	total := 0
	for i, s := range srvs {
		n := s.Count()
		total += n
		if n < 1 {
			t.Errorf("server %d never checked", i)
		}
	}
	// Each probe holds its slot for the whole timeout.
	if most := 2 * (int(el/timeout) + 1); total > most {
		t.Errorf("%d probes in %v, want at most %d with 2 in flight", total, el, most)
	}
	if el < 3*timeout {
		t.Errorf("six %v probes done in %v with 2 in flight", timeout, el)
	}
}

// TestManagerRealHTTP drives the Manager against a real server on loopback
// that starts answering 503: DOWN after fall checks with the reason.
func TestManagerRealHTTP(t *testing.T) {
	var failing atomic.Bool
	var hits, hitsWhenFailing atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if failing.Load() {
			hitsWhenFailing.Add(1)
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	m := NewManager(nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	spec := complete(Spec{Type: TypeHTTP, Interval: 20 * time.Millisecond, Timeout: 10 * time.Second, Rise: 2, Fall: 3, InitialUp: true})
	refused := refusedAddr(t)
	if err := m.Update([]Target{
		{ID: "web", Addr: addrOf(t, srv.URL), Spec: spec},
		{ID: "gone", Addr: refused, Spec: spec},
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"gone": "connection refused", "web": "status 503"}
	deadline := time.After(10 * time.Second)
	for hits.Load() < 3 { // UP and answering first
		select {
		case tr := <-m.Transitions():
			if tr.ID != "gone" || tr.Reason != want["gone"] {
				t.Fatalf("transition %+v", tr)
			}
			delete(want, "gone")
		case <-deadline:
			t.Fatal("no checks")
		case <-time.After(10 * time.Millisecond):
		}
	}
	failing.Store(true)
	for len(want) > 0 {
		select {
		case tr := <-m.Transitions():
			if tr.Up || tr.Reason != want[tr.ID] {
				t.Fatalf("transition %+v", tr)
			}
			if tr.ID == "web" && hitsWhenFailing.Load() < 3 {
				t.Errorf("DOWN after %d failed checks, want fall=3", hitsWhenFailing.Load())
			}
			delete(want, tr.ID)
		case <-deadline:
			t.Fatalf("no transitions for %v", want)
		}
	}
}

// TestManagerRemoveCancelsProbe: removing a target whose server hangs ends
// its probe at once (the server sees the connection closed), not at the
// check's timeout; so does stopping Run. http runs on the reactor, https in
// a goroutine.
func TestManagerRemoveCancelsProbe(t *testing.T) {
	for _, tc := range []struct {
		typ CheckType
		how string
	}{{TypeHTTP, "update"}, {TypeHTTP, "stop"}, {TypeHTTPS, "update"}, {TypeHTTPS, "stop"}} {
		how := tc.how
		t.Run(tc.typ.String()+"_"+how, func(t *testing.T) {
			accepted := make(chan struct{}, 10)
			closed := make(chan struct{}, 10)
			target := rawServer(t, func(c net.Conn) {
				accepted <- struct{}{}
				io.Copy(io.Discard, c) // never answer; returns when the checker closes
				closed <- struct{}{}
			})
			m := NewManager(nil)
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { m.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			// Checks never overlap: the hung first check is the only one.
			spec := complete(Spec{Type: tc.typ, Interval: 50 * time.Millisecond, Timeout: time.Hour, InitialUp: true})
			if err := m.Update([]Target{{ID: "hung", Addr: target, Spec: spec}}); err != nil {
				t.Fatal(err)
			}
			wait := func(ch chan struct{}, what string) {
				select {
				case <-ch:
				case <-time.After(30 * time.Second):
					t.Fatalf("%s: not within 30s (the check's timeout is an hour)", what)
				}
			}
			wait(accepted, "probe")
			if how == "update" {
				_ = m.Update(nil)
			} else {
				cancel()
				<-done
			}
			wait(closed, "probe cancelled")
		})
	}
}
