#!/usr/bin/env bash
# What the chaos campaign needs to give each node a host of its own: iproute2 (`ip netns`, veth),
# nftables (cuts and packet loss), iptables (the netfilter queue that delays packets where the
# kernel has no netem) and libfaketime (clock jumps: each node's wall clock is moved through it).
# Installed from Debian's packages when missing and this runs as root; without the first two (or
# without root) shoal-chaos falls back to loopback with a fault-injecting TCP proxy in front of each node,
# and without the last two it leaves delays in namespaces or clock jumps out, and says so.
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || missing+=(libfaketime)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "chaos: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
        || echo "chaos: could not install ${missing[*]}; the campaign does without (see above)" >&2
else
    echo "chaos: ${missing[*]} missing and cannot be installed here; the campaign does without (loopback behind proxies, no delay or no clock jumps)" >&2
fi
