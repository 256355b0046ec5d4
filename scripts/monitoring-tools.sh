#!/usr/bin/env bash
# Puts promtool and amtool (Debian 12's `prometheus` and `prometheus-alertmanager` packages) under
# target/tools/root without installing anything system-wide: `apt-get download` into
# target/tools/debs, then `dpkg-deb -x`. Idempotent: does nothing when both tools are there.
#
# Prints, on stdout, two lines a caller can eval:
#   PROMTOOL=/path/to/promtool
#   AMTOOL=/path/to/amtool
# Progress goes to stderr. Set PROMTOOL and AMTOOL beforehand to use tools of your own.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${SHOAL_TOOLS_DIR:-$REPO/target/tools}"
DEBS="$TOOLS/debs"
ROOT="$TOOLS/root"
PACKAGES=(prometheus prometheus-alertmanager)

promtool="${PROMTOOL:-$ROOT/usr/bin/promtool}"
amtool="${AMTOOL:-$ROOT/usr/bin/amtool}"

log() { echo "monitoring-tools: $*" >&2; }

for t in PROMTOOL AMTOOL; do
    if [ -n "${!t:-}" ] && [ ! -x "${!t}" ]; then
        log "$t=${!t} is not an executable file"
        exit 1
    fi
done

# apt-get download, run in the cache folder. Extra arguments are apt options (-o ...).
download() {
    local sandbox=()
    # As root apt drops to its _apt user, which cannot write here: say so instead of warning.
    [ "$(id -u)" = 0 ] && sandbox=(-o "APT::Sandbox::User=root")
    (cd "$DEBS" && apt-get -q "${sandbox[@]}" "$@" download "${PACKAGES[@]}" >&2)
}

if [ ! -x "$promtool" ] || [ ! -x "$amtool" ]; then
    command -v apt-get >/dev/null 2>&1 || { log "apt-get not found: needs a Debian-based machine"; exit 1; }
    command -v dpkg-deb >/dev/null 2>&1 || { log "dpkg-deb not found"; exit 1; }
    mkdir -p "$DEBS" "$ROOT"
    # Use .debs left by an earlier run; download only what is missing.
    missing=()
    for p in "${PACKAGES[@]}"; do
        compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "downloading ${missing[*]} into $DEBS"
        PACKAGES=("${missing[@]}")
        if ! download; then
            # Most likely the package lists are missing (a fresh machine or container).
            if [ "$(id -u)" = 0 ]; then
                log "apt-get download failed; running apt-get update (root) and trying again"
                apt-get -q update >&2
                download
            else
                # Not root: apt-get update cannot write the system lists, so keep private ones.
                log "apt-get download failed; fetching package lists into $TOOLS/apt (no root needed)"
                state="$TOOLS/apt"
                mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
                opts=(-o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
                      -o "Debug::NoLocking=1")
                apt-get -q "${opts[@]}" update >&2
                download "${opts[@]}"
            fi
        fi
    fi
    for p in prometheus prometheus-alertmanager; do
        deb="$(ls -1 "$DEBS/${p}"_*.deb | sort -V | tail -n 1)"
        log "extracting $(basename "$deb")"
        if ! dpkg-deb -x "$deb" "$ROOT"; then
            rm -f "$deb"
            log "$(basename "$deb") is damaged (an interrupted download?): removed it, run again"
            exit 1
        fi
    done
    for t in "$promtool" "$amtool"; do
        [ -x "$t" ] || { log "$t missing after extracting the packages into $ROOT"; exit 1; }
    done
fi

printf 'PROMTOOL=%q\n' "$promtool"
printf 'AMTOOL=%q\n' "$amtool"
