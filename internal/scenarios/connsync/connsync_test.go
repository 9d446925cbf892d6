package connsync

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/e2e"
	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// Flows is the number of long-lived connections of the failover proof. 200
// connections each sending a line every 100 ms is 2,000 echoes a second,
// which the VM's two emulated CPUs carry beside two directors.
const Flows = 200

// TestConnSyncVM builds lvsha, boots the VM and runs TestConnSync there.
func TestConnSyncVM(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "the VM scenario does not run with -short")
	}
	vmtest.Need(t)
	lvsha := filepath.Join(t.TempDir(), "lvsha")
	if err := e2e.BuildLvsha(t.Context(), lvsha); err != nil {
		t.Fatal(err)
	}
	res := vmtest.Run(t, "^TestConnSync$", vm.Options{Files: map[string]string{GuestLvsha: lvsha}, Timeout: 5 * time.Minute, CPUs: 2})
	for _, l := range strings.Split(res.Console, "\n") {
		if strings.Contains(l, "RESULT") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// TestConnSync runs inside the VM: the failover with sync, the same
// failover without it (the negative control), and persistence.
func TestConnSync(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestConnSyncVM")
	}
	t.Run("sync", testFailover)
	t.Run("nosync", testNoSync)
	t.Run("persistence", testPersistence)
}

func setup(t *testing.T, tag string, o Options) *Topology {
	t.Helper()
	o.Log = t.Logf
	topo, err := New(tag, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range []*Director{topo.D1, topo.D2} {
				t.Logf("%s log:\n%s", d.Name, d.LogTail(30))
			}
		}
		topo.Close()
	})
	if err := topo.D1.Start(); err != nil {
		t.Fatal(err)
	}
	if err := topo.D2.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.WaitRoles(t.Context(), topo.D1, topo.D2); err != nil {
		t.Fatal(err)
	}
	return topo
}

// talking waits until every flow has echoes from its real server.
func talking(t *testing.T, flows []*Flow, min int) {
	t.Helper()
	took, err := WaitFor(t.Context(), "every flow talking", 30*time.Second, func() error {
		if tl, errs := Count(flows); tl.Alive != len(flows) {
			return fmt.Errorf("%v: %v", tl, errs)
		}
		if p := Progress(flows); p < min {
			return fmt.Errorf("a flow has only %d echoes", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d flows talking (%d echoes each at least) %v after they were opened", len(flows), min, took.Round(time.Millisecond))
}

// goOn lets the flows talk for d and fails unless every one of them goes
// on: no reset, the same real server, new echoes. It reports the longest
// pause between two echoes of any flow since the last call.
func goOn(t *testing.T, what string, flows []*Flow, d time.Duration) {
	t.Helper()
	before := make([]int, len(flows))
	for i, f := range flows {
		before[i] = f.LinesSeen()
	}
	time.Sleep(d)
	tl, errs := Count(flows)
	if tl.Alive != len(flows) {
		t.Fatalf("%s: %v of %d connections; first errors: %s", what, tl, len(flows), strings.Join(errs, "; "))
	}
	for i, f := range flows {
		if n := f.LinesSeen(); n < before[i]+3 {
			t.Fatalf("%s: connection %v went from %d to %d echoes in %v: stalled", what, f.Local, before[i], n, d)
		}
	}
	t.Logf("RESULT %s: %d of %d connections go on with the same real server, no reset; longest pause between two echoes %v",
		what, tl.Alive, len(flows), Gaps(flows, true).Round(time.Millisecond))
}

func waitSynced(t *testing.T, d *Director, flows []*Flow) time.Duration {
	t.Helper()
	took, err := WaitFor(t.Context(), "the entries on "+d.Name, 30*time.Second, func() error {
		n, err := Synced(d.Node.NS, flows)
		if err == nil && n != len(flows) {
			err = fmt.Errorf("%d of %d entries", n, len(flows))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return took
}

func waitState(t *testing.T, d *Director, want string) time.Duration {
	t.Helper()
	took, err := WaitFor(t.Context(), d.Name+" "+want, 30*time.Second, func() error {
		s, _, err := d.State(t.Context())
		if err == nil && s != want {
			err = fmt.Errorf("%s", s)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return took
}

// testFailover: SIGKILL the master, then bring it back and let it preempt;
// every connection goes on through both, including connections opened
// while director2 was master (they reach director1 only through its backup
// daemon).
func testFailover(t *testing.T) {
	topo := setup(t, "s", Options{Sync: true})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	start := time.Now()
	flows, err := topo.Open(ctx, Flows, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections opened in %v", Flows, time.Since(start).Round(time.Millisecond))
	talking(t, flows, 5)
	took := waitSynced(t, topo.D2, flows)
	t.Logf("RESULT sync: %d entries on the backup %v after the last flow had 5 echoes", len(flows), took.Round(time.Millisecond))
	st, err := topo.D2.Status(ctx)
	if err != nil || st.Sync == nil || st.Sync.ConnEntries < len(flows) {
		t.Fatalf("director2 status sync %+v (%v), want at least %d connection entries", st.Sync, err, len(flows))
	}

	Gaps(flows, true)
	topo.D1.Kill()
	took = waitState(t, topo.D2, "MASTER")
	t.Logf("director2 MASTER %v after the SIGKILL", took.Round(time.Millisecond))
	goOn(t, "failover (SIGKILL of the master)", flows, 3*time.Second)

	// Connections that start on director2.
	more, err := topo.Open(ctx, Flows/4, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, more, 5)
	waitSynced(t, topo.D1, more) // the killed lvsha's kernel daemon still runs
	if err := topo.D1.Start(); err != nil {
		t.Fatal(err)
	}
	took, err = topo.WaitRoles(ctx, topo.D1, topo.D2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("director1 restarted and preempted in %v", took.Round(time.Millisecond))
	goOn(t, "failback (director1 restarted, preempts)", append(flows, more...), 3*time.Second)
}

// testNoSync: the same failover without [sync] resets the connections.
func testNoSync(t *testing.T) {
	topo := setup(t, "n", Options{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	flows, err := topo.Open(ctx, Flows, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, flows, 5)
	if n, err := Synced(topo.D2.Node.NS, flows); err != nil || n != 0 {
		t.Fatalf("without sync director2 has %d entries (%v)", n, err)
	}
	topo.D1.Kill()
	waitState(t, topo.D2, "MASTER")
	var tl Tally
	if _, err := WaitFor(ctx, "every connection reset", 15*time.Second, func() error {
		tl, _ = Count(flows)
		if tl.Reset != len(flows) {
			return fmt.Errorf("%v", tl)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT negative control (no sync): %v of %d connections", tl, len(flows))
}

// testPersistence: the persistence template reaches the backup, and a new
// connection of the client after the failover lands on the same real
// server (round robin would alternate).
func testPersistence(t *testing.T) {
	topo := setup(t, "p", Options{Sync: true, Persistence: 300 * time.Second})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	flows, err := topo.Open(ctx, 10, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, flows, 5)
	server := flows[0].RealServer()
	for _, f := range flows {
		if f.RealServer() != server {
			t.Fatalf("persistence: %v on %s, %v on %s", flows[0].Local, server, f.Local, f.RealServer())
		}
	}
	if _, err := WaitFor(ctx, "the template on director2", 30*time.Second, func() error {
		es, err := lab.IPVSConns(topo.D2.Node.NS)
		if err != nil {
			return err
		}
		for _, e := range es {
			if e.Template && e.Client.Addr() == lab.Client.Addr() && ServerName(e.Dest.Addr()) == server {
				return nil
			}
		}
		return fmt.Errorf("no template for %v -> %s in %v", lab.Client.Addr(), server, es)
	}); err != nil {
		t.Fatal(err)
	}
	topo.D1.Kill()
	waitState(t, topo.D2, "MASTER")
	// The client's ARP cache follows director2's gratuitous ARPs.
	time.Sleep(500 * time.Millisecond)
	more, err := topo.Open(ctx, 4, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	talking(t, more, 2)
	for _, f := range more {
		if f.RealServer() != server {
			t.Fatalf("a new connection after the failover went to %s, not %s", f.RealServer(), server)
		}
	}
	// They went through director2: its table has them.
	if n, err := Synced(topo.D2.Node.NS, more); err != nil || n != len(more) {
		t.Fatalf("director2 has %d of the %d new connections (%v)", n, len(more), err)
	}
	goOn(t, "persistence", append(flows, more...), time.Second)
	t.Logf("RESULT persistence: the template reached the backup; 4 new connections after the failover on %s", server)
}
