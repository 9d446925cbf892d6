package director

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/director/control"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/vrrp"
)

// fakeProbe answers an arpWatch's probes from a script the test changes.
type fakeProbe struct {
	mu     sync.Mutex
	answer []arpLeak
	n      int
}

func (p *fakeProbe) set(l ...arpLeak) {
	p.mu.Lock()
	p.answer = l
	p.mu.Unlock()
}

func (p *fakeProbe) probe(_ string, vip netip.Addr, _ time.Duration) ([]arpLeak, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	var out []arpLeak
	for _, l := range p.answer {
		if l.VIP == vip {
			out = append(out, l)
		}
	}
	return out, nil
}

func (p *fakeProbe) probes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

var (
	testVIP  = netip.MustParseAddr("10.0.0.1")
	peerMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	leakyMAC = net.HardwareAddr{2, 0, 0, 0, 1, 1}
)

func masterOf(vips ...string) func() []vrrp.Config {
	return func() []vrrp.Config {
		c := vrrp.Config{Interface: "eth0"}
		for _, v := range vips {
			c.VIPs = append(c.VIPs, netip.MustParsePrefix(v))
		}
		return []vrrp.Config{c}
	}
}

// TestARPWatchIgnoresTheYieldingMaster: the director that held the VIP
// until the takeover answers the probe sent at the takeover and then falls
// silent (it heard the new master's advert and dropped the VIP): nothing is
// reported, changed is never called, and a second probe is asked for at
// once. A real server that goes on answering is reported by that second
// probe. What a probe saw before a takeover confirms nothing after it.
func TestARPWatchIgnoresTheYieldingMaster(t *testing.T) {
	fp := &fakeProbe{}
	changes := 0
	w := newARPWatch(slog.New(slog.DiscardHandler), masterOf("10.0.0.1/24"), func() { changes++ })
	w.probe = fp.probe

	peer := arpLeak{VIP: testVIP, MAC: peerMAC}
	fp.set(peer)
	if !w.round() {
		t.Errorf("an answer to the takeover probe asks for no confirming probe")
	}
	if got := w.snapshot(); len(got) != 0 || changes != 0 {
		t.Fatalf("the yielding master's answer reported at once: %+v (changes %d)", got, changes)
	}
	fp.set()
	if w.round() || len(w.snapshot()) != 0 || changes != 0 {
		t.Fatalf("after the peer fell silent: %+v (changes %d)", w.snapshot(), changes)
	}

	leak := arpLeak{VIP: testVIP, MAC: leakyMAC, IP: netip.MustParseAddr("10.0.1.1")}
	fp.set(leak)
	w.round()
	if len(w.snapshot()) != 0 {
		t.Fatalf("one answer reported: %+v", w.snapshot())
	}
	if w.round() {
		t.Errorf("a confirmed leak asks for another quick probe")
	}
	if got := w.snapshot(); len(got) != 1 || got[0].MAC.String() != leakyMAC.String() || changes != 1 {
		t.Fatalf("a leak answering two probes: %+v (changes %d)", got, changes)
	}
	fp.set()
	w.round()
	if len(w.snapshot()) != 0 || changes != 2 {
		t.Fatalf("fixed leak: %+v (changes %d)", w.snapshot(), changes)
	}

	// Seen just before this node lost and took the VIP back: the answer
	// to the takeover probe is a new one.
	fp.set(peer)
	w.round()
	w.takeover(nil)
	w.round()
	if len(w.snapshot()) != 0 {
		t.Fatalf("an answer from before the takeover confirmed one after it: %+v", w.snapshot())
	}
}

// TestARPWatchTakeoverOfOneInstance: a takeover resets the confirmation of
// that instance's VIPs only; a leak confirmed on another instance's VIP
// stays reported (with arp_leak = "fail" it would otherwise be restored and
// failed again, a second later, at every takeover of any instance).
func TestARPWatchTakeoverOfOneInstance(t *testing.T) {
	fp := &fakeProbe{}
	w := newARPWatch(slog.New(slog.DiscardHandler), masterOf("10.0.0.1/24", "10.0.0.2/24"), nil)
	w.probe = fp.probe
	other := netip.MustParseAddr("10.0.0.2")
	fp.set(arpLeak{VIP: testVIP, MAC: leakyMAC}, arpLeak{VIP: other, MAC: leakyMAC})
	w.round()
	w.round()
	if len(w.snapshot()) != 2 {
		t.Fatalf("leaks %+v, want one per VIP", w.snapshot())
	}
	w.takeover([]netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")})
	w.round()
	if got := w.snapshot(); len(got) != 1 || got[0].VIP != other {
		t.Fatalf("after a takeover of 10.0.0.1: leaks %+v, want 10.0.0.2's alone", got)
	}
}

// TestARPWatchIPv6VIPsAreProbed: IPv6 VIPs are probed like IPv4 ones
// (probeVIP picks the neighbour solicitation).
func TestARPWatchIPv6VIPsAreProbed(t *testing.T) {
	fp := &fakeProbe{}
	w := newARPWatch(slog.New(slog.DiscardHandler), masterOf("10.0.0.1/24", "2001:db8::100/64"), nil)
	w.probe = fp.probe
	v6 := arpLeak{VIP: netip.MustParseAddr("2001:db8::100"), MAC: leakyMAC}
	fp.set(v6)
	w.round()
	w.round()
	if got := w.snapshot(); len(got) != 1 || got[0].VIP != v6.VIP || fp.probes() != 4 {
		t.Fatalf("leaks %+v after %d probes", got, fp.probes())
	}
}

const arpFailConfig = `
[global]
control_socket = "%[1]s/lvsha.sock"
state_dir = "%[1]s/state"
realtime_priority = 0
arp_leak = %[2]q

[[virtual_server]]
address = "10.0.0.1:80"
scheduler = "rr"
[[virtual_server.real_server]]
address = "10.0.1.1:80"
[[virtual_server.real_server]]
address = "10.0.1.2:80"

[[virtual_server]]
address = "10.0.0.1:443"
scheduler = "rr"
[[virtual_server.real_server]]
address = "10.0.1.1:443"
weight = 3
[[virtual_server.real_server]]
address = "10.0.1.2:443"
`

// TestARPLeakFailsRealServer runs the daemon with an in-memory IPVS and a
// scripted probe: with arp_leak = "fail", a confirmed leak from 10.0.1.1
// sets its weight to 0 in both services (10.0.1.2 untouched), status says
// why, and the weights come back when the leak clears. With "report" (the
// negative control) the same leak is reported and no weight moves.
func TestARPLeakFailsRealServer(t *testing.T) {
	for _, mode := range []string{"fail", "report"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "lvsha.toml")
			if err := os.WriteFile(file, fmt.Appendf(nil, arpFailConfig, dir, mode), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, _, err := conf.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			k := newFakeIPVS(t)
			var logs syncBuffer
			d := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{Version: "test",
				OpenIPVS: func() (lvs.Kernel, func(), error) { return k, func() {}, nil }})
			fp := &fakeProbe{}
			d.arp.masters, d.arp.probe = masterOf("10.0.0.1/24"), fp.probe
			ctx := runDaemon(t, d)
			const (
				up   = "10.0.1.1:80/1/ 10.0.1.2:80/1/ 10.0.1.1:443/3/ 10.0.1.2:443/1/"
				down = "10.0.1.1:80/0/ 10.0.1.2:80/1/ 10.0.1.1:443/0/ 10.0.1.2:443/1/"
			)
			waitFor(t, "both services programmed", func() bool { return hasAll(k.table.Dump(), up) })

			fp.set(arpLeak{VIP: testVIP, MAC: leakyMAC, IP: netip.MustParseAddr("10.0.1.1")})
			d.arp.takeover(nil)
			waitFor(t, "the leak reported", func() bool { return len(d.arp.snapshot()) == 1 })
			st, err := control.QueryStatus(ctx, filepath.Join(dir, "lvsha.sock"))
			if err != nil {
				t.Fatal(err)
			}
			if len(st.ARPLeaks) != 1 || len(st.ARPLeaks[0].RealServers) != 2 {
				t.Errorf("arp_leaks: %+v", st.ARPLeaks)
			}
			if mode == "report" {
				time.Sleep(300 * time.Millisecond) // what a reconcile would take
				if !hasAll(k.table.Dump(), up) || st.Services[0].Reals[0].FailedBy != "" || st.Services[0].Reals[0].Health != "unchecked" {
					t.Fatalf("arp_leak = \"report\" moved a weight:\n%s\nstatus %+v", k.table.Dump(), st.Services[0].Reals[0])
				}
				return
			}
			waitFor(t, "10.0.1.1 at weight 0 in both services", func() bool { return hasAll(k.table.Dump(), down) })
			st, err = control.QueryStatus(ctx, filepath.Join(dir, "lvsha.sock"))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				r := st.Services[i].Reals[0]
				if r.Health != "down" || !strings.Contains(r.FailedBy, "arp leak") || !strings.Contains(r.FailedBy, leakyMAC.String()) || r.KernelWeight != 0 {
					t.Errorf("status of %s: %+v", st.Services[i].Key, r)
				}
				if r := st.Services[i].Reals[1]; r.FailedBy != "" || r.Health != "unchecked" {
					t.Errorf("status of the clean server: %+v", r)
				}
			}
			if !strings.Contains(logs.String(), "real server DOWN: it answers ARP for a VIP") {
				t.Errorf("no log line for the failed server:\n%s", logs.String())
			}

			fp.set()
			d.arp.takeover(nil)
			waitFor(t, "10.0.1.1 back in both services", func() bool { return hasAll(k.table.Dump(), up) })
			if !strings.Contains(logs.String(), "real server no longer failed for an ARP leak") {
				t.Errorf("no log line for the restored server")
			}
		})
	}
}

// hasAll says whether dump holds every space-separated part of want.
func hasAll(dump, want string) bool {
	for _, w := range strings.Fields(want) {
		if !strings.Contains(dump, w) {
			return false
		}
	}
	return true
}
