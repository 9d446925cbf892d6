package lvs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

// Sequences of changes are transcripts (testdata/*.txt, transcript_test.go);
// the tests here are tables and the things a transcript cannot show.

func wantCalls(t *testing.T, f *lvstest.Table, want ...string) {
	t.Helper()
	if got := f.Calls(); !slices.Equal(got, want) {
		t.Fatalf("calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestFWMarkAndEverySchedulerAccepted(t *testing.T) {
	f, r := newReconciler(t)
	var svcs []lvs.Service
	for i, s := range lvs.Schedulers {
		svcs = append(svcs, lvs.Service{Key: lvs.Key{FWMark: uint32(i + 1)}, Scheduler: s, Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}}})
	}
	mustApply(t, r, svcs...)
	es := f.Entries()
	if len(es) != len(lvs.Schedulers) {
		t.Fatalf("%d services", len(es))
	}
	for i, e := range es {
		if e.Service.Key.String() != fmt.Sprintf("fwmark/%d", i+1) || e.Service.Scheduler != lvs.Schedulers[i] {
			t.Errorf("service %d: %+v", i, e.Service)
		}
	}
}

// Every single change of a reload is exactly one request, in one sendmsg,
// with no reads.
func TestReloadOneChangeOneCall(t *testing.T) {
	web3 := netip.MustParseAddrPort("192.168.94.136:80")
	cases := []struct {
		name   string
		change func(*lvs.Service)
		call   string
	}{
		{"weight", func(s *lvs.Service) { s.Reals[1].Weight = 5 }, "UpdateDestination tcp/192.168.94.200:80 192.168.94.135:80 weight=5 dr"},
		{"down (inhibit)", func(s *lvs.Service) { s.Reals[0].Up = false }, "UpdateDestination tcp/192.168.94.200:80 192.168.94.134:80 weight=0 dr"},
		{"down (remove)", func(s *lvs.Service) { s.OnFailure = lvs.Remove; s.Reals[0].Up = false }, "DelDestination tcp/192.168.94.200:80 192.168.94.134:80"},
		{"remove real", func(s *lvs.Service) { s.Reals = s.Reals[1:] }, "DelDestination tcp/192.168.94.200:80 192.168.94.134:80"},
		{"add real", func(s *lvs.Service) { s.Reals = append(s.Reals, lvs.Real{Addr: web3, Weight: 1, Up: true}) }, "NewDestination tcp/192.168.94.200:80 192.168.94.136:80 weight=1 dr"},
		{"scheduler", func(s *lvs.Service) { s.Scheduler = "wlc" }, "UpdateService tcp/192.168.94.200:80 wlc timeout=0"},
		{"persistence", func(s *lvs.Service) { s.Persistence = time.Minute }, "UpdateService tcp/192.168.94.200:80 rr timeout=60"},
		{"remove service", nil, "DelService tcp/192.168.94.200:80"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, r := newReconciler(t)
			other := seed()
			other.Key = lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("192.168.94.201:443")}
			mustApply(t, r, seed(), other)
			f.Reset()
			s := seed()
			desired := []lvs.Service{other}
			if c.change != nil {
				c.change(&s)
				desired = append(desired, s)
			}
			mustApply(t, r, desired...)
			wantCalls(t, f, c.call)
			if !slices.Equal(f.Sends(), []int{1}) {
				t.Errorf("sendmsg calls %v, want one of one request", f.Sends())
			}
		})
	}
}

// Changes go BatchMax to a sendmsg, in order, and each gets its own ack: a
// change refused in the middle of the second batch fails only itself.
func TestBatching(t *testing.T) {
	f, r := newReconciler(t)
	svcs := benchTable(10, 29) // 10 + 290 changes
	bad := svcs[5].Reals[17].Addr
	f.SetFail(func(call string) error {
		if strings.HasPrefix(call, "NewDestination") && strings.Contains(call, " "+bad.String()+" ") {
			return syscall.EINVAL
		}
		return nil
	})
	rep, err := r.Apply(svcs)
	if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "add-dest "+svcs[5].Key.String()+" -> "+bad.String()+" ") {
		t.Fatalf("err = %v", err)
	}
	// Two tries (the failure makes it re-read and try once more): the
	// first writes all 300 changes, the second only the refused one.
	if got := f.Sends(); !slices.Equal(got, []int{lvs.BatchMax, lvs.BatchMax, 300 - 2*lvs.BatchMax, 1}) {
		t.Errorf("requests per sendmsg %v", got)
	}
	if len(rep.Ops) != 299 {
		t.Errorf("%d changes reported, want 299", len(rep.Ops))
	}
	// The kernel saw the changes in the order planned.
	var i int
	for _, c := range f.Calls() {
		if !strings.HasPrefix(c, "NewDestination") {
			continue
		}
		s, d := i/29, i%29
		want := fmt.Sprintf("NewDestination %v %v weight=1 dr", svcs[s].Key, svcs[s].Reals[d].Addr)
		if c != want {
			t.Fatalf("request %d: %q, want %q", i, c, want)
		}
		if i++; i == len(svcs)*29 {
			break
		}
	}
	f.SetFail(nil)
	f.Reset()
	if rep := mustApply(t, r, svcs...); len(rep.Ops) != 1 || !slices.Equal(f.Sends(), []int{1}) {
		t.Fatalf("retry: %v, sends %v", rep, f.Sends())
	}
	if n := strings.Count(f.Dump(), " 10.2."); n != 290 {
		t.Fatalf("%d real servers in the table, want 290", n)
	}
}

// A batch also ends when its messages pass 48 KiB, so the kernel's acks fit
// the receive buffer. Changes that big never come from the reconciler (it
// validates scheduler names), so this writes through the kernel directly.
func TestBatchByteLimit(t *testing.T) {
	f, k := lvstest.New(t)
	const n = 100
	cs := make([]lvs.Change, n)
	for i := range cs {
		key := lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 80)}
		cs[i] = lvs.Change{Kind: lvs.OpNewService, Service: lvs.KService{Key: key, Scheduler: strings.Repeat("x", 1000)}}
	}
	errs := k.Write(cs)
	for i, err := range errs {
		if !errors.Is(err, syscall.ENOENT) { // no such scheduler
			t.Fatalf("change %d: %v", i, err)
		}
	}
	sends, total := f.Sends(), 0
	for _, s := range sends {
		total += s
	}
	// 1,092 bytes a message: 45 of them are still under 48 KiB, so one
	// more goes in, and the batch is full.
	if total != n || !slices.Equal(sends, []int{46, 46, 8}) {
		t.Fatalf("requests per sendmsg %v", sends)
	}
}

// Lost acks leave the outcome unknown: each unacked change is reported
// failed, and the reconciler re-reads the kernel to find out.
func TestLostAcks(t *testing.T) {
	f, k := lvstest.New(t)
	f.LoseAcks(true)
	errs := k.Write([]lvs.Change{{Kind: lvs.OpNewService, Service: lvs.KService{Key: tcp80, Scheduler: "rr"}},
		{Kind: lvs.OpNewDest, Service: lvs.KService{Key: tcp80}, Dest: lvs.KDest{Addr: web1, Weight: 1}}})
	for i, err := range errs {
		if !errors.Is(err, syscall.EAGAIN) || !strings.Contains(err.Error(), "netlink ack") {
			t.Errorf("change %d: %v", i, err)
		}
	}
	drift(t, f, lvs.Change{Kind: lvs.OpDelService, Service: lvs.KService{Key: tcp80}})

	r := lvs.NewReconciler(k, nil)
	f.Reset()
	rep, err := r.Apply([]lvs.Service{seed()})
	// The changes were made: the re-read finds nothing left to do.
	if err != nil || len(rep.Ops) != 0 || rep.Reads != 3 || !slices.Equal(f.Sends(), []int{3}) {
		t.Fatalf("apply with lost acks: %v %v, sends %v", rep, err, f.Sends())
	}
	f.LoseAcks(false)
	want := "tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/1/dr"
	if got := f.Dump(); got != want {
		t.Fatalf("table %q, want %q", got, want)
	}
	f.Reset()
	if rep := mustApply(t, r, seed()); len(rep.Ops) != 0 || len(f.Calls()) != 0 {
		t.Fatalf("the cache was not rebuilt: %v, calls %v", rep, f.Calls())
	}
}

func TestInvalidDesiredChangesNothing(t *testing.T) {
	bad := []func(*lvs.Service){
		func(s *lvs.Service) { s.Scheduler = "roundrobin" },
		func(s *lvs.Service) { s.Reals[1].Addr = s.Reals[0].Addr },
		func(s *lvs.Service) { s.Reals[0].Weight = -1 },
		func(s *lvs.Service) { s.Key.Proto = 0 },
		func(s *lvs.Service) { s.Key.FWMark = 3 },
		func(s *lvs.Service) { s.Persistence = 1500 * time.Millisecond },
	}
	for i, b := range bad {
		f, r := newReconciler(t)
		s := seed()
		b(&s)
		if _, err := r.Apply([]lvs.Service{s}); err == nil || len(f.Calls()) != 0 {
			t.Errorf("case %d: err %v, calls %v", i, err, f.Calls())
		}
	}
	f, r := newReconciler(t)
	if _, err := r.Apply([]lvs.Service{seed(), seed()}); err == nil || len(f.Calls()) != 0 {
		t.Errorf("duplicate key: err %v, calls %v", err, f.Calls())
	}
}

// The loop repairs drift on its own, on its interval, and logs it.
func TestLoopRepairsDrift(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := lvstest.New(t)
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		l := lvs.NewLoop(lvs.NewReconciler(k, log), 10*time.Second, log)
		var mu sync.Mutex
		var repairs []lvs.Report
		l.OnRepair = func(rep lvs.Report, err error) {
			if err != nil {
				t.Errorf("repair: %v", err)
			}
			mu.Lock()
			repairs = append(repairs, rep)
			mu.Unlock()
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- l.Run(ctx) }()
		if _, err := l.Apply(ctx, []lvs.Service{seed()}); err != nil {
			t.Fatal(err)
		}
		want := f.Dump()
		// `ipvsadm -C` of our service.
		drift(t, f, lvs.Change{Kind: lvs.OpDelService, Service: lvs.KService{Key: tcp80}})
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if f.Dump() == want {
			t.Fatal("repaired before the interval")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := f.Dump(); got != want {
			t.Fatalf("not repaired:\n%s", got)
		}
		if !strings.Contains(logs.String(), "repaired drift") || !strings.Contains(logs.String(), "add-service tcp/192.168.94.200:80") {
			t.Errorf("repair not logged:\n%s", logs.String())
		}
		mu.Lock()
		nops := len(repairs[len(repairs)-1].Ops)
		mu.Unlock()
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
		k, err := lvs.ParseKey(s)
		if err != nil || k.String() != s {
			t.Errorf("%s: %v %v", s, k, err)
		}
	}
	for _, s := range []string{"", "tcp", "sctp/1.2.3.4:5", "tcp/1.2.3.4", "fwmark/0", "fwmark/x"} {
		if _, err := lvs.ParseKey(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func foreignService(t *testing.T, f *lvstest.Table) {
	fk := lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("10.0.0.1:443")}
	drift(t, f, lvs.Change{Kind: lvs.OpNewService, Service: lvs.KService{Key: fk, Scheduler: "wlc"}},
		lvs.Change{Kind: lvs.OpNewDest, Service: lvs.KService{Key: fk}, Dest: lvs.KDest{Addr: netip.MustParseAddrPort("10.0.0.2:443"), Weight: 7, Forwarding: lvs.NAT}})
}

// A service removed from the config while lvsha was stopped is still
// deleted by the next run, thanks to the owned-services file.
func TestPersistOwned(t *testing.T) {
	f, k := lvstest.New(t)
	foreignService(t, f)
	state := t.TempDir() + "/run/ipvs-owned"
	r := lvs.NewReconciler(k, nil)
	if err := r.PersistOwned(state); err != nil {
		t.Fatal(err)
	}
	udp := seed()
	udp.Key = lvs.Key{Proto: lvs.UDP, Addr: vip}
	mustApply(t, r, seed(), udp)

	r2 := lvs.NewReconciler(k, nil) // the next run, whose config lost udp
	if err := r2.PersistOwned(state); err != nil {
		t.Fatal(err)
	}
	if got := r2.OwnedKeys(); !slices.Equal(got, []lvs.Key{tcp80, udp.Key}) {
		t.Fatalf("owned after restart: %v", got)
	}
	mustApply(t, r2, seed())
	if got, want := f.Dump(), "tcp/10.0.0.1:443 wlc t=0: 10.0.0.2:443/7/nat\n"+
		"tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/1/dr"; got != want {
		t.Fatalf("kernel table:\n%s\nwant:\n%s", got, want)
	}
	r3 := lvs.NewReconciler(k, nil)
	if err := r3.PersistOwned(state); err != nil {
		t.Fatal(err)
	}
	if got := r3.OwnedKeys(); !slices.Equal(got, []lvs.Key{tcp80}) {
		t.Fatalf("state file holds %v", got)
	}
}

// TestMHDestinationsSorted: an mh service's destinations are added in
// address order whatever the config's order, so that every director builds
// the same Maglev table; other schedulers keep the config's order.
func TestMHDestinationsSorted(t *testing.T) {
	for _, sched := range []string{"mh", "rr"} {
		f, r := newReconciler(t)
		s := seed()
		s.Scheduler = sched
		s.Reals[0], s.Reals[1] = s.Reals[1], s.Reals[0] // web2 first
		mustApply(t, r, s)
		first, second := web1, web2
		if sched == "rr" {
			first, second = web2, web1
		}
		wantCalls(t, f, "Services", "NewService tcp/192.168.94.200:80 "+sched+" timeout=0",
			"NewDestination tcp/192.168.94.200:80 "+first.String()+" weight=1 dr",
			"NewDestination tcp/192.168.94.200:80 "+second.String()+" weight=1 dr")
	}
}

// TestMHFlags: the mh flags go to the kernel with the service, next to the
// persistence flag, and a change of flags alone is one UpdateService.
func TestMHFlags(t *testing.T) {
	f, r := newReconciler(t)
	s := seed()
	s.Scheduler, s.SchedFlags, s.Persistence = "mh", lvs.MHFallback, time.Minute
	mustApply(t, r, s)
	if es := f.Entries(); len(es) != 1 || es[0].Service.SchedFlags != lvs.MHFallback || es[0].Service.Timeout != 60 {
		t.Fatalf("kernel service %+v, want mh-fallback and persistence 60", es)
	}
	f.Reset()
	s.SchedFlags = lvs.MHFallback | lvs.MHPort
	mustApply(t, r, s)
	wantCalls(t, f, "UpdateService tcp/192.168.94.200:80 mh timeout=60 flags=0x18")
	f.Reset()
	mustApply(t, r, s)
	wantCalls(t, f)
}

// TestMHDestinationAddedInOrder: a destination that joins a running mh
// service between others is added where a fresh start would add it: the
// ones after it are deleted and added again after it (the kernel's Maglev
// table follows the order of addition). One joining last is simply added;
// other schedulers never re-add.
func TestMHDestinationAddedInOrder(t *testing.T) {
	web0 := netip.MustParseAddrPort("192.168.94.130:80")
	web9 := netip.MustParseAddrPort("192.168.94.139:80")
	for _, tc := range []struct {
		sched string
		add   netip.AddrPort
		want  []string
	}{
		{"mh", web0, []string{
			"DelDestination tcp/192.168.94.200:80 192.168.94.134:80",
			"DelDestination tcp/192.168.94.200:80 192.168.94.135:80",
			"NewDestination tcp/192.168.94.200:80 192.168.94.130:80 weight=1 dr",
			"NewDestination tcp/192.168.94.200:80 192.168.94.134:80 weight=1 dr",
			"NewDestination tcp/192.168.94.200:80 192.168.94.135:80 weight=1 dr"}},
		{"mh", web9, []string{"NewDestination tcp/192.168.94.200:80 192.168.94.139:80 weight=1 dr"}},
		{"rr", web0, []string{"NewDestination tcp/192.168.94.200:80 192.168.94.130:80 weight=1 dr"}},
	} {
		t.Run(tc.sched+"-"+tc.add.String(), func(t *testing.T) {
			f, r := newReconciler(t)
			s := seed()
			s.Scheduler = tc.sched
			mustApply(t, r, s)
			f.Reset()
			s.Reals = append(s.Reals, lvs.Real{Addr: tc.add, Weight: 1, Up: true})
			mustApply(t, r, s)
			wantCalls(t, f, tc.want...)
			f.Reset()
			mustApply(t, r, s)
			wantCalls(t, f)
		})
	}
}
