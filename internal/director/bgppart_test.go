package director

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/bgp"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/lvs"
)

// fakeSpeaker records what the director asks of a BGP speaker, with the
// time of each call.
type fakeSpeaker struct {
	mu     sync.Mutex
	events []string
	at     []time.Time
	live   map[netip.Prefix]bool
}

func (f *fakeSpeaker) record(e string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, e)
	f.at = append(f.at, time.Now())
}

func (f *fakeSpeaker) Announce(p netip.Prefix) error {
	f.record("announce " + p.String())
	f.mu.Lock()
	f.live[p] = true
	f.mu.Unlock()
	return nil
}

func (f *fakeSpeaker) Withdraw(p netip.Prefix) error {
	f.record("withdraw " + p.String())
	f.mu.Lock()
	delete(f.live, p)
	f.mu.Unlock()
	return nil
}

func (f *fakeSpeaker) AddNeighbor(n bgp.Neighbor) error {
	f.record(fmt.Sprintf("add-neighbor %s hold=%s", n.Addr, n.HoldTime))
	return nil
}

func (f *fakeSpeaker) DeleteNeighbor(a netip.Addr) error {
	f.record("delete-neighbor " + a.String())
	return nil
}

func (f *fakeSpeaker) Neighbors(context.Context) ([]bgp.NeighborStatus, error) {
	return []bgp.NeighborStatus{{Address: "192.0.2.254", ASN: 65000, State: "established"}}, nil
}

func (f *fakeSpeaker) Stop() { f.record("stop") }

func (f *fakeSpeaker) announced(p netip.Prefix) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live[p]
}

func (f *fakeSpeaker) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

func TestBGPVerdicts(t *testing.T) {
	vip := netip.MustParsePrefix("192.0.2.10/32")
	other := netip.MustParsePrefix("192.0.2.11/32")
	svc := func(port uint16, quorum int, up ...bool) lvs.Service {
		s := lvs.Service{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(vip.Addr(), port)}, Quorum: quorum}
		for i, u := range up {
			s.Reals = append(s.Reals, lvs.Real{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), port), Weight: 1, Up: u})
		}
		return s
	}
	all := func(lvs.Key) bool { return true }
	none := func(lvs.Key) bool { return false }
	only80 := func(k lvs.Key) bool { return k.Addr.Port() == 80 }
	for _, tc := range []struct {
		name        string
		desired     []lvs.Service
		programmed  func(lvs.Key) bool
		want, want2 string // for vip, for other
	}{
		{"serving", []lvs.Service{svc(80, 1, true, false)}, all, "", "no virtual service on it"},
		{"IPVS not programmed", []lvs.Service{svc(80, 1, true)}, none, "IPVS does not hold tcp/192.0.2.10:80", "no virtual service on it"},
		{"every real server down", []lvs.Service{svc(80, 1, false, false)}, all, "quorum lost: tcp/192.0.2.10:80", "no virtual service on it"},
		{"below a quorum of 2", []lvs.Service{svc(80, 2, true, false)}, all, "quorum lost: tcp/192.0.2.10:80", "no virtual service on it"},
		{"one of two services down", []lvs.Service{svc(80, 1, true), svc(443, 1, false)}, all, "quorum lost: tcp/192.0.2.10:443", "no virtual service on it"},
		{"one of two services not in IPVS", []lvs.Service{svc(80, 1, true), svc(443, 1, true)}, only80, "IPVS does not hold tcp/192.0.2.10:443", "no virtual service on it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := bgpVerdicts([]netip.Prefix{vip, other}, tc.desired, tc.programmed)
			if got[vip] != tc.want || got[other] != tc.want2 {
				t.Errorf("verdicts %q, want %q for %s and %q for %s", got, tc.want, vip, tc.want2, other)
			}
		})
	}
}

// TestBGPShutdownWithdrawsThenDrains: on stop the VIP is withdrawn first,
// the speaker stops drain_time later, and only then are the VIPs released.
func TestBGPShutdownWithdrawsThenDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		vip := netip.MustParsePrefix("192.0.2.10/32")
		cfg := conf.BGP{Interface: "lo", VIPs: []netip.Prefix{vip}, DrainTime: conf.Duration(3 * time.Second)}
		sp := &fakeSpeaker{live: map[netip.Prefix]bool{}}
		hold := func(iface string, vips []netip.Prefix, add bool) error {
			sp.record(fmt.Sprintf("hold %s %v %v", iface, vips, add))
			return nil
		}
		b := newBGPPart(cfg, slog.New(slog.DiscardHandler), func(conf.BGP) (Speaker, error) { return sp, nil }, hold,
			func([]netip.Prefix) map[netip.Prefix]string { return map[netip.Prefix]string{vip: ""} })
		b.start()
		synctest.Wait()
		b.stop()
		want := []string{"hold lo [192.0.2.10/32] true", "announce 192.0.2.10/32", "withdraw 192.0.2.10/32", "stop", "hold lo [192.0.2.10/32] false"}
		if got := sp.log(); !slices.Equal(got, want) {
			t.Fatalf("calls %q, want %q", got, want)
		}
		if d := sp.at[3].Sub(sp.at[2]); d != 3*time.Second {
			t.Errorf("stopped %s after the withdrawal, want the drain time 3s", d)
		}
		if l := b.status(t.Context()).LastWithdraw; l == nil || l.Reason != "shutdown" {
			t.Errorf("last withdraw %+v, want one for shutdown", l)
		}
	})
}

// TestDaemonBGPFollowsQuorum runs the daemon with real health checks, an
// in-memory IPVS and a fake speaker: the VIP is announced while a real
// server is up, withdrawn (and status says why) when every one is down,
// announced again on recovery, and withdrawn on shutdown.
func TestDaemonBGPFollowsQuorum(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "lvsha.sock")
	a := startWeb(t, "127.0.0.1:0")
	b := startWeb(t, "127.0.0.1:0")
	file := filepath.Join(dir, "lvsha.toml")
	bgpSection := `
[bgp]
asn = 65001
router_id = "192.0.2.1"
announce = ["10.99.0.1"]
drain_time = "0s"
[[bgp.neighbor]]
address = "192.0.2.254"
asn = 65000
`
	metricsAddr := freePort(t)
	if err := os.WriteFile(file, fmt.Appendf(nil, daemonConfig, sock, filepath.Join(dir, "state"), metricsAddr, a.addr, b.addr, bgpSection), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := conf.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeIPVS(t)
	sp := &fakeSpeaker{live: map[netip.Prefix]bool{}}
	d := New(cfg, slog.New(slog.DiscardHandler), Options{Version: "test",
		OpenIPVS:    func() (lvs.Kernel, func(), error) { return k, func() {}, nil },
		OpenBGP:     func(conf.BGP) (Speaker, error) { return sp, nil },
		HoldBGPVIPs: func(string, []netip.Prefix, bool) error { return nil },
		WriteSysctl: func(k, v string) error { sp.record("sysctl " + k + "=" + v); return nil },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	vip := netip.MustParsePrefix("10.99.0.1/32")
	waitFor(t, "the VIP announced", func() bool { return sp.announced(vip) })
	if got := sp.log(); got[0] != "sysctl net.ipv4.vs.sloppy_tcp=1" {
		t.Errorf("first calls %q, want sloppy_tcp set before any announcement", got)
	}

	b.stop()
	waitFor(t, "b inhibited", func() bool { return k.weights()[b.addr] == 0 })
	if !sp.announced(vip) {
		t.Fatal("withdrawn while a real server is still up")
	}
	a.stop()
	waitFor(t, "the VIP withdrawn", func() bool { return !sp.announced(vip) })
	st, err := control.QueryStatus(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.BGP == nil || len(st.BGP.VIPs) != 1 || st.BGP.VIPs[0].Announced || !strings.HasPrefix(st.BGP.VIPs[0].Reason, "quorum lost") ||
		st.BGP.LastWithdraw == nil || !strings.HasPrefix(st.BGP.LastWithdraw.Reason, "quorum lost") ||
		len(st.BGP.Neighbors) != 1 || st.BGP.Neighbors[0].State != "established" {
		t.Errorf("bgp status %+v", st.BGP)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`lvsha_bgp_vip_announced{prefix="10.99.0.1/32"} 0`, `lvsha_bgp_withdrawals_total 1`,
		`lvsha_bgp_neighbor_established{neighbor="192.0.2.254"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	a.start(t)
	waitFor(t, "the VIP announced again", func() bool { return sp.announced(vip) })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	if got := sp.log(); len(got) < 2 || got[len(got)-2] != "withdraw 10.99.0.1/32" || got[len(got)-1] != "stop" {
		t.Errorf("shutdown calls %q, want a withdrawal then stop", got)
	}
}

// TestDaemonBGPWithoutIPVS: a director whose IPVS cannot be opened (this
// build host's kernel has none) announces nothing, and status says why.
func TestDaemonBGPWithoutIPVS(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "lvsha.sock")
	a := startWeb(t, "127.0.0.1:0")
	file := filepath.Join(dir, "lvsha.toml")
	bgpSection := `
[bgp]
asn = 65001
router_id = "192.0.2.1"
announce = ["10.99.0.1"]
[[bgp.neighbor]]
address = "192.0.2.254"
asn = 65000
`
	if err := os.WriteFile(file, fmt.Appendf(nil, daemonConfig, sock, filepath.Join(dir, "state"), freePort(t), a.addr, "127.0.0.2:9", bgpSection), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := conf.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	sp := &fakeSpeaker{live: map[netip.Prefix]bool{}}
	d := New(cfg, slog.New(slog.DiscardHandler), Options{Version: "test",
		OpenIPVS:    func() (lvs.Kernel, func(), error) { return nil, nil, errors.New("no IPVS in this kernel") },
		OpenBGP:     func(conf.BGP) (Speaker, error) { return sp, nil },
		HoldBGPVIPs: func(string, []netip.Prefix, bool) error { return nil },
		WriteSysctl: func(string, string) error { return errors.New("no IPVS") },
	})
	ctx := runDaemon(t, d)
	var st *control.Status
	waitFor(t, "status with a BGP verdict", func() bool {
		st, err = control.QueryStatus(ctx, sock)
		return err == nil && st.BGP != nil && len(st.BGP.VIPs) == 1 && st.BGP.VIPs[0].Reason != "not evaluated yet"
	})
	if v := st.BGP.VIPs[0]; v.Announced || v.Reason != "IPVS does not hold tcp/10.99.0.1:80" {
		t.Errorf("VIP status %+v, want not announced for want of IPVS", v)
	}
	if got := sp.log(); len(got) != 0 {
		t.Errorf("speaker calls %q, want none", got)
	}
}

// TestBGPReload: a reload that changes what is announced and the
// neighbours applies it to the running speaker: the new VIP is held before
// it is announced, the removed one is withdrawn before it is released, an
// unchanged neighbour is left alone, a changed one is replaced, a new one
// added; both records follow. Identity changes are refused (restart).
func TestBGPReload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("192.0.2.11/32")
		n1, n2, n3 := netip.MustParseAddr("192.0.2.254"), netip.MustParseAddr("192.0.2.253"), netip.MustParseAddr("192.0.2.252")
		nb := func(a netip.Addr, hold time.Duration) conf.BGPNeighbor {
			return conf.BGPNeighbor{Addr: a, ASN: 65000, HoldTime: conf.Duration(hold)}
		}
		cfg := conf.BGP{ASN: 65001, Interface: "lo", VIPs: []netip.Prefix{a},
			Neighbors: []conf.BGPNeighbor{nb(n1, 9*time.Second), nb(n3, 9*time.Second)}}
		sp := &fakeSpeaker{live: map[netip.Prefix]bool{}}
		hold := func(iface string, vips []netip.Prefix, add bool) error {
			sp.record(fmt.Sprintf("hold %s %v %v", iface, vips, add))
			return nil
		}
		b2 := newBGPPart(cfg, slog.New(slog.DiscardHandler), func(conf.BGP) (Speaker, error) { return sp, nil }, hold,
			func(vips []netip.Prefix) map[netip.Prefix]string {
				v := map[netip.Prefix]string{}
				for _, p := range vips {
					v[p] = ""
				}
				return v
			})
		var records []string
		b2.record = func(iface string, vips []netip.Prefix, held bool) {
			records = append(records, fmt.Sprintf("%s %v %v", iface, vips, held))
		}
		b2.start()
		synctest.Wait()
		nc := cfg
		nc.VIPs = []netip.Prefix{b}
		nc.Neighbors = []conf.BGPNeighbor{nb(n1, 3*time.Second), nb(n2, 9*time.Second), nb(n3, 9*time.Second)}
		if why := bgpRestartNeeded(&cfg, &nc); why != "" {
			t.Fatalf("restart needed for announce and neighbours: %s", why)
		}
		before := len(sp.log())
		b2.update(nc)
		synctest.Wait()
		want := []string{"hold lo [192.0.2.11/32] true", "withdraw 192.0.2.10/32", "hold lo [192.0.2.10/32] false",
			"delete-neighbor 192.0.2.254", "add-neighbor 192.0.2.254 hold=3s", "add-neighbor 192.0.2.253 hold=9s",
			"announce 192.0.2.11/32"}
		if got := sp.log()[before:]; !slices.Equal(got, want) {
			t.Errorf("reload calls %q, want %q", got, want)
		}
		if !sp.announced(b) || sp.announced(a) {
			t.Errorf("announced %v, want only %s", sp.live, b)
		}
		st := b2.status(t.Context())
		if len(st.VIPs) != 1 || st.VIPs[0].Prefix != b.String() || !st.VIPs[0].Announced ||
			st.LastWithdraw == nil || st.LastWithdraw.Reason != "removed from announce by a reload" {
			t.Errorf("status after the reload %+v (last withdraw %+v)", st.VIPs, st.LastWithdraw)
		}
		wantRec := []string{"lo [192.0.2.10/32] true", "lo [192.0.2.10/32 192.0.2.11/32] true", "lo [192.0.2.11/32] true"}
		if !slices.Equal(records, wantRec) {
			t.Errorf("records %q, want %q", records, wantRec)
		}
		b2.stop()

		for _, tc := range []struct {
			name string
			mod  func(*conf.BGP)
		}{
			{"asn", func(c *conf.BGP) { c.ASN++ }},
			{"router_id", func(c *conf.BGP) { c.RouterID = "192.0.2.99" }},
			{"listen_port", func(c *conf.BGP) { c.ListenPort = 1179 }},
			{"interface", func(c *conf.BGP) { c.Interface = "dummy0" }},
		} {
			c := cfg
			tc.mod(&c)
			if bgpRestartNeeded(&cfg, &c) == "" {
				t.Errorf("a change of %s is applied live", tc.name)
			}
		}
		if bgpRestartNeeded(nil, &cfg) == "" || bgpRestartNeeded(&cfg, nil) == "" || bgpRestartNeeded(nil, nil) != "" {
			t.Error("adding or removing [bgp] by a reload is not refused")
		}
	})
}
