package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/conf"
)

func TestImport(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "keepalived.conf")
	src := "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {\n  10.0.0.1/24\n }\n}\n"
	if err := os.WriteFile(in, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"import", in}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if _, _, err := conf.Parse("x.toml", out.Bytes()); err != nil || !strings.Contains(out.String(), "version = 2") {
		t.Fatalf("output: %v\n%s", err, out.String())
	}
	// Flags after the file; -o writes the file; --check passes with no warning.
	o := filepath.Join(dir, "lvsha.toml")
	if err := os.WriteFile(o, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"import", in, "-o", o, "--check"}, &out, &errOut); code != exitOK || out.Len() != 0 {
		t.Fatalf("exit %d, stdout %q: %s", code, out.String(), errOut.String())
	}
	if fi, err := os.Stat(o); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("-o: %v %v", fi, err)
	}
	// Something dropped (a script without an absolute path): --check fails,
	// and says where.
	if err := os.WriteFile(in, []byte(src+"vrrp_script chk {\n script true\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if code := run([]string{"import", "--check", in}, &out, &errOut); code != exitFail {
		t.Fatalf("--check with a warning: exit %d", code)
	}
	if !strings.Contains(errOut.String(), in+":8: warning: vrrp_script") {
		t.Errorf("no warning with file:line: %s", errOut.String())
	}
	// Without --check the same input succeeds.
	if code := run([]string{"import", in}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	// A broken input fails; no file is a usage error.
	if err := os.WriteFile(in, []byte("a {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"import", in}, &out, &errOut); code != exitFail {
		t.Errorf("unclosed block: exit %d", code)
	}
	if code := run([]string{"import"}, &out, &errOut); code != exitUsage {
		t.Errorf("no file: exit %d", code)
	}
}
