package lvs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

var (
	vip   = netip.MustParseAddrPort("192.168.94.200:80")
	web1  = netip.MustParseAddrPort("192.168.94.134:80")
	web2  = netip.MustParseAddrPort("192.168.94.135:80")
	sorry = netip.MustParseAddrPort("192.168.94.250:80")
	tcp80 = Key{Proto: TCP, Addr: vip}
)

func seed() Service {
	return Service{Key: tcp80, Scheduler: "rr", Forwarding: DR, Quorum: 1,
		Reals: []Real{{Addr: web1, Weight: 1, Up: true}, {Addr: web2, Weight: 1, Up: true}}}
}

// dump renders the fake's table in a stable form for comparisons.
func dump(f *Fake) string {
	var lines []string
	for _, s := range f.svcs {
		l := fmt.Sprintf("%v %s t=%d:", s.Key, s.Scheduler, s.Timeout)
		for _, d := range f.dests[s.Key] {
			l += fmt.Sprintf(" %v/%d/%v", d.Addr, d.Weight, d.Forwarding)
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func mustApply(t *testing.T, r *Reconciler, svcs ...Service) Report {
	t.Helper()
	rep, err := r.Apply(svcs)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return rep
}

func wantDump(t *testing.T, f *Fake, want string) {
	t.Helper()
	if got := dump(f); got != want {
		t.Fatalf("kernel table:\n%s\nwant:\n%s", got, want)
	}
}

func wantCalls(t *testing.T, f *Fake, want ...string) {
	t.Helper()
	if !slices.Equal(f.Calls, want) {
		t.Fatalf("calls:\n  %s\nwant:\n  %s", strings.Join(f.Calls, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestCreateFromEmpty(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	udp := seed()
	udp.Key = Key{Proto: UDP, Addr: netip.MustParseAddrPort("192.168.94.200:53")}
	udp.Persistence = 300 * time.Second
	udp.Forwarding = Tunnel
	rep := mustApply(t, r, seed(), udp)
	wantCalls(t, f, "Services",
		"NewService tcp/192.168.94.200:80", "NewDestination tcp/192.168.94.200:80 192.168.94.134:80", "NewDestination tcp/192.168.94.200:80 192.168.94.135:80",
		"NewService udp/192.168.94.200:53", "NewDestination udp/192.168.94.200:53 192.168.94.134:80", "NewDestination udp/192.168.94.200:53 192.168.94.135:80")
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/1/dr\n"+
		"udp/192.168.94.200:53 rr t=300: 192.168.94.134:80/1/tun 192.168.94.135:80/1/tun")
	if len(rep.Ops) != 6 || rep.Reads != 1 {
		t.Errorf("report %v", rep)
	}
	// Applying the same state again changes nothing and reads nothing.
	f.Reset()
	if rep := mustApply(t, r, seed(), udp); len(rep.Ops) != 0 || len(f.Calls) != 0 {
		t.Fatalf("idempotent apply made calls %v", f.Calls)
	}
}

func TestFWMarkAndEverySchedulerAccepted(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	var svcs []Service
	for i, s := range Schedulers {
		svcs = append(svcs, Service{Key: Key{FWMark: uint32(i + 1)}, Scheduler: s, Reals: []Real{{Addr: web1, Weight: 1, Up: true}}})
	}
	mustApply(t, r, svcs...)
	if len(f.svcs) != len(Schedulers) {
		t.Fatalf("%d services", len(f.svcs))
	}
	if f.svcs[0].Key.String() != "fwmark/1" {
		t.Fatalf("key %v", f.svcs[0].Key)
	}
}

// Every single change of a reload is exactly one kernel call, with no reads.
func TestReloadOneChangeOneCall(t *testing.T) {
	web3 := netip.MustParseAddrPort("192.168.94.136:80")
	cases := []struct {
		name   string
		change func(*Service)
		call   string
	}{
		{"weight", func(s *Service) { s.Reals[1].Weight = 5 }, "UpdateDestination tcp/192.168.94.200:80 192.168.94.135:80"},
		{"down (inhibit)", func(s *Service) { s.Reals[0].Up = false }, "UpdateDestination tcp/192.168.94.200:80 192.168.94.134:80"},
		{"down (remove)", func(s *Service) { s.OnFailure = Remove; s.Reals[0].Up = false }, "DelDestination tcp/192.168.94.200:80 192.168.94.134:80"},
		{"remove real", func(s *Service) { s.Reals = s.Reals[1:] }, "DelDestination tcp/192.168.94.200:80 192.168.94.134:80"},
		{"add real", func(s *Service) { s.Reals = append(s.Reals, Real{Addr: web3, Weight: 1, Up: true}) }, "NewDestination tcp/192.168.94.200:80 192.168.94.136:80"},
		{"scheduler", func(s *Service) { s.Scheduler = "wlc" }, "UpdateService tcp/192.168.94.200:80"},
		{"persistence", func(s *Service) { s.Persistence = time.Minute }, "UpdateService tcp/192.168.94.200:80"},
		{"remove service", nil, "DelService tcp/192.168.94.200:80"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := NewFake()
			r := NewReconciler(f, nil)
			other := seed()
			other.Key = Key{Proto: TCP, Addr: netip.MustParseAddrPort("192.168.94.201:443")}
			mustApply(t, r, seed(), other)
			f.Reset()
			s := seed()
			desired := []Service{other}
			if c.change != nil {
				c.change(&s)
				desired = append(desired, s)
			}
			mustApply(t, r, desired...)
			wantCalls(t, f, c.call)
		})
	}
}

func TestDownUpInhibit(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	s := seed()
	s.Reals[0].Weight = 3
	mustApply(t, r, s)
	s.Reals[0].Up = false
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/0/dr 192.168.94.135:80/1/dr")
	s.Reals[0].Up = true
	mustApply(t, r, s)
	// Back to its configured weight, and still DR: the forwarding flag is
	// passed on every update.
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/3/dr 192.168.94.135:80/1/dr")
}

func TestDownUpRemove(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	s := seed()
	s.OnFailure = Remove
	s.Forwarding = Tunnel
	mustApply(t, r, s)
	s.Reals[1].Up = false
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/tun")
	s.Reals[1].Up = true
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/tun 192.168.94.135:80/1/tun")
}

func TestForwardingChange(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	s := seed()
	mustApply(t, r, s)
	s.Forwarding = NAT
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/nat 192.168.94.135:80/1/nat")
}

func TestQuorumSorryServer(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	s := seed()
	s.Reals[0].Weight, s.Reals[1].Weight = 2, 2
	s.Quorum = 3
	s.Sorry = sorry
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/2/dr 192.168.94.135:80/2/dr")

	s.Reals[0].Up = false // live weight 2 < quorum 3
	f.Reset()
	rep := mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.250:80/1/dr")
	// The sorry server is added before the real servers go: no moment
	// without any destination.
	if !strings.HasPrefix(f.Calls[0], "NewDestination") {
		t.Errorf("calls %v: sorry server not added first", f.Calls)
	}
	if !slices.Equal(rep.QuorumLost, []Key{tcp80}) {
		t.Errorf("QuorumLost %v", rep.QuorumLost)
	}

	s.Reals[0].Up = true
	rep = mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/2/dr 192.168.94.135:80/2/dr")
	if len(rep.QuorumLost) != 0 {
		t.Errorf("QuorumLost %v after regain", rep.QuorumLost)
	}

	// Without a sorry server, losing quorum changes nothing but weights.
	s.Sorry = netip.AddrPort{}
	s.Reals[0].Up = false
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/0/dr 192.168.94.135:80/2/dr")
}

func foreignFake() *Fake {
	f := NewFake()
	fk := Key{Proto: TCP, Addr: netip.MustParseAddrPort("10.0.0.1:443")}
	f.svcs = append(f.svcs, KService{Key: fk, Scheduler: "wlc"})
	f.dests[fk] = []KDest{{Addr: netip.MustParseAddrPort("10.0.0.2:443"), Weight: 7, Forwarding: NAT}}
	return f
}

func TestForeignServicesUntouched(t *testing.T) {
	f := foreignFake()
	before := dump(f)
	r := NewReconciler(f, nil)
	mustApply(t, r, seed())
	mustApply(t, r) // our service leaves the config: deleted
	if _, err := r.Repair(); err != nil {
		t.Fatal(err)
	}
	wantDump(t, f, before)
	for _, c := range f.Calls {
		if strings.Contains(c, "10.0.0.1") {
			t.Errorf("foreign service touched or read: %s", c)
		}
	}
}

func TestAdoptExistingService(t *testing.T) {
	// A service of ours left in the kernel by an earlier run, with a stale
	// real server and a wrong weight: adopted and corrected in place.
	f := NewFake()
	f.svcs = append(f.svcs, KService{Key: tcp80, Scheduler: "rr"})
	f.dests[tcp80] = []KDest{{Addr: web1, Weight: 9, Forwarding: DR}, {Addr: netip.MustParseAddrPort("192.168.94.99:80"), Weight: 1}}
	r := NewReconciler(f, nil)
	mustApply(t, r, seed())
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/1/dr")
	if slices.Contains(f.Calls, "NewService tcp/192.168.94.200:80") || slices.Contains(f.Calls, "DelService tcp/192.168.94.200:80") {
		t.Errorf("service recreated: %v", f.Calls)
	}
}

func TestDriftRepaired(t *testing.T) {
	f := foreignFake()
	r := NewReconciler(f, nil)
	udp := seed()
	udp.Key = Key{Proto: UDP, Addr: vip}
	mustApply(t, r, seed(), udp)
	want := dump(f)
	// Someone deletes our TCP service and tampers with the UDP one.
	f.DelService(tcp80)
	f.UpdateDestination(udp.Key, KDest{Addr: web1, Weight: 1, Forwarding: NAT})
	f.NewDestination(udp.Key, KDest{Addr: sorry, Weight: 1})
	rep, err := r.Repair()
	if err != nil {
		t.Fatal(err)
	}
	wantDump(t, f, want)
	var got []string
	for _, op := range rep.Ops {
		got = append(got, op.Kind.String())
	}
	if !slices.Equal(got, []string{"add-service", "add-dest", "add-dest", "update-dest", "del-dest"}) {
		t.Fatalf("repair ops %v", rep)
	}
}

// A cache gone stale (drift not yet repaired) must not wedge Apply: the
// failed call makes it re-read the kernel and converge.
func TestStaleCacheRetried(t *testing.T) {
	f := NewFake()
	r := NewReconciler(f, nil)
	s := seed()
	mustApply(t, r, s)
	f.DelDestination(tcp80, web2)
	f.Reset()
	s.Reals[1].Weight = 4
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/4/dr")
	wantCalls(t, f, "UpdateDestination tcp/192.168.94.200:80 192.168.94.135:80",
		"Services", "Destinations tcp/192.168.94.200:80", "NewDestination tcp/192.168.94.200:80 192.168.94.135:80")
}

func TestErrorsReported(t *testing.T) {
	f := NewFake()
	f.Fail = func(c string) error {
		if strings.HasPrefix(c, "NewDestination") && strings.Contains(c, "135") {
			return syscall.EINVAL
		}
		return nil
	}
	r := NewReconciler(f, nil)
	_, err := r.Apply([]Service{seed()})
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "192.168.94.135:80") {
		t.Fatalf("err = %v", err)
	}
	// The other real server was still added.
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr")
}

func TestInvalidDesiredChangesNothing(t *testing.T) {
	bad := []func(*Service){
		func(s *Service) { s.Scheduler = "roundrobin" },
		func(s *Service) { s.Reals[1].Addr = s.Reals[0].Addr },
		func(s *Service) { s.Reals[0].Weight = -1 },
		func(s *Service) { s.Key.Proto = 0 },
		func(s *Service) { s.Key.FWMark = 3 },
		func(s *Service) { s.Persistence = 1500 * time.Millisecond },
	}
	for i, b := range bad {
		f := NewFake()
		s := seed()
		b(&s)
		if _, err := NewReconciler(f, nil).Apply([]Service{s}); err == nil || len(f.Calls) != 0 {
			t.Errorf("case %d: err %v, calls %v", i, err, f.Calls)
		}
	}
	f := NewFake()
	if _, err := NewReconciler(f, nil).Apply([]Service{seed(), seed()}); err == nil || len(f.Calls) != 0 {
		t.Errorf("duplicate key: err %v, calls %v", err, f.Calls)
	}
}

func TestSnapshotFormat(t *testing.T) {
	f := foreignFake()
	r := NewReconciler(f, nil)
	s := seed()
	s.Persistence = 300 * time.Second
	mustApply(t, r, s)
	f.dests[tcp80][0].ActiveConns = 4
	snap, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := snap.Format(&b); err != nil {
		t.Fatal(err)
	}
	want := `Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.1:443 wlc foreign
  -> 10.0.0.2:443                 Masq    7      0          0
TCP  192.168.94.200:80 rr persistent 300
  -> 192.168.94.134:80            Route   1      4          0
  -> 192.168.94.135:80            Route   1      0          0
`
	if got := b.String(); got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}

// The loop repairs drift on its own, on its interval, and logs it.
func TestLoopRepairsDrift(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake()
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		l := NewLoop(NewReconciler(f, log), 10*time.Second, log)
		var repairs []Report
		l.OnRepair = func(rep Report, err error) {
			if err != nil {
				t.Errorf("repair: %v", err)
			}
			repairs = append(repairs, rep)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- l.Run(ctx) }()
		if _, err := l.Apply(ctx, []Service{seed()}); err != nil {
			t.Fatal(err)
		}
		// The fake is read and changed on the loop's goroutine only, like
		// any kernel handle.
		var want string
		l.do(ctx, func() { want = dump(f) })
		// `ipvsadm -C`, done on the loop's goroutine like any kernel access.
		l.do(ctx, func() { f.DelService(tcp80) })
		time.Sleep(9 * time.Second)
		synctest.Wait()
		var got string
		l.do(ctx, func() { got = dump(f) })
		if got == want {
			t.Fatal("repaired before the interval")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		l.do(ctx, func() { got = dump(f) })
		if got != want {
			t.Fatalf("not repaired:\n%s", got)
		}
		if !strings.Contains(logs.String(), "repaired drift") || !strings.Contains(logs.String(), "add-service tcp/192.168.94.200:80") {
			t.Errorf("repair not logged:\n%s", logs.String())
		}
		var nops int
		l.do(ctx, func() { nops = len(repairs[len(repairs)-1].Ops) })
		if nops != 3 {
			t.Errorf("OnRepair saw %d changes, want 3", nops)
		}
		snap, err := l.Snapshot(ctx)
		if err != nil || len(snap.Services) != 1 || !snap.Services[0].Owned {
			t.Errorf("snapshot %+v %v", snap, err)
		}
		cancel()
		<-done
		if _, err := l.Apply(ctx, nil); err == nil {
			t.Error("Apply on a stopped loop succeeded")
		}
	})
}

func TestParseKey(t *testing.T) {
	for _, s := range []string{"tcp/192.168.94.200:80", "udp/10.0.0.1:53", "fwmark/7", "tcp/[2001:db8::1]:443"} {
		k, err := ParseKey(s)
		if err != nil || k.String() != s {
			t.Errorf("%s: %v %v", s, k, err)
		}
	}
	for _, s := range []string{"", "tcp", "sctp/1.2.3.4:5", "tcp/1.2.3.4", "fwmark/0", "fwmark/x"} {
		if _, err := ParseKey(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// A service removed from the config while lvsha was stopped is still
// deleted by the next run, thanks to the owned-services file.
func TestPersistOwned(t *testing.T) {
	f := foreignFake()
	state := t.TempDir() + "/run/ipvs-owned"
	r := NewReconciler(f, nil)
	if err := r.PersistOwned(state); err != nil {
		t.Fatal(err)
	}
	udp := seed()
	udp.Key = Key{Proto: UDP, Addr: vip}
	mustApply(t, r, seed(), udp)

	r2 := NewReconciler(f, nil) // the next run, whose config lost udp
	if err := r2.PersistOwned(state); err != nil {
		t.Fatal(err)
	}
	if !r2.Owned(udp.Key) || !r2.Owned(tcp80) {
		t.Fatalf("owned after restart: %v", r2.OwnedKeys())
	}
	mustApply(t, r2, seed())
	wantDump(t, f, "tcp/10.0.0.1:443 wlc t=0: 10.0.0.2:443/7/nat\n"+
		"tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/1/dr")
	r3 := NewReconciler(f, nil)
	if err := r3.PersistOwned(state); err != nil {
		t.Fatal(err)
	}
	if got := keyStrings(r3.OwnedKeys()); !slices.Equal(got, []string{"tcp/192.168.94.200:80"}) {
		t.Fatalf("state file holds %v", got)
	}
}

// The batched path (Batcher) gives the same table and the same report as
// one call per change; a failed change in a batch fails only itself.
func TestBatchedWrites(t *testing.T) {
	f := NewFake()
	c := &Counting{Kernel: f}
	r := NewReconciler(c, nil)
	s := seed()
	s.Quorum, s.Sorry = 2, sorry
	rep := mustApply(t, r, s)
	if c.Batches != 1 || c.Writes != 3 || len(rep.Ops) != 3 {
		t.Fatalf("batches %d writes %d report %v", c.Batches, c.Writes, rep)
	}
	s.Reals[0].Up = false
	mustApply(t, r, s)
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.250:80/1/dr")
	if c.Batches != 2 {
		t.Fatalf("quorum loss took %d batches, want 1", c.Batches-1)
	}
	f.Fail = func(call string) error {
		if strings.Contains(call, "NewDestination") && strings.Contains(call, "134") {
			return syscall.EINVAL
		}
		return nil
	}
	s.Reals[0].Up = true
	_, err := r.Apply([]Service{s})
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("err %v", err)
	}
	wantDump(t, f, "tcp/192.168.94.200:80 rr t=0: 192.168.94.135:80/1/dr")
}
