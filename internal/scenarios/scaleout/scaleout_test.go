package scaleout

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/connsync"
	"github.com/lvsha/lvsha/internal/scenarios/e2e"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// Flows is the number of long-lived connections; each sends a line every
// FlowInterval (1,000 echoes a second over the VM's two emulated CPUs).
const (
	Flows        = 200
	FlowInterval = 200 * time.Millisecond
)

// TestScaleOutVM builds lvsha, boots the VM and runs TestScaleOut there.
func TestScaleOutVM(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "the VM scenario does not run with -short")
	}
	vmtest.Need(t)
	lvsha := filepath.Join(t.TempDir(), "lvsha")
	if err := e2e.BuildLvsha(t.Context(), lvsha); err != nil {
		t.Fatal(err)
	}
	files, err := GuestFiles(lvsha)
	if err != nil {
		testutil.Unavailable(t, err.Error())
	}
	res := vmtest.Run(t, "^TestScaleOut$", vm.Options{Files: files, Timeout: 8 * time.Minute, CPUs: 2, MemoryMB: 1024})
	for _, l := range strings.Split(res.Console, "\n") {
		if strings.Contains(l, "RESULT") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// TestScaleOut runs inside the VM: the scenario with sloppy_tcp on, then
// the negative control with it off.
func TestScaleOut(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestScaleOutVM")
	}
	start := time.Now()
	t.Run("ecmp", testECMP)
	t.Run("sync", testSync)
	t.Run("nosloppy", testNoSloppy)
	t.Logf("RESULT scenario time in the VM %v", time.Since(start).Round(time.Second))
}

func setup(t *testing.T, tag string, o Options) *Lab {
	t.Helper()
	l, err := New(tag, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range l.Directors {
				t.Logf("%s log:\n%s", d.Name, d.LogTail(30))
			}
			t.Logf("FRR log:\n%s", l.FRRLog())
		}
		l.Close()
	})
	if err := l.StartAll(); err != nil {
		t.Fatal(err)
	}
	took, err := l.WaitHops(t.Context(), Hops(1, 2, 3), 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT the router's route has the three directors as next hops %v after they started:\n    %s",
		took.Round(time.Millisecond), strings.ReplaceAll(l.IPRoute(), "\n", "\n    "))
	return l
}

func waitHops(t *testing.T, l *Lab, want string, timeout time.Duration) time.Duration {
	t.Helper()
	took, err := l.WaitHops(t.Context(), want, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return took
}

func talking(t *testing.T, flows []*connsync.Flow, min int) {
	t.Helper()
	if _, err := connsync.WaitFor(t.Context(), "every flow talking", 60*time.Second, func() error {
		if tl, errs := connsync.Count(flows); tl.Alive != len(flows) {
			return fmt.Errorf("%v: %v", tl, errs)
		}
		if p := connsync.Progress(flows); p < min {
			return fmt.Errorf("a flow has only %d echoes", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// goOn lets the flows talk for d and fails unless every one goes on: no
// reset, the same real server, new echoes.
func goOn(t *testing.T, what string, flows []*connsync.Flow, d time.Duration) {
	t.Helper()
	before := make([]int, len(flows))
	for i, f := range flows {
		before[i] = f.LinesSeen()
	}
	time.Sleep(d)
	tl, errs := connsync.Count(flows)
	if tl.Alive != len(flows) {
		t.Fatalf("%s: %v of %d connections; first errors: %s", what, tl, len(flows), strings.Join(errs, "; "))
	}
	for i, f := range flows {
		if n := f.LinesSeen(); n < before[i]+3 {
			t.Fatalf("%s: connection %v went from %d to %d echoes in %v: stalled", what, f.Local, before[i], n, d)
		}
	}
	t.Logf("RESULT %s: %d of %d connections go on with the same real server, no reset; longest pause between two echoes %v",
		what, tl.Alive, len(flows), connsync.Gaps(flows, true).Round(time.Millisecond))
}

// spread counts the client's connections on each director and on each
// real server, from the directors' IPVS tables.
func spread(t *testing.T, l *Lab) ([]int, map[string]int) {
	t.Helper()
	per := make([]int, len(l.Directors))
	webs := map[string]int{}
	for i := range l.Directors {
		n, w, err := l.Conns(i + 1)
		if err != nil {
			t.Fatal(err)
		}
		per[i] = n
		for k, v := range w {
			webs[k] += v
		}
	}
	return per, webs
}

func touch(t *testing.T, path string, exists bool) {
	t.Helper()
	var err error
	if exists {
		err = os.WriteFile(path, nil, 0o644)
	} else {
		err = os.Remove(path)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// waitWeight waits until every running director's IPVS has web at weight w.
func waitWeight(t *testing.T, l *Lab, dirs []int, web string, w int) {
	t.Helper()
	if _, err := connsync.WaitFor(t.Context(), fmt.Sprintf("%s at weight %d", web, w), 30*time.Second, func() error {
		for _, i := range dirs {
			ws, err := l.Weights(i)
			if err != nil {
				return err
			}
			if got, ok := ws[web]; !ok || got != w {
				return fmt.Errorf("d%d: %v", i, ws)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// testECMP is the scenario on one lab, in order: three next hops; the
// same flow through each director reaching the same real server; 200
// long-lived connections spread over the directors; a real server to
// weight 0 (every flow moved to one director meanwhile) and back; a
// director whose checks all fail withdrawing (and
// the router sending it nothing more); then one director's clean stop and
// another's SIGKILL, the connections going on through all of it.
func testECMP(t *testing.T) {
	l := setup(t, "e", Options{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for i := 1; i <= 3; i++ {
		if v, err := l.Sysctl(i, "net.ipv4.vs.sloppy_tcp"); err != nil || v != "1" {
			t.Fatalf("d%d: net.ipv4.vs.sloppy_tcp %q (%v), want 1", i, v, err)
		}
	}

	// The same 5-tuple through each director in turn: the router is made
	// to send the client's traffic to one director at a time. Directors
	// that added the webs in different orders differ on about 3 % of
	// the Maglev table's slots (three equal weights): enough flows to
	// hit some.
	const sameFlows = 150
	got := make([][3]string, sameFlows)
	servers := map[string]bool{}
	for i := 1; i <= 3; i++ {
		if err := l.PinVia(i); err != nil {
			t.Fatal(err)
		}
		names, err := onceAll(ctx, l, 20000, sameFlows) // below the ephemeral ports the flows take
		if err != nil {
			t.Fatalf("via d%d: %v", i, err)
		}
		es, err := lab.IPVSConns(l.Directors[i-1].Node.NS)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[uint16]bool{}
		for _, e := range es {
			if e.Client.Addr() == ClientAddr.Addr() {
				seen[e.Client.Port()] = true
			}
		}
		for k, name := range names {
			if !seen[uint16(20000+k)] {
				t.Fatalf("port %d: not in d%d's IPVS table: the flow did not go through it", 20000+k, i)
			}
			got[k][i-1] = name
		}
	}
	for k, g := range got {
		if g[0] != g[1] || g[1] != g[2] {
			t.Fatalf("port %d through d1, d2, d3 reached %v: not the same real server", 20000+k, g)
		}
		servers[g[0]] = true
	}
	if err := l.PinVia(0); err != nil {
		t.Fatal(err)
	}
	// Port hashing spreads flows over the webs: the assertion above is
	// not true merely because every flow lands on one server.
	if len(servers) < 2 {
		t.Fatalf("%d flows all on %v: the same-server assertion proves nothing", sameFlows, servers)
	}
	t.Logf("RESULT same flow: each of %d 5-tuples reached the same real server through d1, d2 and d3 (servers used: %v)",
		sameFlows, slices.Sorted(maps.Keys(servers)))

	flows, err := connsync.Open(ctx, l.Client, Target, Flows, FlowInterval)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, flows, 3)
	per, webs := spread(t, l)
	t.Logf("RESULT spread: %d connections, per director %v, per real server %v", Flows, per, webs)
	for i, n := range per {
		if n == 0 {
			t.Fatalf("no connection through d%d: ECMP does not spread (per director %v)", i+1, per)
		}
	}
	if sum := per[0] + per[1] + per[2]; sum != Flows {
		t.Fatalf("%d connections in the directors' tables, want %d; on several directors: %s", sum, Flows, l.Duplicates())
	}

	// web1 to weight 0 on every director and back: the others' flows go on.
	var others []*connsync.Flow
	for _, f := range flows {
		if f.RealServer() != "web1" {
			others = append(others, f)
		}
	}
	if len(others) == 0 || len(others) == len(flows) {
		t.Fatalf("%d of %d flows off web1: the weight test needs both kinds", len(others), len(flows))
	}
	touch(t, l.WebDownFile(1), true)
	waitWeight(t, l, []int{1, 2, 3}, "web1", 0)
	goOn(t, "web1 at weight 0: the flows on web2 and web3", others, 2*time.Second)
	// Now every flow through d1: those of d2 and d3 are scheduled afresh
	// there (sloppy_tcp) while web1 is at weight 0. It kept its slots in
	// the mh table, so the flows of web2 and web3 find their server
	// again; those of web1 fall back to another and are reset (the gap
	// the README names: a flow moving while the set changes).
	if err := l.PinVia(1); err != nil {
		t.Fatal(err)
	}
	goOn(t, "every flow moved to d1 with web1 at weight 0: the flows on web2 and web3", others, 2*time.Second)
	if err := l.PinVia(0); err != nil {
		t.Fatal(err)
	}
	tl, _ := connsync.Count(flows)
	t.Logf("RESULT every flow moved to d1 with web1 at weight 0: %v (the reset ones are web1's that moved)", tl)
	var alive []*connsync.Flow
	for _, f := range flows {
		if f.Broken() == nil {
			alive = append(alive, f)
		}
	}
	flows = alive
	touch(t, l.WebDownFile(1), false)
	waitWeight(t, l, []int{1, 2, 3}, "web1", 1)
	goOn(t, "web1 back to weight 1: all flows", flows, 2*time.Second)
	// Back to Flows connections for the rest.
	more, err := connsync.Open(ctx, l.Client, Target, Flows-len(flows), FlowInterval)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, more, 3)
	flows = append(flows, more...)

	// d3's checks all fail: it withdraws, the router sends it nothing.
	touch(t, l.DirectorDownFile(3), true)
	took := waitHops(t, l, Hops(1, 2), 30*time.Second)
	t.Logf("RESULT d3's real servers all failed: its route withdrawn %v after", took.Round(time.Millisecond))
	st, err := l.Directors[2].Status(ctx)
	if err != nil || st.BGP == nil || st.BGP.LastWithdraw == nil || !strings.HasPrefix(st.BGP.LastWithdraw.Reason, "quorum lost") {
		t.Fatalf("d3's status does not say it withdrew for quorum: %+v (%v)", st, err)
	}
	goOn(t, "d3 withdrawn (its flows moved to d1 and d2)", flows, 2*time.Second)
	// New connections, each looked up in the directors' connection
	// tables (the counters in ip_vs_stats lag by up to 2 s on this
	// kernel: its estimator refreshes them).
	if _, err := onceAll(ctx, l, 21000, 30); err != nil {
		t.Fatalf("new connections while d3 is withdrawn: %v", err)
	}
	on := map[uint16][]int{}
	for i := 1; i <= 3; i++ {
		es, err := lab.IPVSConns(l.Directors[i-1].Node.NS)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if p := e.Client.Port(); e.Client.Addr() == ClientAddr.Addr() && p >= 21000 && p < 21030 {
				on[p] = append(on[p], i)
			}
		}
	}
	for k := range 30 {
		if w := on[uint16(21000+k)]; len(w) != 1 || w[0] == 3 {
			t.Fatalf("new connection from port %d in the tables of directors %v, want one of d1 and d2", 21000+k, w)
		}
	}
	t.Logf("RESULT d3 withdrawn: 30 new connections, none through d3")
	touch(t, l.DirectorDownFile(3), false)
	waitHops(t, l, Hops(1, 2, 3), 30*time.Second)
	goOn(t, "d3 back", flows, 2*time.Second)

	// d1 stops cleanly: withdraw, drain, exit.
	l.Directors[0].Stop()
	waitHops(t, l, Hops(2, 3), 10*time.Second)
	goOn(t, "d1 stopped cleanly (SIGTERM)", flows, 3*time.Second)

	// d2 crashes: the kernel closes its BGP session, the router drops it.
	killed := time.Now()
	l.Directors[1].Kill()
	waitHops(t, l, Hops(3), 10*time.Second)
	t.Logf("RESULT d2 SIGKILLed: its route gone from the router %v after the kill", time.Since(killed).Round(time.Millisecond))
	goOn(t, "d2 killed (SIGKILL)", flows, 3*time.Second)
}

// testSync: with [sync] on every director and no instance (the master
// daemon runs all the time), each director holds the others' connections
// too. Then the step where testECMP sees web1's moved flows reset (web1 at
// weight 0, every flow moved to d1, whose Maglev table now sends web1's
// share elsewhere) keeps every flow, web1's included: d1 finds each one's
// synced entry, and so its real server, before the scheduler is asked.
func testSync(t *testing.T) {
	l := setup(t, "s", Options{Sync: true})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	flows, err := connsync.Open(ctx, l.Client, Target, Flows, FlowInterval)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, flows, 3)
	onWeb1 := 0
	for _, f := range flows {
		if f.RealServer() == "web1" {
			onWeb1++
		}
	}
	if onWeb1 == 0 {
		t.Fatalf("no flow on web1: the step proves nothing")
	}
	took, err := connsync.WaitFor(ctx, "every connection in d1's table", 30*time.Second, func() error {
		es, err := lab.IPVSConns(l.Directors[0].Node.NS)
		if err != nil {
			return err
		}
		have := map[netip.AddrPort]bool{}
		for _, e := range es {
			have[e.Client] = true
		}
		missing := 0
		for _, f := range flows {
			if !have[f.Local] {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d connections not in d1's table", missing, len(flows))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	per, _ := spread(t, l)
	t.Logf("RESULT [sync]: d1 holds all %d connections (through d1, d2, d3: %v) %v after they talked", len(flows), per, took.Round(time.Millisecond))
	touch(t, l.WebDownFile(1), true)
	waitWeight(t, l, []int{1, 2, 3}, "web1", 0)
	if err := l.PinVia(1); err != nil {
		t.Fatal(err)
	}
	goOn(t, fmt.Sprintf("[sync] on, web1 at weight 0, every flow moved to d1: all of them, the %d on web1 too", onWeb1), flows, 2*time.Second)
	if err := l.PinVia(0); err != nil {
		t.Fatal(err)
	}
}

// testNoSloppy: the same clean stop with sloppy_tcp = false resets the
// flows ECMP moves (the negative control of the no-reset assertions).
func testNoSloppy(t *testing.T) {
	l := setup(t, "n", Options{NoSloppy: true})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if v, err := l.Sysctl(1, "net.ipv4.vs.sloppy_tcp"); err != nil || v != "0" {
		t.Fatalf("d1: net.ipv4.vs.sloppy_tcp %q (%v), want 0", v, err)
	}
	flows, err := connsync.Open(ctx, l.Client, Target, Flows, FlowInterval)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, flows, 3)
	l.Directors[0].Stop()
	waitHops(t, l, Hops(2, 3), 10*time.Second)
	var tl connsync.Tally
	if _, err := connsync.WaitFor(ctx, "connections reset", 15*time.Second, func() error {
		tl, _ = connsync.Count(flows)
		if tl.Reset == 0 {
			return fmt.Errorf("%v", tl)
		}
		return nil
	}); err != nil {
		t.Fatalf("without sloppy_tcp no connection was reset by the clean stop: the no-reset assertions cannot fail: %v", err)
	}
	time.Sleep(2 * time.Second)
	tl, _ = connsync.Count(flows)
	t.Logf("RESULT negative control (sloppy_tcp = false), d1 stopped cleanly: %v of %d connections", tl, len(flows))
}

// onceAll runs Once for n client ports from base on, 16 at a time, and
// returns the real server each reached.
func onceAll(ctx context.Context, l *Lab, base, n int) ([]string, error) {
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for k := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			names[k], errs[k] = l.Once(ctx, uint16(base+k))
		}()
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("port %d: %w", base+k, err)
		}
	}
	return names, nil
}
