// Package pkgtest tests the Debian package: built by `make deb`, installed
// with dpkg into a clean Debian root, then run there.
package pkgtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// debRoot is a minimal bookworm made by debootstrap once and copied per test,
// so every run installs into a root that has never seen lvsha.
const debRoot = "/var/cache/lvsha-debroot"

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestDebInstallsIntoCleanDebian(t *testing.T) {
	testutil.NeedRoot(t)
	if _, err := exec.LookPath("debootstrap"); err != nil {
		testutil.Unavailable(t, "debootstrap is not installed (make setup installs it)")
	}
	repo, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(debRoot, "usr/bin/dpkg")); err != nil {
		tmp := debRoot + ".tmp"
		_ = os.RemoveAll(tmp)
		run(t, repo, "debootstrap", "--variant=minbase", "bookworm", tmp, "http://deb.debian.org/debian")
		if err := os.Rename(tmp, debRoot); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.RemoveAll(filepath.Join(repo, "dist"))
	run(t, repo, "make", "deb")
	debs, _ := filepath.Glob(filepath.Join(repo, "dist", "lvsha_*_amd64.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in dist/, got %v", debs)
	}
	info := run(t, repo, "dpkg-deb", "--info", debs[0])
	for _, want := range []string{"Package: lvsha", "Architecture: amd64"} {
		if !strings.Contains(info, want) {
			t.Errorf("control lacks %q:\n%s", want, info)
		}
	}

	root := filepath.Join(t.TempDir(), "root")
	run(t, "/", "cp", "-a", debRoot, root)
	data, err := os.ReadFile(debs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "tmp/lvsha.deb"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "/", "chroot", root, "dpkg", "-i", "/tmp/lvsha.deb")

	if out := run(t, "/", "chroot", root, "/usr/sbin/lvsha", "version"); !strings.HasPrefix(out, "lvsha ") {
		t.Errorf("lvsha version printed %q", out)
	}
	for _, ex := range []string{"director1.toml", "director2.toml", "realserver.toml"} {
		out := run(t, "/", "chroot", root, "/usr/sbin/lvsha", "-t", "-f", "/usr/share/doc/lvsha/examples/"+ex)
		if !strings.Contains(out, "config is valid") {
			t.Errorf("%s: %s", ex, out)
		}
	}
	for _, f := range []string{
		"usr/lib/systemd/system/lvsha.service",
		"usr/lib/systemd/system/lvsha-realserver.service",
		"usr/share/man/man8/lvsha.8.gz",
		"usr/share/man/man5/lvsha.toml.5.gz",
		"usr/lib/modules-load.d/lvsha.conf",
		"etc/lvsha",
	} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("installed package lacks %s: %v", f, err)
		}
	}
	// The alert rules and the dashboard, as they are in the repository.
	for _, f := range []string{"lvsha-alerts.yml", "lvsha-dashboard.json"} {
		got, err := os.ReadFile(filepath.Join(root, "usr/share/lvsha/monitoring", f))
		if err != nil {
			t.Errorf("installed package lacks %s: %v", f, err)
			continue
		}
		if want, err := os.ReadFile(filepath.Join(repo, "packaging/monitoring", f)); err != nil || !bytes.Equal(got, want) {
			t.Errorf("installed %s differs from packaging/monitoring/%s (%v)", f, f, err)
		}
	}
	run(t, "/", "chroot", root, "dpkg", "--purge", "lvsha")
	if _, err := os.Stat(filepath.Join(root, "usr/sbin/lvsha")); !os.IsNotExist(err) {
		t.Errorf("binary still there after purge: %v", err)
	}
}
