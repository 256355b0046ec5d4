#!/usr/bin/env bash
# What the chaos campaign needs to give each node a host of its own: iproute2 (`ip netns`, veth)
# and nftables (cuts and packet loss). Installed from Debian's packages when missing and this
# runs as root; without them (or without root) shoal-chaos falls back to loopback and the nodes'
# own fault switch, and says so.
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "chaos: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } \
        || echo "chaos: could not install ${missing[*]}; the campaign runs on loopback" >&2
else
    echo "chaos: ${missing[*]} missing and cannot be installed here; the campaign runs on loopback" >&2
fi
