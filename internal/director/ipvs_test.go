package director

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/lvs/lvstest"
)

var (
	okKey      = lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("10.99.0.1:80")}
	refusedKey = lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("10.99.0.2:80")}
	web1       = netip.MustParseAddrPort("10.99.1.1:80")
	web2       = netip.MustParseAddrPort("10.99.1.2:80")
)

// twoServices is a desired table: okKey with web1 and web2 (web2 as the
// verdict says), and refusedKey with web1.
func twoServices(web2Up bool) []lvs.Service {
	return []lvs.Service{
		{Key: okKey, Scheduler: "rr", Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}, {Addr: web2, Weight: 3, Up: web2Up}}},
		{Key: refusedKey, Scheduler: "twos", Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}}},
	}
}

// refuse makes the fake kernel refuse every request about key, as a 6.1
// kernel refuses a twos service (ENOENT: no such scheduler module).
func refuse(f *lvstest.Table, key lvs.Key) {
	f.SetFail(func(call string) error {
		if strings.Contains(call, " "+key.String()) {
			return syscall.ENOENT
		}
		return nil
	})
}

func weightOf(f *lvstest.Table, key lvs.Key, a netip.AddrPort) int {
	for _, e := range f.Entries() {
		if e.Service.Key != key {
			continue
		}
		for _, d := range e.Dests {
			if d.Addr == a {
				return d.Weight
			}
		}
	}
	return -1
}

// startTestIPVS runs an ipvsPart over f's kernel in the test's bubble.
func startTestIPVS(t *testing.T, k lvs.Kernel) *ipvsPart {
	t.Helper()
	p := newIPVSPart(testConfig(t, ""), slog.New(slog.DiscardHandler), func() (lvs.Kernel, func(), error) { return k, func() {}, nil })
	p.start(t.Context(), func(lvs.Report, error, bool) {})
	t.Cleanup(p.stop)
	return p
}

// TestRefusedServiceHoldsNoVerdictBack: a service the kernel always refuses
// is reported with its reason, while a verdict on another service reaches
// the kernel at once, not after the back-off of the refused one's retries;
// the refused one is retried later and made once the kernel takes it.
func TestRefusedServiceHoldsNoVerdictBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := lvstest.New(t)
		refuse(f, refusedKey)
		p := startTestIPVS(t, k)
		start := time.Now()

		p.set(twoServices(true))
		synctest.Wait()
		if w := weightOf(f, okKey, web2); w != 3 {
			t.Fatalf("web2's weight %d, want 3: the refused service held the other back", w)
		}
		if got := p.serviceError(refusedKey); !strings.Contains(got, "add-service "+refusedKey.String()) || !strings.Contains(got, "no such file or directory") {
			t.Errorf("error of the refused service %q", got)
		}
		if got := p.serviceError(okKey); got != "" {
			t.Errorf("error of the accepted service %q", got)
		}
		if _, lastErr, _ := p.snapshot(t.Context()); !strings.Contains(lastErr, "applied except "+refusedKey.String()) {
			t.Errorf("ipvs error %q", lastErr)
		}

		// A verdict: web2 is down. No time passes in the bubble unless
		// every goroutine waits for a timer, so a table held back until
		// the retry would show as time passed and web2 still at 3.
		f.Reset()
		p.set(twoServices(false))
		synctest.Wait()
		if w := weightOf(f, okKey, web2); w != 0 {
			t.Fatalf("web2's weight %d after the verdict, want 0", w)
		}
		// The refusal makes the reconciler re-read what failed, not the
		// whole table (a dump per service on every verdict).
		if calls := f.Calls(); slices.Contains(calls, "Destinations "+okKey.String()) {
			t.Errorf("the accepted service was re-read: %q", calls)
		}
		if el := time.Since(start); el != 0 {
			t.Errorf("the verdict was applied after %v", el)
		}

		// The refused service is retried after the back-off (1 s, then
		// 2 s after the second failure), not in a loop meanwhile.
		f.Reset()
		f.SetFail(nil)
		time.Sleep(backoff(1) - time.Millisecond)
		synctest.Wait()
		if n := f.Writes(); n != 0 {
			t.Errorf("%d writes during the back-off: %q", n, f.Calls())
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if w := weightOf(f, refusedKey, web1); w != 1 {
			t.Errorf("the refused service, now accepted, not made after the back-off: %s", f.Dump())
		}
		if got := p.serviceError(refusedKey); got != "" {
			t.Errorf("error of the service once made: %q", got)
		}
	})
}

// TestVerdictDuringBackoff: a table whose apply failed is retried after a
// back-off, but a new table during that back-off is applied at once.
func TestVerdictDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, k := lvstest.New(t)
		svc := twoServices(true)[:1]
		// The kernel refuses web2 once (and the re-read retry): a
		// transient failure of the only service.
		fails := 0
		f.SetFail(func(call string) error {
			if strings.HasPrefix(call, "NewDestination "+okKey.String()+" "+web2.String()) && fails < 2 {
				fails++
				return syscall.ENOMEM
			}
			return nil
		})
		p := startTestIPVS(t, k)
		start := time.Now()
		p.set(svc)
		synctest.Wait()
		if w := weightOf(f, okKey, web2); w != -1 {
			t.Fatalf("web2 in the kernel (weight %d) though refused", w)
		}
		time.Sleep(backoff(0) / 2)
		synctest.Wait()
		// Mid back-off, a verdict: web1 goes down.
		svc[0].Reals[0].Up = false
		p.set(svc)
		synctest.Wait()
		if w1, w2 := weightOf(f, okKey, web1), weightOf(f, okKey, web2); w1 != 0 || w2 != 3 {
			t.Errorf("after the verdict web1 %d web2 %d, want 0 and 3", w1, w2)
		}
		if el := time.Since(start); el != backoff(0)/2 {
			t.Errorf("the verdict was applied %v after the start, want %v (at once)", el, backoff(0)/2)
		}
		if got := p.serviceError(okKey); got != "" {
			t.Errorf("error after the service was applied: %q", got)
		}
	})
}

// TestStatusNamesRefusedService: lvsha status says which service the
// kernel refuses and why; the others are programmed.
func TestStatusNamesRefusedService(t *testing.T) {
	cfg := testConfig(t, `
[[virtual_server]]
address = "10.99.0.1:80"
[[virtual_server.real_server]]
address = "10.99.1.1:80"

[[virtual_server]]
address = "10.99.0.2:80"
scheduler = "twos"
[[virtual_server.real_server]]
address = "10.99.1.1:80"
`)
	k := newFakeIPVS(t)
	refuse(k.table, refusedKey)
	d := New(cfg, slog.New(slog.DiscardHandler), Options{OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }})
	ctx := runDaemon(t, d)
	waitFor(t, "the accepted service programmed", func() bool { return weightOf(k.table, okKey, web1) == 1 })
	var st *control.Status
	waitFor(t, "the refusal in status", func() bool {
		var err error
		st, err = control.QueryStatus(ctx, cfg.Global.ControlSocket)
		return err == nil && len(st.Services) == 2 && st.Services[1].Error != ""
	})
	if s := st.Services[0]; !s.InKernel || s.Error != "" {
		t.Errorf("accepted service: %+v", s)
	}
	if s := st.Services[1]; s.InKernel || !strings.Contains(s.Error, "add-service tcp/10.99.0.2:80 (twos): no such file or directory") {
		t.Errorf("refused service: %+v", s)
	}
	if !strings.Contains(st.IPVSError, "applied except tcp/10.99.0.2:80") {
		t.Errorf("ipvs_error %q", st.IPVSError)
	}
}

// TestStatusDuringStartup asks for status while the daemon starts, as the
// control socket may from its first moment: run with -race, it shows any
// part the daemon sets up unguarded while status can read it.
func TestStatusDuringStartup(t *testing.T) {
	cfg := testConfig(t, "[[virtual_server]]\naddress = \"10.99.0.1:80\"\n[[virtual_server.real_server]]\naddress = \"10.99.1.1:80\"\n")
	k := newFakeIPVS(t)
	d := New(cfg, slog.New(slog.DiscardHandler), Options{OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }})
	asked := make(chan struct{})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			_ = d.status(t.Context())
			if i == 0 {
				close(asked)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	<-asked
	runDaemon(t, d)
	waitFor(t, "IPVS programmed", func() bool { return weightOf(k.table, okKey, web1) == 1 })
	close(stop)
	<-done
}
