package conf

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	if got := in.VIPPrefixes[1].String(); got != "10.0.0.2/32" {
		t.Errorf("bare VIP parsed as %s, want /32", got)
	}
	vs := cfg.Services[0]
	if vs.Scheduler != "wlc" || vs.Forwarding != "dr" || vs.OnFailure != "inhibit" || vs.Protocol != "tcp" {
		t.Errorf("service defaults wrong: %+v", vs)
	}
	r0, r1 := vs.Reals[0], vs.Reals[1]
	if r0.Weight != 1 || r0.Check == nil || r0.Check.Path != "/health" || r0.Check.Fall != 2 {
		t.Errorf("real 0 should inherit the service check: %+v %+v", r0, r0.Check)
	}
	if r1.Weight != 3 || r1.Check.Path != "/other" || r1.Check.Fall != 5 || r1.Check.Type != "http" || r1.Check.Interval.D() != 5*time.Second {
		t.Errorf("real 1 override not merged onto the service check: %+v", r1.Check)
	}
	if vs.Check.Path != "/health" || vs.Check.Fall != 2 {
		t.Errorf("override leaked into the service check: %+v", vs.Check)
	}
	if r0.Addr.String() != "10.0.1.1:80" || vs.Addr.String() != "10.0.0.1:80" {
		t.Errorf("addresses not parsed: %v %v", r0.Addr, vs.Addr)
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
