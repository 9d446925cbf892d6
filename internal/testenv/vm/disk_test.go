package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvsha/lvsha/internal/testenv/testutil"
)

// TestDiskInitramfs: BootDisk's initramfs loads what mounting an ext4
// virtio disk needs (crc32c before ext4, which asks for it only at mount
// time), carries the files under /payload, and its /init copies them into
// the root before it hands PID 1 to the disk's init. (TestSystemdUnits in
// internal/scenarios/systemdtest boots one.)
func TestDiskInitramfs(t *testing.T) {
	kdir, err := KernelDir(t.Context(), nil)
	if err != nil {
		testutil.Unavailable(t, "no VM kernel: "+err.Error())
	}
	dir := t.TempDir()
	host := filepath.Join(dir, "run.sh")
	if err := os.WriteFile(host, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd")
	if err := buildDiskInitramfs(out, kdir, map[string]string{"/usr/local/sbin/run": host}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]cpioEntry{}
	for _, e := range readCPIO(t, b) {
		files[e.name] = e
	}
	if e, ok := files["payload/usr/local/sbin/run"]; !ok || e.mode&0o777 != 0o755 {
		t.Errorf("payload file missing or not executable: %+v", e)
	}
	init := files["init"].data
	pos := func(s string) int {
		i := strings.Index(init, s)
		if i < 0 {
			t.Errorf("/init lacks %q:\n%s", s, init)
		}
		return i
	}
	crc, ext4, mount, cp, sw := pos("/mod/crc32c_generic.ko"), pos("/mod/ext4.ko"), pos("mount -t ext4 /dev/vda /newroot"),
		pos("cp -a /payload/. /newroot/"), pos("exec switch_root /newroot /sbin/init")
	if !(crc < ext4 && ext4 < mount && mount < cp && cp < sw) {
		t.Errorf("/init steps out of order:\n%s", init)
	}
	for _, m := range []string{"virtio_pci", "virtio_blk", "jbd2", "mbcache"} {
		if _, ok := files["mod/"+m+".ko"]; !ok {
			t.Errorf("module %s missing", m)
		}
	}
}
