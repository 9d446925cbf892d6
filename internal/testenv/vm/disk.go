package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// NonceParam is the kernel command line parameter that carries a
// BootDisk run's nonce: a guest's own init system reads it from
// /proc/cmdline and prints the markers with it ("lvsha-vm-start NONCE"
// when its test starts, "lvsha-vm-result NONCE RC" when it ends).
const NonceParam = "lvsha_vm_nonce"

// diskModules let the initramfs mount the root image: a virtio disk with
// ext4 (dependencies are added automatically; ext4 asks the crypto API for
// crc32c at mount time, which no module dependency names).
var diskModules = []string{"virtio_pci", "virtio_blk", "crc32c", "ext4"}

// BootDisk boots a root file system image (raw ext4, e.g. a debootstrap
// tree made with mkfs.ext4 -d) whose /sbin/init is a full init system,
// systemd for one, instead of Run's busybox guest. A small initramfs mounts
// the image as a virtio disk, copies o.Files into it and switches root to
// /sbin/init. Writes go to a throw-away overlay (qemu snapshot=on), so one
// cached image serves every run unchanged. The guest prints the result
// marker itself (see NonceParam); o.Timeout, o.MemoryMB, o.CPUs,
// o.Console, o.KernelDir, o.Logger and o.Files apply as for Run (o.Timeout
// defaults to 5 minutes, o.MemoryMB to 1024); o.Binary, o.Args, o.Env and
// o.Modules belong to Run's guest and must be empty.
func BootDisk(ctx context.Context, image string, o Options) (Result, error) {
	if o.Binary != "" || len(o.Args) > 0 || len(o.Env) > 0 || len(o.Modules) > 0 {
		return Result{}, errors.New("vm: BootDisk: the disk's init runs the guest; Binary, Args, Env and Modules are Run's")
	}
	if _, err := os.Stat(image); err != nil {
		return Result{}, fmt.Errorf("vm: root image: %w", err)
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 1024
	}
	return launch(ctx, o, func(initrd, kdir, _ string) error {
		return buildDiskInitramfs(initrd, kdir, o.Files)
	}, []string{"-drive", "file=" + image + ",format=raw,if=virtio,snapshot=on"},
		func(nonce string) string { return NonceParam + "=" + nonce })
}

func buildDiskInitramfs(out, kdir string, files map[string]string) error {
	mods, err := newModuleSet(filepath.Join(kdir, "modules"))
	if err != nil {
		return err
	}
	for _, m := range diskModules {
		if err := mods.add(m, false); err != nil {
			return err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	c := newCPIO(f)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "newroot", "payload"} {
		c.mkdirAll(d)
	}
	c.CharDev("dev/console", 5, 1)
	c.CharDev("dev/null", 1, 3)
	c.HostFile("bin/busybox", "/bin/busybox")
	var s strings.Builder
	for i, name := range mods.order {
		c.HostFile("mod/"+name+".ko", mods.paths[i])
		fmt.Fprintf(&s, "insmod /mod/%s.ko || fail 'insmod %s'\n", name, name)
	}
	guests := make([]string, 0, len(files))
	for g := range files {
		guests = append(guests, g)
	}
	sort.Strings(guests)
	for _, g := range guests {
		c.HostFile("payload/"+path.Clean("/"+g), files[g])
	}
	// No marker on failure: the host reports ErrNoMarker with the console.
	c.File("init", 0o755, []byte(`#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin
fail() { echo "lvsha-vm: $*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
`+s.String()+`i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /newroot || fail "mount /dev/vda"
cp -a /payload/. /newroot/ || fail "copy the files into the root"
umount /proc /sys /dev
exec switch_root /newroot /sbin/init
`))
	if err := c.Close(); err != nil {
		return err
	}
	return f.Close()
}
