package lvs_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/lab"
	"github.com/lvsha/lvsha/internal/testenv/netns"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
	"github.com/lvsha/lvsha/lvs"
)

// TestIPVSInVM runs the TestKernel* tests below inside the QEMU VM: the
// build machines' own kernel has no lvs.IPVS.
func TestIPVSInVM(t *testing.T) {
	vmtest.Run(t, "^TestKernel", vm.Options{Timeout: 4 * time.Minute})
}

func needVM(t *testing.T) {
	t.Helper()
	if !vm.InGuest() {
		t.Skip("needs real IPVS: runs inside the VM, started by TestIPVSInVM")
	}
}

// freshIPVS returns two handles on the lvs.IPVS table of a new namespace: one
// for the reconciler, one to read back and to play "someone else".
func freshIPVS(t *testing.T, name string) (*lvs.IPVS, *lvs.IPVS) {
	t.Helper()
	ns, err := netns.New(netns.UniquePrefix("lvk") + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	var ks [2]*lvs.IPVS
	for i := range ks {
		if ks[i], err = lvs.OpenIPVS(ns.Path()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ks[i].Close)
	}
	return ks[0], ks[1]
}

// write makes changes as "someone else" and fails the test if one fails.
func write(t *testing.T, k lvs.Kernel, cs ...lvs.Change) {
	t.Helper()
	for i, err := range k.Write(cs) {
		if err != nil {
			t.Fatalf("%v: %v", cs[i], err)
		}
	}
}

// dumpKernel renders a real table like lvstest.Table.Dump renders the fake's.
func dumpKernel(t *testing.T, k lvs.Kernel) string {
	t.Helper()
	svcs, err := k.Services()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range svcs {
		ds, err := k.Destinations(s.Key)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(ds, func(a, b lvs.KDest) int { return a.Addr.Compare(b.Addr) })
		l := fmt.Sprintf("%v %s t=%d:", s.Key, s.Scheduler, s.Timeout)
		for _, d := range ds {
			l += fmt.Sprintf(" %v/%d/%v", d.Addr, d.Weight, d.Forwarding)
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func TestKernelReconcile(t *testing.T) {
	needVM(t)
	k, other := freshIPVS(t, "rec")
	c := &lvs.Counting{Kernel: k}
	r := lvs.NewReconciler(c, nil)
	check := func(want string) {
		t.Helper()
		lines := strings.Split(want, "\n")
		slices.Sort(lines)
		want = strings.Join(lines, "\n")
		if got := dumpKernel(t, other); got != want {
			t.Fatalf("kernel table:\n%s\nwant:\n%s", got, want)
		}
	}
	step := func(name string, wantWrites int, svcs ...lvs.Service) {
		t.Helper()
		w := c.Writes
		rep, err := r.Apply(svcs)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.Writes-w != wantWrites {
			t.Fatalf("%s: %d netlink writes, want %d: %v", name, c.Writes-w, wantWrites, rep)
		}
	}

	// A foreign service, made by someone else: never touched.
	foreign := lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("10.0.0.1:443")}
	write(t, other,
		lvs.Change{Kind: lvs.OpNewService, Service: lvs.KService{Key: foreign, Scheduler: "wlc"}},
		lvs.Change{Kind: lvs.OpNewDest, Service: lvs.KService{Key: foreign}, Dest: lvs.KDest{Addr: netip.MustParseAddrPort("10.0.0.2:443"), Weight: 7, Forwarding: lvs.NAT}})
	foreignLine := "tcp/10.0.0.1:443 wlc t=0: 10.0.0.2:443/7/nat"

	s := seed()
	udp := seed()
	udp.Key = lvs.Key{Proto: lvs.UDP, Addr: netip.MustParseAddrPort("192.168.94.200:53")}
	udp.Persistence = 300 * time.Second
	udp.Forwarding = lvs.Tunnel
	fwm := lvs.Service{Key: lvs.Key{FWMark: 7}, Scheduler: "wlc", Forwarding: lvs.NAT, Reals: []lvs.Real{{Addr: web1, Weight: 2, Up: true}}}
	step("create from empty", 8, s, udp, fwm)
	rest := foreignLine + "\nfwmark/7 wlc t=0: 192.168.94.134:80/2/nat\n" +
		"udp/192.168.94.200:53 rr t=300: 192.168.94.134:80/1/tun 192.168.94.135:80/1/tun"
	check("tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/1/dr\n" + rest)

	s.Reals[1].Weight = 5
	step("weight change", 1, s, udp, fwm)
	// Still lvs.DR after the update: the moby/ipvs forwarding pitfall.
	check("tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/1/dr 192.168.94.135:80/5/dr\n" + rest)

	s.Reals[0].Up = false
	step("down (inhibit)", 1, s, udp, fwm)
	check("tcp/192.168.94.200:80 rr t=0: 192.168.94.134:80/0/dr 192.168.94.135:80/5/dr\n" + rest)
	s.Reals[0].Up = true
	step("up", 1, s, udp, fwm)

	s.OnFailure = lvs.Remove
	s.Reals[0].Up = false
	step("down (remove)", 1, s, udp, fwm)
	check("tcp/192.168.94.200:80 rr t=0: 192.168.94.135:80/5/dr\n" + rest)
	s.Reals[0].Up = true
	step("up again", 1, s, udp, fwm)

	s.Reals = s.Reals[1:]
	step("remove a real server", 1, s, udp, fwm)
	s.Scheduler = "sh"
	step("change scheduler", 1, s, udp, fwm)
	check("tcp/192.168.94.200:80 sh t=0: 192.168.94.135:80/5/dr\n" + rest)

	s.Quorum, s.Sorry = 6, sorry
	step("quorum lost", 2, s, udp, fwm)
	check("tcp/192.168.94.200:80 sh t=0: 192.168.94.250:80/1/dr\n" + rest)
	s.Quorum = 5
	step("quorum regained", 2, s, udp, fwm)
	want := "tcp/192.168.94.200:80 sh t=0: 192.168.94.135:80/5/dr\n" + rest
	check(want)

	// Drift: `ipvsadm -D` of one of ours and a real server flipped to lvs.NAT.
	write(t, other,
		lvs.Change{Kind: lvs.OpDelService, Service: lvs.KService{Key: s.Key}},
		lvs.Change{Kind: lvs.OpUpdateDest, Service: lvs.KService{Key: udp.Key}, Dest: lvs.KDest{Addr: web2, Weight: 1, Forwarding: lvs.NAT}})
	rep, err := r.Repair()
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Ops) != 3 {
		t.Errorf("repair: %v", rep)
	}
	check(want)

	udp.Persistence = 0
	step("persistence off", 1, s, udp, fwm)
	check("tcp/192.168.94.200:80 sh t=0: 192.168.94.135:80/5/dr\n" + foreignLine + "\nfwmark/7 wlc t=0: 192.168.94.134:80/2/nat\n" +
		"udp/192.168.94.200:53 rr t=0: 192.168.94.134:80/1/tun 192.168.94.135:80/1/tun")

	step("remove services from config", 3)
	check(foreignLine)
}

func TestKernelEveryScheduler(t *testing.T) {
	needVM(t)
	k, other := freshIPVS(t, "sch")
	r := lvs.NewReconciler(k, nil)
	for i, name := range lvs.Schedulers {
		svc := lvs.Service{Key: lvs.Key{FWMark: uint32(100 + i)}, Scheduler: name, Reals: []lvs.Real{{Addr: web1, Weight: 1, Up: true}}}
		_, err := r.Apply([]lvs.Service{svc})
		// twos arrived in Linux 6.7; the VM runs Debian bookworm's 6.1.
		if name == "twos" {
			t.Logf("twos on this kernel: %v", err)
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := dumpKernel(t, other); !strings.HasPrefix(got, fmt.Sprintf("fwmark/%d %s ", 100+i, name)) {
			t.Errorf("%s: table %q", name, got)
		}
	}
}

// TestKernelDR is the seed scenario: a client's requests to the VIP
// alternate between web1 and web2, and the replies bypass the director.
func TestKernelDR(t *testing.T) {
	needVM(t)
	seed80, err := lab.NewSeed(netns.UniquePrefix("lvd"), lab.SeedOptions{VIPOnDirector: true, HTTPPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer seed80.Close()
	k, err := lvs.OpenIPVS(seed80.Director1.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	r := lvs.NewReconciler(k, nil)
	svc := lvs.Service{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(lab.VIP, 80)}, Scheduler: "rr", Forwarding: lvs.DR,
		Reals: []lvs.Real{{Addr: netip.AddrPortFrom(lab.Web1.Addr(), 80), Weight: 1, Up: true}, {Addr: netip.AddrPortFrom(lab.Web2.Addr(), 80), Weight: 1, Up: true}}}
	if _, err := r.Apply([]lvs.Service{svc}); err != nil {
		t.Fatal(err)
	}
	url := "http://" + svc.Key.Addr.String() + "/"
	get := func(c *http.Client, reused *bool) string {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if reused != nil {
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { *reused = i.Reused },
			}))
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}

	client := lab.HTTPClient(seed80.Client.NS, false)
	var got []string
	for range 6 {
		got = append(got, get(client, nil))
	}
	for i, b := range got {
		if b != "this is web1" && b != "this is web2" {
			t.Fatalf("answer %q", b)
		}
		if i > 0 && b == got[i-1] {
			t.Fatalf("round robin did not alternate: %q", got)
		}
	}
	t.Logf("answers: %q", got)

	// True DR: the director saw the requests but no reply went through it.
	// Counters lag up to ~2 s: wait for the requests to show.
	var snap lvs.Snapshot
	ok := netns.WaitFor(10*time.Second, 200*time.Millisecond, func() bool {
		snap, err = r.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		s, _ := snap.Find(svc.Key)
		return s.Stats.Conns >= 6 && s.Stats.PacketsIn >= 6*4
	})
	s, _ := snap.Find(svc.Key)
	if !ok {
		t.Fatalf("director counters never showed the traffic: %+v", s.Stats)
	}
	if s.Stats.PacketsOut != 0 || s.Stats.BytesOut != 0 {
		t.Fatalf("replies went through the director (not lvs.DR): %+v", s.Stats)
	}
	t.Logf("director stats: %+v", s.Stats)

	// A weight change, then inhibiting the very server of an open
	// keep-alive connection: the connection goes on, on the same server.
	ka := lab.HTTPClient(seed80.Client.NS, true)
	var reused bool
	first := get(ka, &reused)
	svc.Reals[0].Weight = 3
	if _, err := r.Apply([]lvs.Service{svc}); err != nil {
		t.Fatal(err)
	}
	if b := get(ka, &reused); b != first || !reused {
		t.Fatalf("after weight change: %q (reused %v), want %q on the same connection", b, reused, first)
	}
	serving := 0
	if first == "this is web2" {
		serving = 1
	}
	svc.Reals[serving].Up = false // inhibit: weight 0, existing connections stay
	if _, err := r.Apply([]lvs.Service{svc}); err != nil {
		t.Fatal(err)
	}
	snap, _ = r.Snapshot()
	s, _ = snap.Find(svc.Key)
	if d, _ := s.Dest(svc.Reals[serving].Addr); d.Weight != 0 {
		t.Fatalf("serving real server not inhibited: %+v", d)
	}
	for range 3 {
		if b := get(ka, &reused); b != first || !reused {
			t.Fatalf("after inhibit: %q (reused %v), want %q on the same connection", b, reused, first)
		}
	}
	// New connections now all go to the other server.
	if b := get(client, nil); b == first {
		t.Fatalf("new connection went to the inhibited server")
	}
}

func TestKernelIPv6(t *testing.T) {
	needVM(t)
	k, other := freshIPVS(t, "v6")
	r := lvs.NewReconciler(k, nil)
	s := lvs.Service{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("[2001:db8::100]:80")}, Scheduler: "wrr", Forwarding: lvs.DR,
		Persistence: time.Minute,
		Reals:       []lvs.Real{{Addr: netip.MustParseAddrPort("[2001:db8::1]:80"), Weight: 2, Up: true}, {Addr: netip.MustParseAddrPort("[2001:db8::2]:80"), Weight: 1, Up: true}}}
	if _, err := r.Apply([]lvs.Service{s}); err != nil {
		t.Fatal(err)
	}
	s.Reals[1].Weight = 4
	rep, err := r.Apply([]lvs.Service{s})
	if err != nil || len(rep.Ops) != 1 {
		t.Fatalf("weight change: %v %v", rep, err)
	}
	want := "tcp/[2001:db8::100]:80 wrr t=60: [2001:db8::1]:80/2/dr [2001:db8::2]:80/4/dr"
	if got := dumpKernel(t, other); got != want {
		t.Fatalf("table %q, want %q", got, want)
	}

	// fwmark 7 of each family: two services in the kernel, each with
	// real servers of its own family, told apart when read back (a
	// second Apply changes nothing) and removed one at a time.
	fw4 := lvs.Service{Key: lvs.Key{FWMark: 7}, Scheduler: "rr", Forwarding: lvs.DR,
		Reals: []lvs.Real{{Addr: netip.MustParseAddrPort("192.0.2.1:0"), Weight: 1, Up: true}}}
	fw6 := lvs.Service{Key: lvs.Key{FWMark: 7, FWMark6: true}, Scheduler: "rr", Forwarding: lvs.DR, Persistence: time.Minute,
		Reals: []lvs.Real{{Addr: netip.MustParseAddrPort("[2001:db8::3]:0"), Weight: 1, Up: true}}}
	if _, err := r.Apply([]lvs.Service{s, fw4, fw6}); err != nil {
		t.Fatal(err)
	}
	want = "fwmark/7 rr t=0: 192.0.2.1:0/1/dr\nfwmark6/7 rr t=60: [2001:db8::3]:0/1/dr\n" + want
	if got := dumpKernel(t, other); got != want {
		t.Fatalf("table %q, want %q", got, want)
	}
	if rep, err := r.Apply([]lvs.Service{s, fw4, fw6}); err != nil || len(rep.Ops) != 0 {
		t.Fatalf("the same table again: %v %v", rep, err)
	}
	if _, err := r.Apply([]lvs.Service{s, fw6}); err != nil {
		t.Fatal(err)
	}
	want = "fwmark6/7 rr t=60: [2001:db8::3]:0/1/dr\ntcp/[2001:db8::100]:80 wrr t=60: [2001:db8::1]:80/2/dr [2001:db8::2]:80/4/dr"
	if got := dumpKernel(t, other); got != want {
		t.Fatalf("after removing fwmark/7: table %q, want %q", got, want)
	}
	// A family mix is refused before anything is sent.
	mixed := fw6
	mixed.Reals = []lvs.Real{{Addr: netip.MustParseAddrPort("192.0.2.9:0"), Weight: 1, Up: true}}
	if _, err := r.Apply([]lvs.Service{s, mixed}); err == nil || !strings.Contains(err.Error(), "other address family") {
		t.Fatalf("a v4 real server in fwmark6/7: %v", err)
	}
}

// One batch whose middle change fails: the kernel goes on with the rest and
// each change gets its own verdict.
func TestKernelBatchErrors(t *testing.T) {
	needVM(t)
	k, other := freshIPVS(t, "bat")
	missing := lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("10.9.9.9:80")}
	errs := k.Write([]lvs.Change{
		{Kind: lvs.OpNewService, Service: lvs.KService{Key: tcp80, Scheduler: "rr"}},
		{Kind: lvs.OpNewDest, Service: lvs.KService{Key: missing}, Dest: lvs.KDest{Addr: web1, Weight: 1}},
		{Kind: lvs.OpNewService, Service: lvs.KService{Key: tcp80, Scheduler: "rr"}},
		{Kind: lvs.OpNewDest, Service: lvs.KService{Key: tcp80}, Dest: lvs.KDest{Addr: web2, Weight: 3, Forwarding: lvs.Tunnel}},
	})
	if errs[0] != nil || errs[1] == nil || !errors.Is(errs[2], syscall.EEXIST) || errs[3] != nil {
		t.Fatalf("errors %v", errs)
	}
	if got := dumpKernel(t, other); got != "tcp/192.168.94.200:80 rr t=0: 192.168.94.135:80/3/tun" {
		t.Fatalf("table %q", got)
	}
}

// TestKernelMHOrder: the kernel keeps an mh service's destinations in the
// order they were added (its Maglev table is built walking that list). A
// real server joining a running service between two others ends up where
// a fresh start puts it, so a director restarted later builds the same
// table; the control, the same join made by a plain add, does not.
func TestKernelMHOrder(t *testing.T) {
	needVM(t)
	k, other := freshIPVS(t, "mho")
	r := lvs.NewReconciler(k, nil)
	a, b, c := netip.MustParseAddrPort("192.168.94.131:80"), netip.MustParseAddrPort("192.168.94.132:80"), netip.MustParseAddrPort("192.168.94.133:80")
	svc := func(port uint16, reals ...netip.AddrPort) lvs.Service {
		s := lvs.Service{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(vip.Addr(), port)}, Scheduler: "mh", Forwarding: lvs.DR}
		for _, x := range reals {
			s.Reals = append(s.Reals, lvs.Real{Addr: x, Weight: 1, Up: true})
		}
		return s
	}
	order := func(port uint16) string {
		t.Helper()
		ds, err := other.Destinations(lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(vip.Addr(), port)})
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, d := range ds {
			s = append(s, d.Addr.String())
		}
		return strings.Join(s, " ")
	}
	if _, err := r.Apply([]lvs.Service{svc(82, a, c)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Apply([]lvs.Service{svc(82, a, b, c), svc(81, a, b, c)}); err != nil {
		t.Fatal(err)
	}
	ctl := lvs.KService{Key: lvs.Key{Proto: lvs.TCP, Addr: netip.AddrPortFrom(vip.Addr(), 83)}, Scheduler: "mh"}
	write(t, other, lvs.Change{Kind: lvs.OpNewService, Service: ctl})
	for _, x := range []netip.AddrPort{a, c, b} {
		write(t, other, lvs.Change{Kind: lvs.OpNewDest, Service: ctl, Dest: lvs.KDest{Addr: x, Weight: 1, Forwarding: lvs.DR}})
	}
	fresh, grown, plain := order(81), order(82), order(83)
	t.Logf("kernel order: fresh %s; joined by lvsha %s; joined by a plain add %s", fresh, grown, plain)
	if grown != fresh {
		t.Errorf("after the join the kernel holds %s, a fresh start %s", grown, fresh)
	}
	if plain == fresh {
		t.Errorf("control: a plain add gives the fresh order too (%s): the kernel's order does not depend on the additions, the test cannot fail", plain)
	}
}
