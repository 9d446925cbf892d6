// Package vmtest lets a Go test run its own package's tests inside lvsha's
// QEMU VM (package internal/testenv/vm): the host-side test compiles the package's
// test binary statically, boots it with a -test.run pattern, and fails with
// the guest's console when the guest tests fail.
package vmtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
)

// BuildTest compiles the test binary of the package in the current
// directory (a test's working directory is its package) with CGO_ENABLED=0,
// so it is static and runs in the busybox guest. It returns the binary path.
func BuildTest(t testing.TB) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go command not found: %v", err)
	}
	out := filepath.Join(t.TempDir(), "pkg.test")
	cmd := exec.Command(goBin, "test", "-c", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, b)
	}
	return out
}

// Need stops a host-side VM test when the VM cannot run here (a failure
// under LVSHA_STRICT=1) and skips it inside the guest.
func Need(t testing.TB) {
	t.Helper()
	if vm.InGuest() {
		t.Skip("host-side launcher; the guest runs the tests themselves")
	}
	if testing.Short() && !testutil.Strict() {
		t.Skip("boots a VM: not in -short mode (make unit)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testutil.Unavailable(t, "qemu-system-x86_64 not installed (run internal/testenv/vm/setup.sh)")
	}
	if _, err := vm.KernelDir(context.Background(), nil); err != nil {
		testutil.Unavailable(t, "no VM kernel: "+err.Error())
	}
}

// Run boots the current package's tests matching the regexp run inside the
// VM (with -test.v, LVSHA_STRICT=1 and LVSHA_IN_VM=1) and fails t when they
// fail or the VM does not finish. Extra options (files, env, modules,
// timeout) come from o; o.Binary and o.Args are set here. Inside the guest
// it skips, since it is only the host side's launcher.
func Run(t *testing.T, run string, o vm.Options) vm.Result {
	t.Helper()
	Need(t)
	ctx := t.Context()
	o.Binary = BuildTest(t)
	o.Args = append([]string{"-test.run", run, "-test.v", "-test.count=1"}, o.Args...)
	o.Env = append([]string{"LVSHA_STRICT=1"}, o.Env...)
	var live bytes.Buffer
	if testing.Verbose() {
		o.Console = &lineLogger{t: t}
	} else {
		o.Console = &live
	}
	res, err := vm.Run(context.WithoutCancel(ctx), o)
	if err != nil {
		t.Fatalf("vm: %v\nconsole:\n%s", err, res.Console)
	}
	t.Logf("vm: boot %v, total %v", res.Boot.Round(1e6), res.Total.Round(1e6))
	if res.ExitCode != 0 {
		if testing.Verbose() {
			t.Fatalf("guest tests failed (exit %d); console above", res.ExitCode)
		}
		t.Fatalf("guest tests failed (exit %d); console:\n%s", res.ExitCode, res.Console)
	}
	if !strings.Contains(res.Console, "--- PASS") {
		t.Fatalf("guest ran no test matching %q; console:\n%s", run, res.Console)
	}
	return res
}

// lineLogger sends the console to t.Log line by line while it runs.
type lineLogger struct {
	t   *testing.T
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.t.Log("guest: " + strings.TrimRight(string(l.buf[:i]), "\r"))
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}
