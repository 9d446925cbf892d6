package keepalived

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/conf"
	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/golden")

// configID is the host the golden configs are imported for (@host1 lines).
const configID = "host1"

func goldenConfigs(t *testing.T) []string {
	files, err := filepath.Glob("testdata/golden/*.conf")
	if err != nil || len(files) < 4 {
		t.Fatalf("want at least 4 golden configs, got %v (%v)", files, err)
	}
	return files
}

// importFile is `lvsha import` without the command: the TOML and every
// warning, one a line.
func importFile(t *testing.T, file string) (*Result, string) {
	t.Helper()
	root, pw, err := ParseFile(file, Options{ConfigID: configID})
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	res := Translate(file, root)
	var b strings.Builder
	for _, w := range append(pw, res.Warnings...) {
		b.WriteString(w.String() + "\n")
	}
	return res, b.String()
}

func compareGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden (go test ./conf/keepalived -update creates it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs\n--- got\n%s--- want\n%s", golden, got, want)
	}
}

// TestGolden imports each golden keepalived config and compares the TOML
// and the warnings with their golden files; the TOML must pass lvsha's
// own validation (`lvsha -t`).
func TestGolden(t *testing.T) {
	for _, f := range goldenConfigs(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			res, warnings := importFile(t, f)
			base := strings.TrimSuffix(f, ".conf")
			compareGolden(t, base+".toml", res.TOML)
			compareGolden(t, base+".warnings", []byte(warnings))
			if len(res.Invalid) > 0 {
				t.Errorf("translation is invalid: %v", res.Invalid)
			}
			cfg, diags, err := conf.Load(base + ".toml")
			if err != nil {
				t.Fatalf("lvsha -t refuses the output: %v", err)
			}
			for _, d := range diags {
				t.Logf("lvsha -t: %s", d.Format(base+".toml"))
			}
			if len(cfg.VRRP)+len(cfg.Services) == 0 {
				t.Errorf("nothing translated")
			}
		})
	}
}

// TestKeepalivedAccepts runs keepalived 2.2.7's own config test on every
// golden input, in a network namespace of its own with the interfaces the
// configs name, so that the goldens are configs keepalived reads as meant.
// keepalived exits 0 for a config it has nothing to say about and 5 for one
// it has notices about (a default it applied, a keyword it ignores); those
// notices are golden too (NAME.keepalived-t).
func TestKeepalivedAccepts(t *testing.T) {
	testutil.NeedRoot(t)
	if _, err := exec.LookPath("keepalived"); err != nil {
		testutil.Unavailable(t, "keepalived not installed (make setup)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		testutil.Unavailable(t, "unshare not installed")
	}
	for _, f := range goldenConfigs(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			script := "for i in 0 1 2; do ip link add eth$i type veth peer name peer$i || exit 99; done; exec keepalived -i " + configID + " -t -f " + filepath.Base(f)
			cmd := exec.Command("unshare", "-n", "sh", "-c", script)
			cmd.Dir = filepath.Dir(f)
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stderr, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			out := stderr.Bytes()
			compareGolden(t, strings.TrimSuffix(f, ".conf")+".keepalived-t", out)
			switch {
			case code == 0 && len(out) == 0:
			case code == 5 && len(out) > 0:
			default:
				t.Errorf("keepalived -t exited %d:\n%s", code, out)
			}
		})
	}
}
