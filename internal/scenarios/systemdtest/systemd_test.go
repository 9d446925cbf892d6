// Package systemdtest tests the packaged systemd units for real: it boots a
// Debian bookworm root with systemd as PID 1 in the QEMU VM (Debian's own
// kernel, real IPVS), installs the .deb that `make deb` builds with dpkg, and
// drives lvsha.service and lvsha-realserver.service with systemctl.
//
// TestSystemdUnits is the host side: it makes sure the cached root image
// exists (mkroot.sh, also run by `make setup`), builds the .deb and this
// package's test binary, boots the image and mirrors each guest subtest's
// verdict. TestGuestSystemd is the guest side: systemd starts it once the
// boot reached multi-user.target, and it prints the result marker and
// powers the VM off.
package systemdtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
	"github.com/lvsha/lvsha/internal/testenv/vm"
	"github.com/lvsha/lvsha/internal/testenv/vm/vmtest"
)

// runner is what the image's lvsha-vm-run.service starts: it prints the
// markers the host waits for (the nonce is on the kernel command line) and
// runs the guest test.
const runner = `#!/bin/sh
exec >/dev/console 2>&1
nonce=$(sed -n 's/.*` + vm.NonceParam + `=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "lvsha-vm-start $nonce"
systemd-analyze time --no-pager || true
cd /root
LVSHA_IN_VM=1 LVSHA_STRICT=1 ./systemd.test -test.run '^TestGuestSystemd$' -test.v -test.count=1
rc=$?
echo
echo "lvsha-vm-result $nonce $rc"
systemctl poweroff --force --force
`

func TestSystemdUnits(t *testing.T) {
	if vm.InGuest() {
		t.Skip("host-side launcher; the guest runs TestGuestSystemd")
	}
	testutil.NeedRoot(t)
	vmtest.Need(t)
	repo, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	image := rootImage(t)
	deb := buildDeb(t, repo)
	bin := vmtest.BuildTest(t)
	run := filepath.Join(t.TempDir(), "lvsha-vm-run")
	if err := os.WriteFile(run, []byte(runner), 0o755); err != nil {
		t.Fatal(err)
	}

	var console strings.Builder
	start := time.Now()
	res, err := vm.BootDisk(t.Context(), image, vm.Options{
		Files: map[string]string{
			"/root/systemd.test":           bin,
			"/root/lvsha.deb":              deb,
			"/usr/local/sbin/lvsha-vm-run": run,
		},
		// Two CPUs: the daemon's SCHED_RR threads and systemd each get one.
		CPUs:    2,
		Timeout: 8 * time.Minute,
		Console: &console,
	})
	if err != nil {
		t.Fatalf("vm: %v (after %v)\nconsole:\n%s", err, time.Since(start).Round(time.Second), res.Console)
	}
	t.Logf("vm: systemd booted to the test in %v; whole run %v", res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	if m := regexp.MustCompile(`Startup finished in .*`).FindString(res.Console); m != "" {
		t.Logf("guest: %s", strings.TrimSpace(m))
	}
	failed := mirror(t, res.Console)
	switch {
	case res.ExitCode != 0 && failed == 0:
		t.Errorf("guest tests failed (exit %d) outside the subtests; console:\n%s", res.ExitCode, res.Console)
	case res.ExitCode != 0:
		t.Errorf("guest tests failed (exit %d): %d subtests, each above with the guest's output", res.ExitCode, failed)
	case testing.Verbose():
		t.Logf("console:\n%s", res.Console)
	}
}

// mirror reports each guest subtest of TestGuestSystemd as a host subtest
// of the same name, failing with the guest's output for it, so a failure
// names what broke.
func mirror(t *testing.T, console string) (failed int) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*--- (PASS|FAIL|SKIP): TestGuestSystemd/(\S+) \(([^)]*)\)`)
	ms := re.FindAllStringSubmatch(console, -1)
	if len(ms) == 0 {
		t.Errorf("the guest reported no subtest of TestGuestSystemd")
		return 0
	}
	for _, m := range ms {
		verdict, name, took := m[1], m[2], m[3]
		if verdict == "FAIL" {
			failed++
		}
		t.Run(name, func(t *testing.T) {
			switch verdict {
			case "FAIL":
				t.Errorf("failed in the guest (%s):\n%s", took, guestLog(console, name))
			case "SKIP":
				t.Skipf("skipped in the guest:\n%s", guestLog(console, name))
			case "PASS":
				if testing.Verbose() {
					t.Logf("passed in the guest (%s):\n%s", took, guestLog(console, name))
				}
			}
		})
	}
	return failed
}

// guestLog is what go test -v printed for one guest subtest: the lines
// from its === RUN to the next === RUN of another test.
func guestLog(console, name string) string {
	head := "=== RUN   TestGuestSystemd/" + name
	i := strings.Index(console, head)
	if i < 0 {
		return "(no output found)"
	}
	rest := console[i+len(head):]
	if j := strings.Index(rest, "\n=== RUN"); j >= 0 {
		rest = rest[:j]
	}
	return head + rest
}

// rootImage returns the cached root image for the current VM kernel,
// building it first (mkroot.sh: debootstrap and mkfs.ext4, a few minutes)
// when `make setup` has not.
func rootImage(t *testing.T) string {
	t.Helper()
	kdir, err := vm.KernelDir(t.Context(), nil)
	if err != nil {
		testutil.Unavailable(t, "no VM kernel: "+err.Error())
	}
	real, err := filepath.EvalSymlinks(kdir)
	if err != nil {
		t.Fatal(err)
	}
	cache := os.Getenv("LVSHA_SYSTEMD_CACHE")
	if cache == "" {
		cache = "/var/cache/lvsha-systemd"
	}
	image := filepath.Join(cache, "root-"+filepath.Base(real)+".img")
	if _, err := os.Stat(image); err == nil {
		return image
	}
	for _, tool := range []string{"debootstrap", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			testutil.Unavailable(t, tool+" is not installed (make setup installs it)")
		}
	}
	t.Logf("building the systemd root image %s (once)", image)
	cmd := exec.CommandContext(t.Context(), "sh", "mkroot.sh")
	cmd.Env = append(os.Environ(), "LVSHA_VM_KERNEL_DIR="+kdir, "LVSHA_SYSTEMD_CACHE="+cache)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkroot.sh: %v\n%s", err, out)
	}
	return image
}

// buildDeb runs `make deb` as the package test does and returns the .deb.
func buildDeb(t *testing.T, repo string) string {
	t.Helper()
	_ = os.RemoveAll(filepath.Join(repo, "dist"))
	cmd := exec.CommandContext(t.Context(), "make", "deb")
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(repo, "dist", "lvsha_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in dist/, got %v", debs)
	}
	// A copy: dist/ is make's, and another test may rebuild it meanwhile.
	data, err := os.ReadFile(debs[0])
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(debs[0]))
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
