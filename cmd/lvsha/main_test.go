package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestConfigTestExamples(t *testing.T) {
	files, _ := filepath.Glob("../../packaging/examples/*.toml")
	if len(files) < 3 {
		t.Fatalf("examples missing: %v", files)
	}
	for _, f := range files {
		for _, flag := range []string{"-t", "--config-test"} {
			code, out, errOut := runCLI(flag, "-f", f)
			if code != 0 {
				t.Errorf("%s %s: exit %d, stderr %s", flag, f, code, errOut)
			}
			if !strings.Contains(out, "config is valid") {
				t.Errorf("%s: no summary in %q", f, out)
			}
		}
	}
}

func TestConfigTestInvalid(t *testing.T) {
	code, out, errOut := runCLI("-t", "-f", "../../conf/testdata/bad/unknown.toml")
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if out != "" {
		t.Errorf("nothing on stdout for an invalid config, got %q", out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 6 {
		t.Fatalf("want 5 problems and a summary, got:\n%s", errOut)
	}
	if !strings.HasPrefix(lines[0], "../../conf/testdata/bad/unknown.toml:2:1: global.log_levle: unknown key") {
		t.Errorf("first line %q", lines[0])
	}
	if !strings.Contains(lines[5], "5 errors") {
		t.Errorf("summary %q", lines[5])
	}
}

func TestConfigTestMissingFile(t *testing.T) {
	code, _, errOut := runCLI("-t", "-f", filepath.Join(t.TempDir(), "nope.toml"))
	if code != 1 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"},
		{"frobnicate"},
		{"-t", "-f"},
		{"version", "x"},
		{"status", "--nope"},
		{"realserver"},
		{"realserver", "sideways"},
	} {
		code, _, errOut := runCLI(args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.Contains(errOut, "Usage:") {
			t.Errorf("%v: usage not printed: %q", args, errOut)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	if code, out, _ := runCLI("version"); code != 0 || !strings.HasPrefix(out, "lvsha ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, out, _ := runCLI("help"); code != 0 || !strings.Contains(out, "realserver up|down|status") {
		t.Errorf("help: %d %q", code, out)
	}
}

func TestStatusNotRunning(t *testing.T) {
	code, _, errOut := runCLI("status", "-S", filepath.Join(t.TempDir(), "none.sock"))
	if code != 3 || !strings.Contains(errOut, "not running") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestDaemonRefusesInvalidConfig(t *testing.T) {
	f := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(f, []byte("[global]\nlog_level = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI("-f", f)
	if code != 1 || !strings.Contains(errOut, "not starting") || !strings.Contains(errOut, "bad.toml:2:1: global.log_level") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}
