package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// TestSeedScenarioVM builds lvsha, boots the VM and runs TestSeedScenario
// there; it fails unless the whole scenario passes. Under `make test`
// (LVSHA_STRICT=1) a missing qemu or kernel is a failure.
func TestSeedScenarioVM(t *testing.T) {
	res := runInVM(t, "^TestSeedScenario$")
	for _, re := range []*regexp.Regexp{regexp.MustCompile(`OUTAGE: .*`), regexp.MustCompile(`PASS: .*`), regexp.MustCompile(`failover outage .*`)} {
		if m := re.FindString(res.Console); m != "" {
			t.Log(strings.TrimSpace(m))
		}
	}
}

// runInVM builds lvsha and runs the guest tests matching pattern in the VM
// with it and the example configs; it fails the test unless they pass.
func runInVM(t *testing.T, pattern string) vm.Result {
	t.Helper()
	if testing.Short() {
		// `make unit` (-short, LVSHA_STRICT=0) runs no VM; under
		// LVSHA_STRICT=1 -short is no excuse.
		testutil.Unavailable(t, "the VM scenarios do not run with -short")
	}
	vmtest.Need(t)
	root, err := ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	lvsha := filepath.Join(t.TempDir(), "lvsha")
	if err := BuildLvsha(t.Context(), lvsha); err != nil {
		t.Fatal(err)
	}
	files, err := GuestFiles(root, lvsha)
	if err != nil {
		t.Fatal(err)
	}
	return vmtest.Run(t, pattern, VMOptions(files))
}

// TestSeedScenario is the scenario itself; it runs inside the VM, started
// by TestSeedScenarioVM.
func TestSeedScenario(t *testing.T) {
	if !vm.InGuest() {
		t.Skip("runs inside the VM, started by TestSeedScenarioVM")
	}
	// Show: the same narration as `make demo`, so the test covers it too.
	rep, err := Run(t.Context(), Config{Out: os.Stdout, Show: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", *rep)
}

// TestDeriveConfig: the examples become valid lab configs with exactly the
// intended changes.
func TestDeriveConfig(t *testing.T) {
	root, err := ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tu := DefaultTuning()
	for _, name := range []string{"director1", "director2"} {
		example, err := os.ReadFile(filepath.Join(root, "packaging", "examples", name+".toml"))
		if err != nil {
			t.Fatal(err)
		}
		tu.ControlSocket = "/run/lvsha/" + name + ".sock"
		tu.StateDir = "/var/lib/lvsha/" + name
		text, err := DeriveConfig(string(example), tu)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), name+".toml")
		if err := os.WriteFile(path, []byte(WithRealServer(text, "192.168.94.136:80")), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, _, err := conf.Load(path)
		if err != nil {
			t.Fatalf("derived %s does not load: %v\n%s", name, err, text)
		}
		in := cfg.VRRP[0]
		if in.Interface != "eth0" || in.AdvertInterval.D() != tu.AdvertInterval || cfg.Global.ControlSocket != tu.ControlSocket || cfg.Global.StateDir != tu.StateDir {
			t.Errorf("%s: vrrp %+v, control socket %q, state dir %q", name, in, cfg.Global.ControlSocket, cfg.Global.StateDir)
		}
		vs := cfg.Services[0]
		if vs.Check == nil || vs.Check.Interval.D() != tu.CheckInterval || vs.Check.Timeout.D() != tu.CheckTimeout || vs.Check.Fall != tu.Fall || vs.Check.Rise != tu.Rise {
			t.Errorf("%s: check %+v", name, vs.Check)
		}
		var reals []string
		for _, r := range vs.IPVS.Reals {
			reals = append(reals, r.Addr.String())
		}
		if got := strings.Join(reals, " "); got != "192.168.94.134:80 192.168.94.135:80 192.168.94.136:80" {
			t.Errorf("%s: real servers %s", name, got)
		}
	}
	if _, err := DeriveConfig("[global]\n", tu); err == nil || !strings.Contains(err.Error(), `interface = "ens33"`) {
		t.Errorf("a config without the expected lines: err = %v", err)
	}
}

func TestParseIPVSStats(t *testing.T) {
	const file = "   Total Incoming Outgoing         Incoming         Outgoing\n" +
		"   Conns  Packets  Packets            Bytes            Bytes\n" +
		"       A       3C        0             2A58                0\n\n" +
		" Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n" +
		"       0        0        0                0                0\n"
	st, err := parseIPVSStats(file)
	if err != nil {
		t.Fatal(err)
	}
	if want := (ipvsStats{Conns: 10, InPkts: 60, InBytes: 0x2a58}); st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	if _, err := parseIPVSStats("junk"); err == nil {
		t.Error("junk parsed")
	}
}

func TestLongestGap(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int, ok bool) request {
		r := request{start: t0.Add(time.Duration(ms-5) * time.Millisecond), end: t0.Add(time.Duration(ms) * time.Millisecond), body: "this is web1"}
		if !ok {
			r.err, r.body = errors.New("timeout"), ""
		}
		return r
	}
	rs := []request{at(0, true), at(10, true), at(260, false), at(510, false), at(530, true), at(540, true)}
	g, ok := longestGap(rs)
	if !ok || g.Length != 520*time.Millisecond || g.Failed != 2 || !g.From.Equal(t0.Add(10*time.Millisecond)) {
		t.Errorf("got %+v, %v", g, ok)
	}
	if _, ok := longestGap(rs[2:4]); ok {
		t.Error("a gap without two successes")
	}
}

func TestAlternates(t *testing.T) {
	w1, w2, w3 := "this is web1", "this is web2", "this is web3"
	for _, c := range []struct {
		got  []string
		want []string
		ok   bool
	}{
		{[]string{w1, w2, w1, w2}, []string{w1, w2}, true},
		{[]string{w2, w1, w2}, []string{w1, w2}, true},
		{[]string{w1, w1, w2}, []string{w1, w2}, false},
		{[]string{w2, w2}, []string{w1, w2}, false},
		{[]string{w1, w2, w3, w1}, []string{w1, w2}, false},
		{[]string{w3, w1, w2, w3, w1, w2}, []string{w1, w2, w3}, true},
	} {
		if err := alternates(c.got, c.want...); (err == nil) != c.ok {
			t.Errorf("alternates(%q) = %v, want ok %v", c.got, err, c.ok)
		}
	}
}

func TestBalanced(t *testing.T) {
	w1, w2, w3 := "this is web1", "this is web2", "this is web3"
	for _, c := range []struct {
		got  []string
		want []string
		ok   bool
	}{
		{[]string{w1, w2, w2, w1, w2, w1}, []string{w1, w2}, true},
		{[]string{w2, w1, w2, w1, w2, w1, w2, w1, w2, w2}, []string{w1, w2}, true},
		{[]string{w2, w2, w2, w1, w2, w2}, []string{w1, w2}, false},
		{[]string{w2, w2, w2}, []string{w1, w2}, false},
		{[]string{w1, w2, w3}, []string{w1, w2}, false},
	} {
		if err := balanced(c.got, 2, c.want...); (err == nil) != c.ok {
			t.Errorf("balanced(%q) = %v, want ok %v", c.got, err, c.ok)
		}
	}
}

func TestRenderStream(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var rs []request
	for i, b := range []string{"this is web1", "this is web2", "", "this is web2"} {
		r := request{start: t0.Add(time.Duration(i) * time.Second), body: b}
		if b == "" {
			r.err = errors.New("timeout")
		}
		rs = append(rs, r)
	}
	got := renderStream(rs, 5, streamMark{At: t0.Add(1500 * time.Millisecond), Label: "K"}, streamMark{At: t0.Add(time.Hour), Label: "end"})
	if want := "12[K]\n.2\n[end]"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestMasterDownInterval(t *testing.T) {
	// RFC 9568 with the seed's backup: priority 100, 100ms adverts.
	if got, want := MasterDownInterval(100*time.Millisecond, 100), 360937500*time.Nanosecond; got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestWaitFor(t *testing.T) {
	calls := 0
	took, err := waitFor(t.Context(), "three calls", time.Minute, time.Millisecond, func() error {
		if calls++; calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if err != nil || calls != 3 || took <= 0 {
		t.Errorf("took %v, err %v, calls %d", took, err, calls)
	}
	// A fatal answer ends the wait at once, with its reason.
	calls = 0
	_, err = waitFor(t.Context(), "a dead daemon", time.Minute, time.Millisecond, func() error {
		calls++
		return fatalf("lvsha exited")
	})
	if calls != 1 || err == nil || !strings.Contains(err.Error(), "waiting for a dead daemon: lvsha exited") {
		t.Errorf("calls %d, err %v", calls, err)
	}
	// A timeout says what it was still seeing.
	_, err = waitFor(t.Context(), "never", 20*time.Millisecond, time.Millisecond, func() error { return errors.New("director2 BACKUP") })
	if err == nil || !strings.Contains(err.Error(), "timed out after 20ms waiting for never: last seen: director2 BACKUP") {
		t.Errorf("err %v", err)
	}
}
