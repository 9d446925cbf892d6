package realserver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/lvs/realserver"
	"github.com/lvsha/lvsha/lvs/realserver/rstest"
)

var (
	vip1 = netip.MustParseAddr("192.168.94.200")
	vip2 = netip.MustParseAddr("192.168.94.201")
)

func testCfg() realserver.Config {
	return realserver.Config{VIPs: []netip.Addr{vip1, vip2}, Interface: "ens33"}
}

func testOpts(t *testing.T, k realserver.Kernel) realserver.Options {
	return realserver.Options{StateDir: t.TempDir(), Kernel: k, Logger: slog.New(slog.DiscardHandler)}
}

// snapshot is the whole observable state of a fake host plus the state file.
type snapshot struct {
	addrs   []realserver.Addr
	sysctls map[string]string
	state   string // file content, "" if absent
}

func snap(t *testing.T, f *rstest.Host, o realserver.Options) snapshot {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(o.StateDir, realserver.StateFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	a := slices.Clone(f.Addresses)
	slices.SortFunc(a, func(x, y realserver.Addr) int {
		return strings.Compare(x.Interface+x.Prefix.String(), y.Interface+y.Prefix.String())
	})
	return snapshot{addrs: a, sysctls: maps.Clone(f.Sysctls), state: string(b)}
}

func equalSnap(a, b snapshot) bool {
	return slices.Equal(a.addrs, b.addrs) && maps.Equal(a.sysctls, b.sysctls) && a.state == b.state
}

func TestUpConfiguresHost(t *testing.T) {
	f := rstest.New("ens33")
	o := testOpts(t, f)
	if err := realserver.Up(context.Background(), testCfg(), o); err != nil {
		t.Fatal(err)
	}
	for _, v := range []netip.Addr{vip1, vip2} {
		want := realserver.Addr{Interface: "lo", Prefix: netip.PrefixFrom(v, 32), HostScope: true}
		if !slices.Contains(f.Addresses, want) {
			t.Errorf("missing %+v in %+v", want, f.Addresses)
		}
	}
	for key, want := range map[string]string{
		"net/ipv4/conf/all/arp_ignore":     "1",
		"net/ipv4/conf/all/arp_announce":   "2",
		"net/ipv4/conf/ens33/arp_ignore":   "1",
		"net/ipv4/conf/ens33/arp_announce": "2",
		"net/ipv4/conf/default/arp_ignore": "0", // not ours to change
		"net/ipv4/conf/lo/arp_ignore":      "0",
	} {
		if got := f.Sysctls[key]; got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
	// ARP suppression must be in place before any VIP exists.
	lastWrite, firstAdd := -1, len(f.Ops)
	for i, op := range f.Ops {
		if strings.HasPrefix(op, "write ") {
			lastWrite = i
		}
		if strings.HasPrefix(op, "add ") && i < firstAdd {
			firstAdd = i
		}
	}
	if lastWrite > firstAdd {
		t.Errorf("a VIP was added before the sysctls were set: %q", f.Ops)
	}
	st, _, err := realserver.ReadState(filepath.Join(o.StateDir, realserver.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Sysctls) != 4 || st.Sysctls["net/ipv4/conf/ens33/arp_announce"] != "0" {
		t.Errorf("state sysctls = %v, want the four originals (0)", st.Sysctls)
	}
	if !slices.Equal(st.VIPs, []netip.Addr{vip1, vip2}) {
		t.Errorf("state VIPs = %v", st.VIPs)
	}
	ps, err := realserver.Status(context.Background(), testCfg(), o)
	if err != nil || len(ps) != 0 {
		t.Errorf("status after up = %q, %v; want no problems", ps, err)
	}
}

func TestUpIsIdempotentAndKeepsOriginals(t *testing.T) {
	f := rstest.New("ens33")
	f.Sysctls["net/ipv4/conf/all/arp_announce"] = "1"
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	before := snap(t, f, o)
	f.Ops = nil
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	if len(f.Ops) != 0 {
		t.Errorf("second up changed the host: %q", f.Ops)
	}
	if after := snap(t, f, o); !equalSnap(before, after) {
		t.Errorf("second up changed state:\n%+v\n%+v", before, after)
	}
	if !strings.Contains(before.state, `"net/ipv4/conf/all/arp_announce": "1"`) {
		t.Errorf("state lost the original all.arp_announce=1:\n%s", before.state)
	}
}

func TestUpAddsToExistingState(t *testing.T) {
	// A second realserver.Up with another interface and VIP adds their originals and
	// keeps the first ones.
	f := rstest.New("ens33", "ens34")
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, realserver.Config{VIPs: []netip.Addr{vip1}, Interface: "ens33"}, o); err != nil {
		t.Fatal(err)
	}
	f.Sysctls["net/ipv4/conf/ens34/arp_announce"] = "1"
	if err := realserver.Up(ctx, realserver.Config{VIPs: []netip.Addr{vip2}, Interface: "ens34"}, o); err != nil {
		t.Fatal(err)
	}
	st, _, err := realserver.ReadState(filepath.Join(o.StateDir, realserver.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"net/ipv4/conf/all/arp_ignore": "0", "net/ipv4/conf/all/arp_announce": "0",
		"net/ipv4/conf/ens33/arp_ignore": "0", "net/ipv4/conf/ens33/arp_announce": "0",
		"net/ipv4/conf/ens34/arp_ignore": "0", "net/ipv4/conf/ens34/arp_announce": "1",
	}
	if !maps.Equal(st.Sysctls, want) || !slices.Equal(st.VIPs, []netip.Addr{vip1, vip2}) {
		t.Errorf("state = %+v, want sysctls %v and both VIPs", st, want)
	}
}

func TestUpKeepsStricterArpIgnore(t *testing.T) {
	f := rstest.New("ens33")
	f.Sysctls["net/ipv4/conf/all/arp_ignore"] = "8"
	f.Sysctls["net/ipv4/conf/ens33/arp_ignore"] = "2"
	o := testOpts(t, f)
	if err := realserver.Up(context.Background(), testCfg(), o); err != nil {
		t.Fatal(err)
	}
	if f.Sysctls["net/ipv4/conf/all/arp_ignore"] != "8" || f.Sysctls["net/ipv4/conf/ens33/arp_ignore"] != "2" {
		t.Errorf("up lowered a stricter arp_ignore: %v", f.Sysctls)
	}
	if ps, err := realserver.Status(context.Background(), testCfg(), o); err != nil || len(ps) != 0 {
		t.Errorf("status = %q, %v", ps, err)
	}
}

func TestUpRescopesGlobalVIP(t *testing.T) {
	f := rstest.New("ens33")
	global := realserver.Addr{Interface: "lo", Prefix: netip.PrefixFrom(vip1, 32)}
	f.Addresses = []realserver.Addr{global}
	o := testOpts(t, f)
	if err := realserver.Up(context.Background(), testCfg(), o); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(f.Addresses, global) || !slices.Contains(f.Addresses, realserver.VIPAddr(vip1)) {
		t.Errorf("addrs = %+v, want %s on lo with host scope only", f.Addresses, vip1)
	}
}

func TestDownRestoresExactly(t *testing.T) {
	f := rstest.New("ens33")
	f.Sysctls["net/ipv4/conf/all/arp_announce"] = "1"
	f.Sysctls["net/ipv4/conf/ens33/arp_ignore"] = "4"
	other := realserver.Addr{Interface: "ens33", Prefix: netip.MustParsePrefix("192.168.94.134/24")}
	f.Addresses = []realserver.Addr{other}
	o := testOpts(t, f)
	before := snap(t, f, o)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	if _, err := realserver.Down(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	if after := snap(t, f, o); !equalSnap(before, after) {
		t.Errorf("down did not restore the host:\nbefore %+v\nafter  %+v", before, after)
	}
	// realserver.Down again: nothing to remove, no state: says so.
	if _, err := realserver.Down(ctx, testCfg(), o); !errors.Is(err, realserver.ErrNoState) {
		t.Errorf("second down = %v, want realserver.ErrNoState", err)
	}
}

func TestDownUsesRecordedVIPs(t *testing.T) {
	f := rstest.New("ens33")
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	// realserver.Down with a config that no longer lists the VIPs still removes them.
	if _, err := realserver.Down(ctx, realserver.Config{}, o); err != nil {
		t.Fatal(err)
	}
	if len(f.Addresses) != 0 {
		t.Errorf("addrs after down = %+v", f.Addresses)
	}
}

// TestDownWithoutState: with no record of what up changed, down changes
// nothing (the VIP may be someone else's; restoring ARP with the VIP on lo
// would steal the director's traffic) and says what it left.
func TestDownWithoutState(t *testing.T) {
	f := rstest.New("ens33")
	f.Addresses = []realserver.Addr{realserver.VIPAddr(vip1)}
	f.Sysctls["net/ipv4/conf/all/arp_ignore"] = "1"
	o := testOpts(t, f)
	rep, err := realserver.Down(context.Background(), testCfg(), o)
	if !errors.Is(err, realserver.ErrNoState) {
		t.Fatalf("down = %v, want realserver.ErrNoState", err)
	}
	if len(f.Ops) != 0 {
		t.Errorf("down without state changed the host: %q", f.Ops)
	}
	want := []string{
		"VIP 192.168.94.200 left on lo: no record that up added it",
		"ARP sysctls left as they are: no record of their values before up",
	}
	if !slices.Equal(rep.Left, want) || rep.Removed != nil || rep.Restored != nil {
		t.Errorf("report = %+v, want only Left %q", rep, want)
	}
}

func TestDownKeepsStateWhenRestoreFails(t *testing.T) {
	f := rstest.New("ens33")
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	f.Fail = func(op string) error {
		if op == "write net/ipv4/conf/all/arp_ignore 0" {
			return boom
		}
		return nil
	}
	_, err := realserver.Down(ctx, testCfg(), o)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "restore net.ipv4.conf.all.arp_ignore=0") {
		t.Fatalf("down = %v, want the restore failure", err)
	}
	if _, err := os.Stat(filepath.Join(o.StateDir, realserver.StateFile)); err != nil {
		t.Fatalf("state file gone after a failed restore: %v", err)
	}
	// The other keys were restored anyway.
	if f.Sysctls["net/ipv4/conf/ens33/arp_announce"] != "0" {
		t.Error("down stopped at the first failure")
	}
	f.Fail = nil
	if _, err := realserver.Down(ctx, testCfg(), o); err != nil {
		t.Fatalf("retry down = %v", err)
	}
	if f.Sysctls["net/ipv4/conf/all/arp_ignore"] != "0" {
		t.Error("retry did not restore")
	}
}

// TestUpFailureUndoes fails every mutating step of a successful realserver.Up in turn
// and checks that the host and the state file end as they began.
func TestUpFailureUndoes(t *testing.T) {
	setups := map[string]func(f *rstest.Host, dir string){
		"fresh": func(*rstest.Host, string) {},
		"partly configured": func(f *rstest.Host, dir string) {
			f.Addresses = []realserver.Addr{realserver.VIPAddr(vip1), {Interface: "lo", Prefix: netip.PrefixFrom(vip2, 32)}}
			f.Sysctls["net/ipv4/conf/all/arp_ignore"] = "1"
			f.Sysctls["net/ipv4/conf/ens33/arp_announce"] = "1"
			if err := realserver.WriteState(filepath.Join(dir, realserver.StateFile), &realserver.State{
				VIPs: []netip.Addr{vip1}, Sysctls: map[string]string{"net/ipv4/conf/all/arp_ignore": "0"},
			}); err != nil {
				t.Fatal(err)
			}
		},
		"found on lo": func(f *rstest.Host, _ string) {
			f.Addresses = []realserver.Addr{realserver.VIPAddr(vip1), labelled}
		},
	}
	for name, setup := range setups {
		probe := rstest.New("ens33")
		dir := t.TempDir()
		setup(probe, dir)
		if err := realserver.Up(context.Background(), testCfg(), realserver.Options{StateDir: dir, Kernel: probe, Logger: slog.New(slog.DiscardHandler)}); err != nil {
			t.Fatal(err)
		}
		if len(probe.Ops) == 0 {
			t.Fatalf("%s: up did nothing", name)
		}
		for _, failOp := range probe.Ops {
			t.Run(name+"/"+failOp, func(t *testing.T) {
				f := rstest.New("ens33")
				o := testOpts(t, f)
				setup(f, o.StateDir)
				before := snap(t, f, o)
				boom := errors.New("boom")
				f.Fail = func(op string) error {
					if op == failOp {
						return boom
					}
					return nil
				}
				err := realserver.Up(context.Background(), testCfg(), o)
				if !errors.Is(err, boom) {
					t.Fatalf("up = %v, want boom", err)
				}
				if !strings.HasPrefix(err.Error(), "realserver up: ") {
					t.Errorf("error does not name the operation: %v", err)
				}
				if after := snap(t, f, o); !equalSnap(before, after) {
					t.Errorf("not undone:\nbefore %+v\nafter  %+v", before, after)
				}
			})
		}
	}
}

func TestUpFailsBeforeChanging(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		cfg      realserver.Config
		stateDir string
		fail     string
		want     string
	}{
		{name: "unknown interface", cfg: realserver.Config{VIPs: []netip.Addr{vip1}, Interface: "eth9"}, want: "interface eth9 not found"},
		{name: "state dir unusable", stateDir: filepath.Join(blocker, "sub"), want: "state"},
		{name: "cancelled", ctx: cancelled, want: "context canceled"},
		{name: "list fails", fail: "list", want: "list addresses"},
		{name: "read fails", fail: "read net/ipv4/conf/all/arp_announce", want: "read net.ipv4.conf.all.arp_announce"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := rstest.New("ens33")
			f.Fail = func(op string) error {
				if op == tc.fail {
					return errors.New("boom")
				}
				return nil
			}
			o := testOpts(t, f)
			if tc.stateDir != "" {
				o.StateDir = tc.stateDir
			}
			c := tc.ctx
			if c == nil {
				c = ctx
			}
			cfg := tc.cfg
			if cfg.Interface == "" {
				cfg = testCfg()
			}
			err := realserver.Up(c, cfg, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("up = %v, want an error with %q", err, tc.want)
			}
			if len(f.Ops) != 0 {
				t.Errorf("host changed: %q", f.Ops)
			}
			if _, err := os.Stat(filepath.Join(o.StateDir, realserver.StateFile)); err == nil {
				t.Error("state file left behind")
			}
		})
	}
}

func TestStatusListsEachProblem(t *testing.T) {
	ok := func(f *rstest.Host) {
		f.Addresses = []realserver.Addr{realserver.VIPAddr(vip1), realserver.VIPAddr(vip2), {Interface: "ens33", Prefix: netip.MustParsePrefix("192.168.94.134/24")}}
		for _, i := range []string{"all", "ens33"} {
			f.Sysctls[rstest.ConfKey(i, "arp_ignore")] = "1"
			f.Sysctls[rstest.ConfKey(i, "arp_announce")] = "2"
		}
	}
	for _, tc := range []struct {
		name   string
		cfg    realserver.Config
		break_ func(f *rstest.Host)
		want   []realserver.Problem
	}{
		{name: "healthy", break_: func(*rstest.Host) {}},
		{name: "missing VIP", break_: func(f *rstest.Host) {
			f.Addresses = slices.DeleteFunc(f.Addresses, func(a realserver.Addr) bool { return a.Prefix.Addr() == vip2 })
		}, want: []realserver.Problem{"VIP 192.168.94.201 missing on lo"}},
		{name: "wrong prefix", break_: func(f *rstest.Host) {
			f.Addresses[0].Prefix = netip.PrefixFrom(vip1, 24)
		}, want: []realserver.Problem{"VIP 192.168.94.200 on lo is /24, want /32"}},
		{name: "global scope", break_: func(f *rstest.Host) { f.Addresses[0].HostScope = false },
			want: []realserver.Problem{"VIP 192.168.94.200 on lo has scope global, want host"}},
		{name: "also elsewhere", break_: func(f *rstest.Host) {
			f.Addresses = append(f.Addresses, realserver.Addr{Interface: "ens33", Prefix: netip.PrefixFrom(vip1, 32)})
		}, want: []realserver.Problem{"VIP 192.168.94.200 also on ens33"}},
		{name: "sysctls", break_: func(f *rstest.Host) {
			f.Sysctls["net/ipv4/conf/ens33/arp_ignore"] = "0"
			f.Sysctls["net/ipv4/conf/all/arp_ignore"] = "4" // reserved: the kernel replies
			f.Sysctls["net/ipv4/conf/all/arp_announce"] = "3"
		}, want: []realserver.Problem{
			"net.ipv4.conf.all.arp_ignore is 4, want 1",
			"net.ipv4.conf.all.arp_announce is 3, want 2",
			"net.ipv4.conf.ens33.arp_ignore is 0, want 1",
		}},
		{name: "no interface", cfg: realserver.Config{VIPs: []netip.Addr{vip1, vip2}, Interface: "eth9"}, break_: func(*rstest.Host) {},
			want: []realserver.Problem{"interface eth9 not found"}},
		{name: "nothing done", break_: func(f *rstest.Host) { *f = *rstest.New("ens33") }, want: []realserver.Problem{
			"VIP 192.168.94.200 missing on lo",
			"VIP 192.168.94.201 missing on lo",
			"net.ipv4.conf.all.arp_ignore is 0, want 1",
			"net.ipv4.conf.all.arp_announce is 0, want 2",
			"net.ipv4.conf.ens33.arp_ignore is 0, want 1",
			"net.ipv4.conf.ens33.arp_announce is 0, want 2",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := rstest.New("ens33")
			ok(f)
			tc.break_(f)
			cfg := tc.cfg
			if cfg.Interface == "" {
				cfg = testCfg()
			}
			got, err := realserver.Status(context.Background(), cfg, testOpts(t, f))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestStatusReadFailure(t *testing.T) {
	f := rstest.New("ens33")
	f.Fail = func(op string) error {
		if op == "list" {
			return errors.New("boom")
		}
		return nil
	}
	if _, err := realserver.Status(context.Background(), testCfg(), testOpts(t, f)); err == nil {
		t.Error("status hid a failure to read the host")
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  realserver.Config
		want string // "" = valid
	}{
		{testCfg(), ""},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("::ffff:192.168.94.200")}, Interface: "eth0.100"}, ""},
		{realserver.Config{Interface: "ens33"}, "no VIP"},
		{realserver.Config{VIPs: []netip.Addr{vip1}}, "no interface"},
		{realserver.Config{VIPs: []netip.Addr{vip1}, Interface: "lo"}, "client-facing"},
		{realserver.Config{VIPs: []netip.Addr{vip1}, Interface: "all"}, "client-facing"},
		{realserver.Config{VIPs: []netip.Addr{vip1}, Interface: "../x"}, "not a valid interface name"},
		{realserver.Config{VIPs: []netip.Addr{vip1}, Interface: "averyveryverylongname"}, "not a valid interface name"},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}, Interface: "ens33"}, ""},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("fe80::1")}, Interface: "ens33"}, "link-local"},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("::1")}, Interface: "ens33"}, "not a unicast"},
		{realserver.Config{VIPs: []netip.Addr{{}}, Interface: "ens33"}, "no address"},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("127.0.0.2")}, Interface: "ens33"}, "not a unicast"},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("0.0.0.0")}, Interface: "ens33"}, "not a unicast"},
		{realserver.Config{VIPs: []netip.Addr{netip.MustParseAddr("224.0.0.18")}, Interface: "ens33"}, "not a unicast"},
	} {
		t.Run(fmt.Sprintf("%v/%s", tc.cfg.VIPs, tc.cfg.Interface), func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("valid config rejected: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDisplayKey(t *testing.T) {
	if got := realserver.DisplayKey("net/ipv4/conf/eth0.100/arp_ignore"); got != "net.ipv4.conf.eth0/100.arp_ignore" {
		t.Errorf("displayKey = %s", got)
	}
}

// TestConcurrentUpsLoseNothing: Ups running at once (different VIPs) must
// each find their VIP in the state file, and the originals must be the
// values from before any of them; without the state lock one read-modify-
// write of the file overwrites another.
func TestConcurrentUpsLoseNothing(t *testing.T) {
	f := rstest.New("ens33")
	// Yield on every operation to widen the window in which unlocked Ups
	// would interleave.
	f.Fail = func(string) error { runtime.Gosched(); return nil }
	o := testOpts(t, f)
	const n = 8
	errs := make(chan error, n)
	var want []netip.Addr
	for i := range n {
		v := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
		want = append(want, v)
		go func() {
			errs <- realserver.Up(context.Background(), realserver.Config{VIPs: []netip.Addr{v}, Interface: "ens33"}, o)
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st, _, err := realserver.ReadState(filepath.Join(o.StateDir, realserver.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.VIPs, want) {
		t.Errorf("state VIPs = %v, want all of %v", st.VIPs, want)
	}
	for k, v := range st.Sysctls {
		if v != "0" {
			t.Errorf("saved original %s = %s, want 0", k, v)
		}
	}
}

// labelled is vip2 as an administrator may have put it on lo before up:
// scope global, a label and noprefixroute (IFA_F_NOPREFIXROUTE).
var labelled = realserver.Addr{Interface: "lo", Prefix: netip.PrefixFrom(vip2, 32), Label: "lo:vip", Flags: 0x200}

func readStateFile(t *testing.T, o realserver.Options) *realserver.State {
	t.Helper()
	st, _, err := realserver.ReadState(filepath.Join(o.StateDir, realserver.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestDownKeepsVIPUpFound(t *testing.T) {
	f := rstest.New("ens33")
	f.Addresses = []realserver.Addr{realserver.VIPAddr(vip1)}
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	if st := readStateFile(t, o); !slices.Equal(st.VIPs, []netip.Addr{vip2}) || len(st.Rescoped) != 0 {
		t.Errorf("state = %+v, want only %s added", st, vip2)
	}
	rep, err := realserver.Down(ctx, testCfg(), o)
	if err != nil {
		t.Fatal(err)
	}
	if want := []realserver.Addr{realserver.VIPAddr(vip1)}; !slices.Equal(f.Addresses, want) {
		t.Errorf("lo after down = %+v, want %+v", f.Addresses, want)
	}
	if !slices.Equal(rep.Removed, []netip.Addr{vip2}) {
		t.Errorf("removed = %v, want %s", rep.Removed, vip2)
	}
	want := "VIP 192.168.94.200 left on lo: up did not put it there (with ARP suppression undone the host answers ARP for it, as it did before up)"
	if !slices.Contains(rep.Left, want) {
		t.Errorf("left = %q, want %q", rep.Left, want)
	}
	if len(rep.Restored) != 4 || f.Sysctls["net/ipv4/conf/all/arp_ignore"] != "0" {
		t.Errorf("sysctls not restored: %v, report %q", f.Sysctls, rep.Restored)
	}
}

func TestUpRescopesAndDownRestoresGlobalVIP(t *testing.T) {
	f := rstest.New("ens33")
	f.Addresses = []realserver.Addr{labelled}
	o := testOpts(t, f)
	before := snap(t, f, o)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	hosted := labelled
	hosted.HostScope = true
	if !slices.Contains(f.Addresses, hosted) {
		t.Errorf("addrs after up = %+v, want %+v (scope host, label and flags kept)", f.Addresses, hosted)
	}
	st := readStateFile(t, o)
	if !slices.Equal(st.VIPs, []netip.Addr{vip1}) || len(st.Rescoped) != 1 {
		t.Fatalf("state = %+v, want %s added and %s rescoped", st, vip1, vip2)
	}
	rep, err := realserver.Down(ctx, testCfg(), o)
	if err != nil {
		t.Fatal(err)
	}
	if after := snap(t, f, o); !equalSnap(before, after) {
		t.Errorf("down did not restore the host:\nbefore %+v\nafter  %+v", before, after)
	}
	if !slices.Equal(rep.Rescoped, []netip.Addr{vip2}) || !slices.Equal(rep.Removed, []netip.Addr{vip1}) {
		t.Errorf("report = %+v", rep)
	}
}

// TestDownRestoresOnlySysctlsUpWrote: a sysctl up found acceptable is not
// recorded and down leaves it, even if it changed since; one up wrote and
// someone changed since is left too, with a sentence.
func TestDownRestoresOnlySysctlsUpWrote(t *testing.T) {
	f := rstest.New("ens33")
	f.Sysctls["net/ipv4/conf/all/arp_ignore"] = "2"
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	st := readStateFile(t, o)
	if _, ok := st.Sysctls["net/ipv4/conf/all/arp_ignore"]; ok || len(st.Sysctls) != 3 {
		t.Errorf("state sysctls = %v, want the three up wrote", st.Sysctls)
	}
	f.Sysctls["net/ipv4/conf/all/arp_ignore"] = "3"   // not up's
	f.Sysctls["net/ipv4/conf/ens33/arp_ignore"] = "8" // up's 1, changed since
	rep, err := realserver.Down(ctx, testCfg(), o)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"net/ipv4/conf/all/arp_ignore":     "3",
		"net/ipv4/conf/ens33/arp_ignore":   "8",
		"net/ipv4/conf/all/arp_announce":   "0",
		"net/ipv4/conf/ens33/arp_announce": "0",
	} {
		if got := f.Sysctls[key]; got != want {
			t.Errorf("%s = %s after down, want %s", key, got, want)
		}
	}
	wantLeft := []string{"net.ipv4.conf.ens33.arp_ignore left at 8: up set it to 1 (was 0), someone changed it since"}
	if !slices.Equal(rep.Left, wantLeft) {
		t.Errorf("left = %q, want %q", rep.Left, wantLeft)
	}
	if _, err := os.Stat(filepath.Join(o.StateDir, realserver.StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file after a complete down: %v", err)
	}
}

// TestUpTwiceThenDownRestoresOriginal: the second up sees the first one's
// VIPs and sysctls in place; they must stay recorded as up's changes, not
// become things that were there before.
func TestUpTwiceThenDownRestoresOriginal(t *testing.T) {
	f := rstest.New("ens33")
	other := realserver.Addr{Interface: "lo", Prefix: netip.MustParsePrefix("192.168.94.199/32"), HostScope: true}
	f.Addresses = []realserver.Addr{labelled, other}
	f.Sysctls["net/ipv4/conf/all/arp_announce"] = "1"
	o := testOpts(t, f)
	before := snap(t, f, o)
	ctx := context.Background()
	cfg := realserver.Config{VIPs: []netip.Addr{vip1, vip2, other.Prefix.Addr()}, Interface: "ens33"}
	for range 2 {
		if err := realserver.Up(ctx, cfg, o); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := realserver.Down(ctx, cfg, o); err != nil {
		t.Fatal(err)
	}
	if after := snap(t, f, o); !equalSnap(before, after) {
		t.Errorf("up, up, down did not restore the host:\nbefore %+v\nafter  %+v", before, after)
	}
}

// TestDownFailureKeepsWhatIsLeft: a VIP down cannot remove stays recorded
// and keeps ARP suppressed (restoring it with the VIP on lo would make the
// host answer ARP for it); a retry finishes.
func TestDownFailureKeepsWhatIsLeft(t *testing.T) {
	f := rstest.New("ens33")
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	f.Fail = func(op string) error {
		if op == "del lo 192.168.94.201/32 scope host" {
			return boom
		}
		return nil
	}
	rep, err := realserver.Down(ctx, testCfg(), o)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "ARP sysctls not restored") {
		t.Fatalf("down = %v, want the failure and the sysctls kept", err)
	}
	if !slices.Equal(rep.Removed, []netip.Addr{vip1}) || len(rep.Restored) != 0 {
		t.Errorf("report = %+v, want %s removed and nothing restored", rep, vip1)
	}
	if f.Sysctls["net/ipv4/conf/all/arp_ignore"] != "1" {
		t.Error("ARP suppression undone while a VIP is still on lo")
	}
	st := readStateFile(t, o)
	if !slices.Equal(st.VIPs, []netip.Addr{vip2}) || len(st.Sysctls) != 4 {
		t.Errorf("state left = %+v, want %s and the four sysctls", st, vip2)
	}
	f.Fail = nil
	if _, err := realserver.Down(ctx, testCfg(), o); err != nil {
		t.Fatalf("retry down = %v", err)
	}
	if len(f.Addresses) != 0 || f.Sysctls["net/ipv4/conf/all/arp_ignore"] != "0" {
		t.Errorf("retry did not finish: %+v %v", f.Addresses, f.Sysctls)
	}
}

// TestDownRescopeFailurePutsVIPBack: when the global address cannot be
// added back, down puts the host-scope one back so a retry finds the host
// as up left it.
func TestDownRescopeFailurePutsVIPBack(t *testing.T) {
	f := rstest.New("ens33")
	f.Addresses = []realserver.Addr{labelled}
	o := testOpts(t, f)
	before := snap(t, f, o)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	f.Fail = func(op string) error {
		if op == "add lo 192.168.94.201/32 scope global label lo:vip flags 0x200" {
			return boom
		}
		return nil
	}
	if _, err := realserver.Down(ctx, testCfg(), o); !errors.Is(err, boom) {
		t.Fatalf("down = %v, want boom", err)
	}
	hosted := labelled
	hosted.HostScope = true
	if !slices.Contains(f.Addresses, hosted) {
		t.Errorf("addrs = %+v, want %+v back", f.Addresses, hosted)
	}
	if st := readStateFile(t, o); len(st.Rescoped) != 1 {
		t.Errorf("state left = %+v, want the rescoped VIP", st)
	}
	f.Fail = nil
	if _, err := realserver.Down(ctx, testCfg(), o); err != nil {
		t.Fatalf("retry down = %v", err)
	}
	if after := snap(t, f, o); !equalSnap(before, after) {
		t.Errorf("retry did not restore the host:\nbefore %+v\nafter  %+v", before, after)
	}
}

// TestDownInterfaceGone: the sysctls of an interface deleted since up went
// with it; down says so and finishes.
func TestDownInterfaceGone(t *testing.T) {
	f := rstest.New("ens33")
	o := testOpts(t, f)
	ctx := context.Background()
	if err := realserver.Up(ctx, testCfg(), o); err != nil {
		t.Fatal(err)
	}
	delete(f.Sysctls, "net/ipv4/conf/ens33/arp_ignore")
	delete(f.Sysctls, "net/ipv4/conf/ens33/arp_announce")
	rep, err := realserver.Down(ctx, testCfg(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Left) != 2 || !strings.Contains(rep.Left[0], "net.ipv4.conf.ens33.arp_announce no longer exists") {
		t.Errorf("left = %q", rep.Left)
	}
	if _, err := os.Stat(filepath.Join(o.StateDir, realserver.StateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file after down: %v", err)
	}
}

// TestDownReadsOldStateFile: a state file from before rescoped existed
// listed every VIP up ensured and every managed sysctl; down undoes it as
// the old down did, less the sysctls that still have their old value.
func TestDownReadsOldStateFile(t *testing.T) {
	f := rstest.New("ens33")
	f.Addresses = []realserver.Addr{realserver.VIPAddr(vip1), realserver.VIPAddr(vip2)}
	for _, i := range []string{"all", "ens33"} {
		f.Sysctls[rstest.ConfKey(i, "arp_ignore")] = "1"
		f.Sysctls[rstest.ConfKey(i, "arp_announce")] = "2"
	}
	o := testOpts(t, f)
	old := `{"vips": ["192.168.94.200", "192.168.94.201"], "sysctls": {
  "net/ipv4/conf/all/arp_ignore": "0", "net/ipv4/conf/all/arp_announce": "2",
  "net/ipv4/conf/ens33/arp_ignore": "0", "net/ipv4/conf/ens33/arp_announce": "0"}}`
	if err := os.WriteFile(filepath.Join(o.StateDir, realserver.StateFile), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := realserver.Down(context.Background(), realserver.Config{}, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Addresses) != 0 || len(rep.Removed) != 2 {
		t.Errorf("addrs after down = %+v, report %+v", f.Addresses, rep)
	}
	want := []string{"net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.ens33.arp_announce=0", "net.ipv4.conf.ens33.arp_ignore=0"}
	if !slices.Equal(rep.Restored, want) || f.Sysctls["net/ipv4/conf/all/arp_announce"] != "2" {
		t.Errorf("restored %q, want %q; sysctls %v", rep.Restored, want, f.Sysctls)
	}
}
