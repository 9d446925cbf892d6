#!/bin/sh
# setup.sh installs what the namespace tests of vrrp and internal/netns and
# the failover benchmark (internal/benchfailover) need on a fresh Debian:
# keepalived 2.2.7 (the interop peer and the benchmark's reference) and
# ping (iputils-ping) for the client namespace. Run as root.
set -eu
need=""
command -v keepalived >/dev/null || need="$need keepalived"
command -v ping >/dev/null || need="$need iputils-ping"
if [ -n "$need" ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	# shellcheck disable=SC2086
	apt-get install -y --no-install-recommends $need
fi
# keepalived's package starts a system-wide daemon; the tests run their own
# in namespaces and must not meet it on the host.
if command -v systemctl >/dev/null && systemctl is-active --quiet keepalived 2>/dev/null; then
	systemctl stop keepalived || true
fi
