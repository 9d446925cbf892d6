package natsync

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/scenarios/e2e"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// TestNATSyncVM builds lvsha, boots the VM and runs TestNATSync there.
// Under `make test` (LVSHA_STRICT=1) a missing qemu or kernel is a failure.
func TestNATSyncVM(t *testing.T) {
	if testing.Short() {
		testutil.Unavailable(t, "the VM scenario does not run with -short")
	}
	vmtest.Need(t)
	lvsha := filepath.Join(t.TempDir(), "lvsha")
	if err := e2e.BuildLvsha(t.Context(), lvsha); err != nil {
		t.Fatal(err)
	}
	res := vmtest.Run(t, "^TestNATSync$", vm.Options{Files: map[string]string{GuestLvsha: lvsha}, Timeout: 4 * time.Minute, CPUs: 2})
	for _, l := range strings.Split(res.Console, "\n") {
		if strings.Contains(l, "RESULT") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// TestNATSync runs inside the VM: failovers on either side with the sync
// group, and the inside failure without it (the negative control).
func TestNATSync(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestNATSyncVM")
	}
	t.Run("group", testGroup)
	t.Run("preempt", testPreempt)
	t.Run("nogroup", testNoGroup)
}

// timeout bounds one request: a failed one must not stall the polls.
const timeout = 2 * time.Second

// setup builds the lab and starts director1, then director2 once director1
// is master of both instances (without preemption the first master stays).
func setup(t *testing.T, tag string, o Options) *Topology {
	t.Helper()
	topo, err := New(tag, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range topo.D {
				t.Logf("%s log:\n%s", d.Name, d.LogTail(40))
			}
		}
		topo.Close()
	})
	ctx := t.Context()
	if err := topo.D[0].Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitFor(ctx, "director1 MASTER", 30*time.Second, func() error {
		s, err := topo.D[0].States(ctx)
		if err == nil && s != "outside=MASTER inside=MASTER" {
			err = fmt.Errorf("%s", s)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := topo.D[1].Start(); err != nil {
		t.Fatal(err)
	}
	waitStates(t, topo, Want("MASTER", "MASTER", "BACKUP", "BACKUP"))
	answered(t, topo, "start")
	announced(t, topo, topo.D[0])
	return topo
}

func waitStates(t *testing.T, topo *Topology, want string) time.Duration {
	t.Helper()
	took, err := topo.WaitStates(t.Context(), want)
	if err != nil {
		t.Fatal(err)
	}
	return took
}

// answered waits until requests through the VIP are answered by both web
// servers, and returns how long that took.
func answered(t *testing.T, topo *Topology, what string) time.Duration {
	t.Helper()
	took, err := WaitFor(t.Context(), what+": requests answered by web1 and web2", 30*time.Second, func() error {
		return topo.Answered(t.Context(), 4, timeout)
	})
	if err != nil {
		t.Fatal(err)
	}
	return took
}

// announced waits until the client and the web servers have the VIPs at
// d's MACs: d's gratuitous ARPs reached them.
func announced(t *testing.T, topo *Topology, d *Director) {
	t.Helper()
	if _, err := WaitFor(t.Context(), "the VIPs at "+d.Name+"'s MACs", 3*time.Second, func() error {
		return topo.Announced(d)
	}); err != nil {
		t.Fatal(err)
	}
}

// testGroup: director1's outside cable is pulled: both instances move to
// director2 and requests are answered through it; the cable back, director1
// stays BACKUP (no preemption); director2's inside cable is pulled: both
// move back to director1.
func testGroup(t *testing.T) {
	topo := setup(t, "g", Options{SyncGroup: true})
	ctx := t.Context()

	start := time.Now()
	if err := topo.Unplug(0, "outside", true); err != nil {
		t.Fatal(err)
	}
	moved := waitStates(t, topo, Want("FAULT", "FAULT", "MASTER", "MASTER"))
	announced(t, topo, topo.D[1])
	answered(t, topo, "after the outside failure")
	t.Logf("RESULT outside failure (director1's outside cable pulled): both instances MASTER on director2 %v later, requests answered by web1 and web2 %v later",
		moved.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	if err := topo.Unplug(0, "outside", false); err != nil {
		t.Fatal(err)
	}
	waitStates(t, topo, Want("BACKUP", "BACKUP", "MASTER", "MASTER"))
	answered(t, topo, "director1's cable back")

	start = time.Now()
	if err := topo.Unplug(1, "inside", true); err != nil {
		t.Fatal(err)
	}
	moved = waitStates(t, topo, Want("MASTER", "MASTER", "FAULT", "FAULT"))
	announced(t, topo, topo.D[0])
	answered(t, topo, "after the inside failure")
	t.Logf("RESULT inside failure (director2's inside cable pulled): both instances MASTER on director1 %v later, requests answered by web1 and web2 %v later",
		moved.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	st, err := topo.D[1].Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.SyncGroups) != 1 || st.SyncGroups[0].State != "FAULT" {
		t.Errorf("director2's sync groups %+v, want NAT FAULT", st.SyncGroups)
	}
}

// testPreempt: with preemption, director1's inside cable pulled moves both
// instances to director2, and the cable back, director1 (the higher
// priority) takes both back.
func testPreempt(t *testing.T) {
	topo := setup(t, "p", Options{SyncGroup: true, Preempt: true})
	start := time.Now()
	if err := topo.Unplug(0, "inside", true); err != nil {
		t.Fatal(err)
	}
	moved := waitStates(t, topo, Want("FAULT", "FAULT", "MASTER", "MASTER"))
	announced(t, topo, topo.D[1])
	answered(t, topo, "after the inside failure")
	t.Logf("RESULT preempt, inside failure (director1's inside cable pulled): both instances MASTER on director2 %v later, requests answered %v later",
		moved.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := topo.Unplug(0, "inside", false); err != nil {
		t.Fatal(err)
	}
	moved = waitStates(t, topo, Want("MASTER", "MASTER", "BACKUP", "BACKUP"))
	announced(t, topo, topo.D[0])
	answered(t, topo, "after the failback")
	t.Logf("RESULT preempt, failback (the cable back): both instances MASTER on director1 %v later, requests answered %v later",
		moved.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// testNoGroup: without the sync group, director1's inside cable pulled
// splits the instances (the outside VIP stays on director1, the gateway
// moves to director2) and requests fail.
func testNoGroup(t *testing.T) {
	topo := setup(t, "n", Options{})
	ctx := t.Context()
	if err := topo.Unplug(0, "inside", true); err != nil {
		t.Fatal(err)
	}
	split := Want("MASTER", "FAULT", "BACKUP", "MASTER")
	waitStates(t, topo, split)
	const n = 3
	for i := range n {
		if body, err := topo.Get(ctx, timeout); err == nil {
			t.Fatalf("request %d of the split answered (%q)", i+1, body)
		}
	}
	if got, err := topo.States(ctx); err != nil || got != split {
		t.Fatalf("states after the requests: %s (%v), want still %s", got, err, split)
	}
	t.Logf("RESULT negative control (no sync group): director1's inside cable pulled: the instances split (%s) and %d of %d requests failed", split, n, n)
}
