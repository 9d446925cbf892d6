#!/bin/sh
# mkroot.sh builds the disk image the systemd test boots: Debian bookworm
# (debootstrap minbase + systemd) with systemd as init, the VM kernel's
# network modules and a boot trimmed to what the test needs.
#
#   mkroot.sh     build $LVSHA_SYSTEMD_CACHE/root-<kernel>.img unless it exists
#
# The debootstrap tree ($CACHE/root) is fetched once; the image is made from
# a copy of it with the modules of the VM kernel ($LVSHA_VM_KERNEL_DIR, default
# /var/cache/lvsha-vm/current) and depmod run inside, so a new kernel needs a
# new image but no new download. Runs as root; `make setup` calls it, the
# test calls it on first use. Every result is renamed into place when it is
# complete, so an interrupted run is never used.
set -eu

CACHE=${LVSHA_SYSTEMD_CACHE:-/var/cache/lvsha-systemd}
KDIR=${LVSHA_VM_KERNEL_DIR:-/var/cache/lvsha-vm/current}
MIRROR=${LVSHA_DEBIAN_MIRROR:-http://deb.debian.org/debian}

[ -e "$KDIR/vmlinux" ] || { echo "mkroot.sh: no VM kernel in $KDIR (run internal/testenv/vm/setup.sh)" >&2; exit 1; }
kver=$(basename "$(readlink -f "$KDIR")")
img=$CACHE/root-$kver.img
mkdir -p "$CACHE"
# Concurrent callers wait for the first one.
exec 9>"$CACHE/.lock"
flock 9
if [ -e "$img" ]; then
	echo "mkroot.sh: $img ready"
	exit 0
fi

if [ ! -x "$CACHE/root/usr/bin/systemctl" ]; then
	rm -rf "$CACHE/root.tmp"
	# systemd-sysv makes systemd /sbin/init; kmod gives the unit's
	# modprobe; iproute2, ipvsadm, procps and libcap2-bin are what the
	# test looks at the daemon with. No udev: nothing waits for devices.
	debootstrap --variant=minbase \
		--include=systemd,systemd-sysv,kmod,iproute2,ipvsadm,procps,libcap2-bin \
		bookworm "$CACHE/root.tmp" "$MIRROR"
	rm -rf "$CACHE/root.tmp/var/cache/apt/archives"/*.deb "$CACHE/root.tmp/var/lib/apt/lists"/*_Packages
	mv "$CACHE/root.tmp" "$CACHE/root"
fi

tmp=$(mktemp -d "$CACHE/.img.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
r=$tmp/root
cp -a "$CACHE/root" "$r"

# The kernel's network, crypto and library modules (IPVS, dummy, veth and
# their dependencies), indexed by the root's own depmod, so the unit's
# ExecStartPre modprobe works as on a real host.
m=$r/lib/modules/$kver
mkdir -p "$m/kernel/drivers/net"
cp -a "$KDIR/modules/kernel/net" "$KDIR/modules/kernel/lib" "$KDIR/modules/kernel/crypto" "$m/kernel/"
cp -a "$KDIR/modules/kernel/drivers/net/dummy.ko" "$KDIR/modules/kernel/drivers/net/veth.ko" "$m/kernel/drivers/net/"
cp -a "$KDIR/modules/modules.builtin" "$KDIR/modules/modules.builtin.modinfo" "$KDIR/modules/modules.order" "$m/"
chroot "$r" depmod -a "$kver"

echo lvsha-vm >"$r/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lvsha-vm\n' >"$r/etc/hosts"
: >"$r/etc/machine-id"
passwd -R "$r" -d root >/dev/null 2>&1 || chroot "$r" passwd -d root >/dev/null
ln -sfn /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
# Nothing on the console but the kernel's and the test's lines, no getty
# that would wait for a device udev would have announced, no timer, and
# nothing the test does not need that costs seconds under emulation
# (ipvsadm's LSB script only says it is not configured).
for u in getty.target serial-getty@ttyS0.service getty@tty1.service console-getty.service \
	apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
	systemd-timesyncd.service systemd-networkd-wait-online.service \
	dpkg-db-backup.timer systemd-tmpfiles-clean.timer proc-sys-fs-binfmt_misc.automount \
	systemd-update-utmp.service systemd-update-utmp-runlevel.service ipvsadm.service; do
	ln -sfn /dev/null "$r/etc/systemd/system/$u"
done
mkdir -p "$r/etc/systemd/journald.conf.d"
# The journal in memory: the image is thrown away after each boot.
printf '[Journal]\nStorage=volatile\nForwardToConsole=no\n' >"$r/etc/systemd/journald.conf.d/lvsha-vm.conf"

# The test's entry point: once the boot reached multi-user.target, run the
# script the test copies in (it prints the result marker and powers off).
cat >"$r/etc/systemd/system/lvsha-vm-run.service" <<'UNIT'
[Unit]
Description=lvsha VM test run
After=multi-user.target
ConditionPathExists=/usr/local/sbin/lvsha-vm-run

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lvsha-vm-run
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
ln -sfn ../lvsha-vm-run.service "$r/etc/systemd/system/multi-user.target.wants/lvsha-vm-run.service"

size=$(du -sm "$r" | cut -f1)
mkfs.ext4 -q -L lvsha-root -d "$r" "$tmp/root.img" "$((size + size / 2 + 256))M"
mv "$tmp/root.img" "$img"
# Drop images of kernels no longer current.
find "$CACHE" -maxdepth 1 -name 'root-*.img' ! -name "root-$kver.img" -delete
echo "mkroot.sh: $img ready"
