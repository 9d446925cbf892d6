#!/usr/bin/env bash
# Installs what lvsha's tests, benchmarks and demo need on a fresh Debian
# (bookworm) machine, as root. Idempotent: a machine that has it all is left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

pkgs=(iproute2 debootstrap iputils-ping keepalived frr ipvsadm prometheus qemu-system-x86 busybox-static xz-utils tcpdump procps curl gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	# keepalived and frr must not start as services: the tests run their own.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
go mod download
if [ -x internal/testenv/vm/setup.sh ] || [ -f internal/testenv/vm/setup.sh ]; then
	bash internal/testenv/vm/setup.sh
fi
# The systemd test's Debian root image (debootstrap once, then cached).
bash internal/scenarios/systemdtest/mkroot.sh
