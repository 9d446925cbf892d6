package conf

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/healthcheck"
	"github.com/lvsha/lvsha/lvs"
	"github.com/lvsha/lvsha/vrrp"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/bad")

// TestBadConfigs checks the exact diagnostics for each broken config against
// its golden file: every problem of a file, each with its line and key.
func TestBadConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test configs: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, _, err := Load(f)
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Load(%s) = %v, want an *InvalidError", f, err)
			}
			got := inv.Error() + "\n"
			golden := strings.TrimSuffix(f, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run go test ./conf -update to create): %v", err)
			}
			if got != string(want) {
				t.Errorf("diagnostics differ from %s\n--- got\n%s--- want\n%s", golden, got, want)
			}
			// Every line names the file and a line number.
			for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
				if !strings.HasPrefix(l, f+":") {
					t.Errorf("line does not start with the file name: %q", l)
				}
			}
		})
	}
}

func TestEveryDiagnosticHasALine(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.toml")
	for _, f := range files {
		_, _, err := Load(f)
		var inv *InvalidError
		if !errors.As(err, &inv) {
			t.Fatalf("%s: want invalid", f)
		}
		for _, d := range inv.Diags {
			if d.Pos.Line == 0 {
				t.Errorf("%s: no line for %q", f, d.Format(f))
			}
		}
	}
}

func TestExamplesAreValid(t *testing.T) {
	files, err := filepath.Glob("../packaging/examples/*.toml")
	if err != nil || len(files) < 3 {
		t.Fatalf("want at least 3 examples, got %v (%v)", files, err)
	}
	for _, f := range files {
		cfg, warnings, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, w := range warnings {
			t.Errorf("%s: unexpected warning %s", f, w.Format(f))
		}
		if cfg.Summary() == "" {
			t.Errorf("%s: empty summary", f)
		}
	}
}

func TestDefaultsAndParsedForms(t *testing.T) {
	src := `
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["10.0.0.1/24", "10.0.0.2"]

[[virtual_server]]
address = "10.0.0.1:80"
[virtual_server.check]
type = "http"
path = "/health"
[[virtual_server.real_server]]
address = "10.0.1.1:80"
[[virtual_server.real_server]]
address = "10.0.1.2:80"
weight = 3
[virtual_server.real_server.check]
path = "/other"
fall = 5
[[virtual_server.real_server]]
address = "10.0.1.3:80"
`
	cfg, warnings, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	in := cfg.VRRP[0]
	if in.Priority != 100 || in.Version != 3 || !in.Preempt || in.AdvertInterval.D() != time.Second || in.GARPRepeat != 5 {
		t.Errorf("vrrp defaults wrong: %+v", in)
	}
	if g := cfg.Global; g.StateDir != "/var/lib/lvsha" || g.ControlSocket != "/run/lvsha/lvsha.sock" {
		t.Errorf("global defaults wrong: %+v", g)
	}
	rt := in.Runtime
	if rt.Name != "VI_1" || rt.Interface != "eth0" || rt.VRID != 51 || rt.Priority != 100 || rt.Version != 3 || !rt.Preempt ||
		rt.AdvertInterval != time.Second || rt.GARPRepeat != 5 || rt.GARPDelay != 5*time.Second || rt.NotifyTimeout != 10*time.Second ||
		rt.ChecksumMode != vrrp.ChecksumPseudoHeader {
		t.Errorf("vrrp runtime config wrong: %+v", rt)
	}
	if got := rt.VIPs[1].String(); got != "10.0.0.2/32" {
		t.Errorf("bare VIP parsed as %s, want /32", got)
	}
	vs := cfg.Services[0]
	if vs.Scheduler != "wlc" || vs.Forwarding != "dr" || vs.OnFailure != "inhibit" || vs.Protocol != "tcp" {
		t.Errorf("service defaults wrong: %+v", vs)
	}
	svc := vs.IPVS
	if vs.ID != "TCP 10.0.0.1:80" || svc.Key != (lvs.Key{Proto: lvs.TCP, Addr: netip.MustParseAddrPort("10.0.0.1:80")}) ||
		svc.Scheduler != "wlc" || svc.Forwarding != lvs.DR || svc.OnFailure != lvs.Inhibit || svc.Quorum != 1 || len(svc.Reals) != 3 ||
		svc.Reals[1] != (lvs.Real{Addr: netip.MustParseAddrPort("10.0.1.2:80"), Weight: 3}) {
		t.Errorf("IPVS service wrong: %s %+v", vs.ID, svc)
	}
	r0, r1, r2 := vs.Reals[0], vs.Reals[1], vs.Reals[2]
	if r0.ID != "TCP 10.0.0.1:80 -> 10.0.1.1:80" || svc.Reals[0].Addr.String() != "10.0.1.1:80" {
		t.Errorf("real 0: %s %v", r0.ID, svc.Reals[0].Addr)
	}
	want := &healthcheck.Spec{Type: healthcheck.TypeHTTP, Path: "/health", Method: "GET", Status: []healthcheck.StatusRange{{Lo: 200, Hi: 299}},
		MaxBody: 64 << 10, Interval: 5 * time.Second, Timeout: 3 * time.Second, Rise: 1, Fall: 2, InitialUp: true}
	if r0.Spec == nil || r0.Spec.Key() != want.Key() {
		t.Errorf("real 0 should have the service check with its defaults:\n%s\nwant\n%s", r0.Spec.Key(), want.Key())
	}
	if r2.Spec != r0.Spec {
		t.Error("real servers without an override do not share the service's Spec")
	}
	want.Path, want.Fall = "/other", 5
	if r1.Weight != 3 || r1.Spec == r0.Spec || r1.Spec.Key() != want.Key() {
		t.Errorf("real 1 override not merged onto the service check: %+v", r1.Spec)
	}
	if vs.Check.Path != "/health" || vs.Check.Fall != 2 || r0.Spec.Path != "/health" {
		t.Errorf("override leaked into the service check: %+v", vs.Check)
	}
}

// TestAllowedZeros: every key whose zero is accepted has the documented
// effect in the runtime value (0 = off, none, or the real server's own).
func TestAllowedZeros(t *testing.T) {
	const head = `
[global]
realtime_priority = 0
metrics_listen = ""
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["10.0.0.1/24"]
unicast_src_ip = ""
unicast_peer = []
auth_pass = ""
notify = []
preempt_delay = "0s"
garp_master_delay = "0s"
garp_master_refresh = "0s"
garp_interval = "0s"
track_interface = [{ name = "eth1", weight = 0 }]
[[virtual_server]]
address = "10.0.0.1:80"
persistence_timeout = "0s"
quorum = 0
sorry_server = ""
[virtual_server.check]
type = "http"
port = 0
host = ""
body_regex = ""
tls_server_name = ""
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 0
[[virtual_server]]
fwmark = 0
address = "10.0.0.1:81"
[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
virtual_ipaddress = ["10.0.0.2/24"]
preempt = false
`
	cfg, _, err := Parse("t.toml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	rt, svc := cfg.VRRP[0].Runtime, cfg.Services[0].IPVS
	spec := cfg.Services[0].Reals[0].Spec
	for _, c := range []struct {
		key string
		ok  bool
	}{
		{"realtime_priority 0: normal scheduling", cfg.Global.RealtimePriority == 0},
		{"preempt_delay 0: preempt at once", rt.PreemptDelay == 0 && rt.Preempt},
		{"garp_master_delay 0: no second burst", rt.GARPDelay == 0},
		{"garp_master_refresh 0: no refresh", rt.GARPRefresh == 0},
		{"garp_interval 0: a burst at once", rt.GARPInterval == 0 && rt.GARPRepeat == 5},
		{"track weight 0: FAULT while down", len(rt.Track) == 1 && rt.Track[0] == vrrp.TrackInterface{Name: "eth1", Weight: 0}},
		{"persistence_timeout 0: not persistent", svc.Persistence == 0},
		{"quorum 0: no quorum", svc.Quorum == 0},
		{"weight 0: in IPVS with weight 0", svc.Reals[0].Weight == 0},
		{"check port 0: the real server's port", spec.Port == 0},
		{"fwmark 0: an address service", cfg.Services[1].IPVS.Key.FWMark == 0 && cfg.Services[1].ID == "TCP 10.0.0.1:81"},
		{"metrics_listen \"\": no metrics", cfg.Global.MetricsListen == ""},
		{"no unicast_src_ip or unicast_peer: multicast", !rt.UnicastSrc.IsValid() && len(rt.UnicastPeers) == 0},
		{"auth_pass \"\": no authentication", rt.AuthPass == ""},
		{"notify []: no command", len(rt.Notify) == 0},
		{"preempt false: no preemption", !cfg.VRRP[1].Runtime.Preempt},
		{"sorry_server \"\": none", !svc.Sorry.IsValid()},
		{"host \"\": the target's address", spec.Host == ""},
		{"body_regex \"\": no body match", spec.BodyRegex == nil},
		{"tls_server_name \"\": host or address", spec.TLSServerName == ""},
	} {
		if !c.ok {
			t.Errorf("%s: not so (vrrp %+v, ipvs %+v, check %+v)", c.key, rt, svc, spec)
		}
	}

	// Zeros that would mean nothing are refused, not turned into a default.
	for key, src := range map[string]string{
		"garp_master_repeat": "[[vrrp_instance]]\nname = \"v\"\ninterface = \"e\"\nvirtual_router_id = 1\nvirtual_ipaddress = [\"10.0.0.1\"]\ngarp_master_repeat = 0\n",
		"max_body":           "[[virtual_server]]\naddress = \"10.0.0.1:80\"\n[virtual_server.check]\ntype = \"http\"\nmax_body = 0\n",
		"status":             "[[virtual_server]]\naddress = \"10.0.0.1:80\"\n[virtual_server.check]\ntype = \"http\"\nstatus = []\n",
		"rise":               "[[virtual_server]]\naddress = \"10.0.0.1:80\"\n[virtual_server.check]\ntype = \"tcp\"\nrise = 0\n",
		"fall":               "[[virtual_server]]\naddress = \"10.0.0.1:80\"\n[virtual_server.check]\ntype = \"tcp\"\nfall = 0\n",
		"interval":           "[[virtual_server]]\naddress = \"10.0.0.1:80\"\n[virtual_server.check]\ntype = \"tcp\"\ninterval = \"0s\"\n",
	} {
		_, _, err := Parse("t.toml", []byte(src))
		var inv *InvalidError
		if !errors.As(err, &inv) || !strings.Contains(err.Error(), "."+key+": ") {
			t.Errorf("%s = 0 accepted or not reported on its key: %v", key, err)
		}
	}
}

// TestHeaderInjection: a path or host that would break the request line
// is refused with its key.
func TestHeaderInjection(t *testing.T) {
	for key, val := range map[string]string{"path": `"/a b"`, "host": `"a\r\nX-Injected: 1"`} {
		src := "[[virtual_server]]\naddress = \"10.0.0.1:80\"\n[virtual_server.check]\ntype = \"http\"\n" + key + " = " + val + "\n"
		if _, _, err := Parse("t.toml", []byte(src)); err == nil || !strings.Contains(err.Error(), "check."+key+": ") {
			t.Errorf("%s = %s: %v", key, val, err)
		}
	}
}

// TestRuntimeEnums: each name of an enumerated key becomes its value.
func TestRuntimeEnums(t *testing.T) {
	src := `
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["10.0.0.1/24"]
checksum = "rfc"
[[virtual_server]]
fwmark = 5
protocol = "udp"
forwarding = "tun"
on_failure = "remove"
[virtual_server.check]
type = "exec"
argv = ["/bin/true"]
initial_state = "down"
[[virtual_server.real_server]]
address = "10.0.1.1:53"
[[virtual_server]]
address = "10.0.0.1:53"
protocol = "udp"
forwarding = "nat"
[virtual_server.check]
type = "https"
[[virtual_server.real_server]]
address = "10.0.1.1:53"
`
	cfg, _, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	s0, s1 := cfg.Services[0], cfg.Services[1]
	if cfg.VRRP[0].Runtime.ChecksumMode != vrrp.ChecksumMessage {
		t.Error("checksum rfc")
	}
	if s0.ID != "FWM 5" || s0.IPVS.Key != (lvs.Key{FWMark: 5}) || s0.IPVS.Forwarding != lvs.Tunnel || s0.IPVS.OnFailure != lvs.Remove {
		t.Errorf("service 0: %s %+v", s0.ID, s0.IPVS)
	}
	if sp := s0.Reals[0].Spec; sp.Type != healthcheck.TypeExec || sp.InitialUp {
		t.Errorf("service 0 check: %+v", sp)
	}
	if s1.ID != "UDP 10.0.0.1:53" || s1.IPVS.Key.Proto != lvs.UDP || s1.IPVS.Forwarding != lvs.NAT || s1.Reals[0].Spec.Type != healthcheck.TypeHTTPS ||
		!s1.Reals[0].Spec.InitialUp || s1.Reals[0].ID != "UDP 10.0.0.1:53 -> 10.0.1.1:53" {
		t.Errorf("service 1: %s %+v %+v", s1.ID, s1.IPVS, s1.Reals[0].Spec)
	}
}

func TestPositions(t *testing.T) {
	src := `# c
[global]
log_level = "info" # x

[[a]]
k = 1
[a.sub]
x = [1,
  "two", {y = 3}]
[[a]]
k = 2
[[a.b]]
z = """multi
line"""
w = 'lit'
[[a.b]]
z = "q"
`
	ix := indexPositions([]byte(src))
	want := map[string]Pos{
		"global.log_level": {3, 1},
		"a[0].k":           {6, 1},
		"a[0].sub":         {7, 2},
		"a[0].sub.x[1]":    {9, 3},
		"a[0].sub.x[2].y":  {9, 11},
		"a[1].k":           {11, 1},
		"a[1].b[0].w":      {15, 1},
		"a[1].b[1].z":      {17, 1},
	}
	for path, p := range want {
		if got := ix[path]; got != p {
			t.Errorf("%s at %v, want %v", path, got, p)
		}
	}
	if got := ix.lookup("a[1].b[0].missing"); got != (Pos{12, 3}) {
		t.Errorf("lookup falls back to the table: got %v", got)
	}
}

func TestUnknownFile(t *testing.T) {
	if _, _, err := Load("testdata/does-not-exist.toml"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want a not-exist error, got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, g := range []string{"../packaging/examples/*.toml", "testdata/bad/*.toml"} {
		files, _ := filepath.Glob(g)
		for _, p := range files {
			b, err := os.ReadFile(p)
			if err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, _, err := Parse("fuzz.toml", b)
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
		var inv *InvalidError
		if err != nil && !errors.As(err, &inv) {
			t.Fatalf("Parse returned a non-InvalidError: %v", err)
		}
	})
}

// TestLibraryRefusal: what a library refuses of a runtime value that passed
// conf's own rules is an error on the key (a valid config must never fail
// at start); after an error of conf's own it is not repeated.
func TestLibraryRefusal(t *testing.T) {
	refuse := func() error { return errors.New("refused") }
	v := &validator{}
	v.warnf("a", "just a warning")
	v.library("a", 0, refuse)
	if len(v.diags) != 2 || v.diags[1].Path != "a" || v.diags[1].Msg != "refused" || v.diags[1].Warning {
		t.Errorf("after a warning: %+v", v.diags)
	}
	v = &validator{}
	v.errf("b.key", "conf's own error")
	v.library("b", 0, refuse)
	if len(v.diags) != 1 {
		t.Errorf("after an error: %+v", v.diags)
	}
	v = &validator{}
	v.library("c", 0, func() error { return nil })
	if len(v.diags) != 0 {
		t.Errorf("accepted value reported: %+v", v.diags)
	}
}

// TestAuthPassReadable: a password in a file others can read is a warning
// on its key; the same file with mode 0600, or without a password, is not.
func TestAuthPassReadable(t *testing.T) {
	const body = `
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
version = 2
virtual_ipaddress = ["10.0.0.1"]
auth_pass = "secret"
`
	for _, tc := range []struct {
		mode     os.FileMode
		body     string
		warnings int
	}{{0o644, body, 1}, {0o640, body, 1}, {0o600, body, 0}, {0o644, strings.Replace(body, `auth_pass = "secret"`, "", 1), 0}} {
		f := filepath.Join(t.TempDir(), "l.toml")
		if err := os.WriteFile(f, []byte(tc.body), tc.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, tc.mode); err != nil { // whatever the umask
			t.Fatal(err)
		}
		_, warnings, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(warnings) != tc.warnings {
			t.Errorf("mode %04o: warnings %v, want %d", tc.mode, warnings, tc.warnings)
			continue
		}
		if tc.warnings == 1 {
			if w := warnings[0]; w.Path != "vrrp_instance[0].auth_pass" || w.Pos.Line != 8 || !strings.Contains(w.Msg, "chmod 600") {
				t.Errorf("warning %+v", w)
			}
		}
	}
}

// TestNotifyCapabilities: the names become the capability set the daemon
// lets notify commands keep; none by default.
func TestNotifyCapabilities(t *testing.T) {
	for src, want := range map[string]uint64{
		``:                         0,
		`notify_capabilities = []`: 0,
		`notify_capabilities = ["CAP_NET_ADMIN"]`:                1 << 12,
		`notify_capabilities = ["CAP_NET_RAW", "CAP_NET_ADMIN"]`: 1<<12 | 1<<13,
	} {
		cfg, _, err := Parse("t.toml", []byte("[global]\n"+src+"\n"))
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got := cfg.Global.NotifyCaps; got != want {
			t.Errorf("%s: NotifyCaps %#x, want %#x", src, got, want)
		}
	}
}
