#!/bin/sh
# setup.sh prepares a Debian host to run lvsha's IPVS tests in a QEMU VM.
#
#   setup.sh          install the packages (as root) and prepare the kernel
#   setup.sh kernel   only prepare the kernel cache (no package installs)
#
# The kernel is Debian's linux-image-amd64 (the same kernel a Debian director
# runs), fetched with apt-get download and unpacked with dpkg-deb -x into
# $LVSHA_VM_CACHE (default /var/cache/lvsha-vm)/<kernel version>, never into
# /boot. The ELF vmlinux is pulled out of the bzImage's xz stream because
# qemu boots it directly (PVH entry), ~6 s faster than the bzImage under TCG.
# "current" is a symlink to the ready version; it is switched only when the
# directory is complete, so a half-finished run is never used.
set -eu

CACHE=${LVSHA_VM_CACHE:-/var/cache/lvsha-vm}
MODE=${1:-all}

if [ "$MODE" = all ]; then
	export DEBIAN_FRONTEND=noninteractive
	need=""
	command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
	[ -x /bin/busybox ] && /bin/busybox --list | grep -qx insmod || need="$need busybox-static"
	command -v xz >/dev/null || need="$need xz-utils"
	command -v ipvsadm >/dev/null || need="$need ipvsadm"
	if [ -n "$need" ]; then
		apt-get update
		# shellcheck disable=SC2086
		apt-get install -y --no-install-recommends $need
	fi
fi

# Resolve the metapackage to the versioned image package, e.g.
# linux-image-6.1.0-56-amd64.
resolve() {
	apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1
}
pkg=$(resolve)
if [ -z "$pkg" ] && [ ! -e "$CACHE/current/vmlinux" ] && [ "$(id -u)" = 0 ]; then
	apt-get update -q >/dev/null # a fresh machine (or container) may have no package lists
	pkg=$(resolve)
fi
if [ -z "$pkg" ]; then
	if [ -e "$CACHE/current/vmlinux" ]; then
		echo "setup.sh: cannot resolve linux-image-amd64, keeping $(readlink "$CACHE/current")"
		exit 0
	fi
	echo "setup.sh: cannot resolve linux-image-amd64 (apt-get update?)" >&2
	exit 1
fi
kver=${pkg#linux-image-}
dir=$CACHE/$kver
mkdir -p "$CACHE"
# Concurrent callers (several test binaries) wait for the first one.
exec 9>"$CACHE/.lock"
flock 9
if [ -e "$dir/ready" ]; then
	ln -sfn "$kver" "$CACHE/current"
	echo "setup.sh: kernel $kver already in $dir"
	exit 0
fi

mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.tmp.XXXXXX")
chmod 755 "$tmp" # apt-get download drops to the _apt user
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "$pkg")
mkdir "$tmp/root"
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
img="$tmp/root/boot/vmlinuz-$kver"

# Same trick as the kernel's scripts/extract-vmlinux: find every offset of the
# xz magic (FD 37 7A 58 5A 00) and keep the first one that unpacks to an ELF.
found=""
for pos in $(tr "\375\n" "\n\375" <"$img" | grep -abo "^7zXZ" | cut -d: -f1); do
	tail -c+"$pos" "$img" | xz -dc >"$tmp/vmlinux" 2>/dev/null || true
	if [ "$(head -c4 "$tmp/vmlinux" | od -An -c | tr -d ' \n')" = '177ELF' ]; then
		found=1
		break
	fi
done
[ -n "$found" ] || { echo "setup.sh: no xz-compressed ELF in $img" >&2; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
mv "$tmp/vmlinux" "$dir/vmlinux"
mv "$tmp/root/lib/modules/$kver" "$dir/modules"
touch "$dir/ready"
ln -sfn "$kver" "$CACHE/current"
# Drop kernels an older linux-image-amd64 pointed at.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$kver" ! -name '.tmp.*' -exec rm -rf {} +
echo "setup.sh: kernel $kver ready in $dir"
