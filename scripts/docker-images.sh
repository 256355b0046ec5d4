#!/usr/bin/env bash
# Builds the images docker-compose.yml runs, on a machine that reaches no image registry (Docker
# Engine with the legacy builder, `docker pull` failing): the base images are made with
# debootstrap from this machine's own Debian mirror (read from its apt sources at run time) and
# loaded with `docker import`; the shoal image is deploy/docker/Dockerfile.prebuilt on top of the
# local Debian image, with a shoal binary built on the host (Debian 12's glibc, like the image).
#
#   shoal-local/debian:bookworm        minbase + ca-certificates, curl
#   shoal-local/nginx:bookworm         + nginx (Debian's 1.22)
#   shoal-local/prometheus:bookworm    + prometheus              (only with --monitoring)
#   shoal-local/alertmanager:bookworm  + prometheus-alertmanager (only with --monitoring)
#   shoal:latest                       the host binary and the model, on shoal-local/debian
#
# Grafana is not packaged by Debian, so no local image is made for it: the compose service
# `grafana` needs the official image (GRAFANA_IMAGE, default grafana/grafana) from a registry.
# Where one is reachable, none of this is needed: `docker build -t shoal:latest .` and the
# official images (see docs/docker.md).
#
# Idempotent: an image that exists is kept (unless --rebuild), a root filesystem already made is
# reused from target/docker-cache/rootfs/*.tar, downloaded packages from target/docker-cache/debs;
# shoal:latest is rebuilt only when the binary, the model, the base image or
# deploy/docker/Dockerfile.prebuilt changed (the image carries their digests as a label).
# debootstrap needs root; it is installed with apt-get when missing.
#
# Usage: scripts/docker-images.sh [--monitoring] [--rebuild] [--bin PATH] [--no-shoal]
#   --monitoring  also build the Prometheus and Alertmanager images
#   --rebuild     make the root filesystems and images again
#   --bin PATH    the shoal binary (default: $SHOAL_BIN, else target/release/shoal, else
#                 target/debug/shoal)
#   --no-shoal    only the base images
# Environment: SHOAL_BIN, DEBIAN_MIRROR (default: the first bookworm `main` source of apt),
#   SHOAL_IMAGE (default shoal:latest), SHOAL_DOCKER_CACHE (default target/docker-cache).
#
# Progress goes to stderr. stdout gets the lines a caller can eval before `docker-compose up`:
#   export SHOAL_IMAGE=shoal:latest
#   export NGINX_IMAGE=shoal-local/nginx:bookworm
#   export PROMETHEUS_IMAGE=... ALERTMANAGER_IMAGE=...   (with --monitoring)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${SHOAL_DOCKER_CACHE:-$ROOT/target/docker-cache}"
SUITE=bookworm
LOCAL=shoal-local
SHOAL_IMAGE="${SHOAL_IMAGE:-shoal:latest}"
MODEL_DIR=models/all-MiniLM-L6-v2
# The legacy builder: this engine has no BuildKit/buildx.
export DOCKER_BUILDKIT=0

monitoring=0
rebuild=0
with_shoal=1
bin="${SHOAL_BIN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --monitoring) monitoring=1 ;;
        --rebuild) rebuild=1 ;;
        --no-shoal) with_shoal=0 ;;
        --bin) bin="${2:?--bin needs a path}"; shift ;;
        --bin=*) bin="${1#--bin=}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "docker-images: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "docker-images: $*" >&2; }
die() { log "$*"; exit 1; }
now() { date +%s; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

mkdir -p "$CACHE/rootfs" "$CACHE/debs" "$CACHE/work"
# One run at a time per cache (two test runs side by side share the images).
exec 9>"$CACHE/.lock"
flock 9

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The first `deb` source of apt for $SUITE's main component (deb822 .sources files or one-line
# .list files), skipping the security archive. DEBIAN_MIRROR overrides it.
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri="$(awk -v suite="$SUITE" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && comps ~ /(^| )main( |$)/ && enabled != "no") {
                    n = split(uris, u, " "); for (i = 1; i <= n; i++) if (u[i] !~ /security/) { print u[i]; found = 1; exit }
                }
                types = suites = uris = comps = ""; enabled = "yes"
            }
            BEGIN { enabled = "yes" }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            { key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
              if (key == "types") types = $0; else if (key == "suites") suites = $0
              else if (key == "uris") uris = $0; else if (key == "components") comps = $0
              else if (key == "enabled") enabled = tolower($0) }
            END { if (!found) flush() }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri="$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite && $0 ~ / main( |$)/ && $i !~ /security/) { print $i; exit }
            }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    return 1
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return
    [ "$(id -u)" = 0 ] || die "debootstrap is missing and this is not root: install it (apt-get install debootstrap) or run as root"
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and there is no apt-get to install it"
    log "debootstrap is missing: installing it with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2; } \
        || die "could not install debootstrap"
}

# Unmounts whatever the second stage left mounted under a root filesystem being built.
release_mounts() {
    local dir="$1" m
    [ -d "$dir" ] || return 0
    # Deepest first.
    for m in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}

WORKDIR=""
cleanup() {
    if [ -n "$WORKDIR" ] && [ -d "$WORKDIR" ]; then
        release_mounts "$WORKDIR"
        rm -rf --one-file-system "$WORKDIR"
    fi
}
trap cleanup EXIT

# build_rootfs NAME PACKAGES [TWEAK-FUNCTION]: a minbase bookworm with PACKAGES (comma list),
# tarred to $CACHE/rootfs/NAME.tar. Services never start inside (policy-rc.d says no, as in the
# official Debian images); apt's package lists and sources are left out of the image.
build_rootfs() {
    local name="$1" packages="$2" tweak="${3:-}" out="$CACHE/rootfs/$1.tar"
    if [ -s "$out" ] && [ "$rebuild" = 0 ]; then
        log "root filesystem $name: cached ($out)"
        return
    fi
    ensure_debootstrap
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    local mirror keyring=() t0
    mirror="$(debian_mirror)" || die "no Debian $SUITE source found in /etc/apt (set DEBIAN_MIRROR)"
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
        && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    t0=$(now)
    WORKDIR="$(mktemp -d "$CACHE/work/$name.XXXXXX")"
    log "root filesystem $name: debootstrap $SUITE minbase + $packages (mirror from apt sources)"
    debootstrap --foreign --variant=minbase --include="$packages" "${keyring[@]}" \
        --cache-dir="$CACHE/debs" "$SUITE" "$WORKDIR" "$mirror" >&2 \
        || { tail -n 30 "$WORKDIR/debootstrap/debootstrap.log" >&2 2>/dev/null; die "debootstrap (first stage) failed for $name"; }
    # No service may start while packages are configured (the chroot shares this machine's network).
    printf '#!/bin/sh\nexit 101\n' >"$WORKDIR/usr/sbin/policy-rc.d"
    chmod 755 "$WORKDIR/usr/sbin/policy-rc.d"
    chroot "$WORKDIR" /debootstrap/debootstrap --second-stage >&2 \
        || { tail -n 30 "$WORKDIR/debootstrap/debootstrap.log" >&2 2>/dev/null; release_mounts "$WORKDIR"; die "debootstrap (second stage) failed for $name"; }
    release_mounts "$WORKDIR"
    # Trim: apt lists and caches, the sources naming this machine's mirror, docs, translations, logs.
    rm -rf "$WORKDIR"/var/lib/apt/lists/* "$WORKDIR"/var/cache/apt/*.bin \
        "$WORKDIR"/var/cache/apt/archives/*.deb "$WORKDIR"/var/cache/debconf/*-old \
        "$WORKDIR"/usr/share/doc/* "$WORKDIR"/usr/share/man/* "$WORKDIR"/usr/share/info/* \
        "$WORKDIR"/usr/share/locale/* "$WORKDIR"/usr/share/lintian/* \
        "$WORKDIR"/var/log/*.log "$WORKDIR"/var/log/apt/* "$WORKDIR"/tmp/* "$WORKDIR"/debootstrap
    rm -f "$WORKDIR/etc/apt/sources.list" "$WORKDIR"/etc/apt/sources.list.d/*
    : >"$WORKDIR/etc/resolv.conf"
    echo localhost >"$WORKDIR/etc/hostname"
    [ -n "$tweak" ] && "$tweak" "$WORKDIR"
    # Docker provides /dev, /proc and /sys.
    tar --numeric-owner --xattrs -C "$WORKDIR" \
        --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -cf "$out.part" .
    mv "$out.part" "$out"
    rm -rf --one-file-system "$WORKDIR"
    WORKDIR=""
    log "root filesystem $name: $(du -h "$out" | cut -f1) in $(( $(now) - t0 )) s"
}

# import_image NAME TAR IMAGE [--change ...]: `docker import` unless the image is there.
import_image() {
    local name="$1" tar="$2" image="$3"
    shift 3
    if image_exists "$image" && [ "$rebuild" = 0 ]; then
        log "image $image: present"
        return
    fi
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL org.opencontainers.image.description=\"debootstrap $SUITE minbase ($name), made by scripts/docker-images.sh\"" \
        "$@" "$tar" "$image" >/dev/null
    log "image $image: imported"
}

# The monitoring images run as nobody with their data in /prometheus and /alertmanager, like the
# official ones, so the compose file works with either.
tweak_prometheus() {
    install -d -o 65534 -g 65534 "$1/prometheus"
}
tweak_alertmanager() {
    install -d -o 65534 -g 65534 "$1/alertmanager"
}

t_start=$(now)

build_rootfs debian ca-certificates,curl
import_image debian "$CACHE/rootfs/debian.tar" "$LOCAL/debian:$SUITE" --change 'CMD ["bash"]'

build_rootfs nginx ca-certificates,curl,nginx
import_image nginx "$CACHE/rootfs/nginx.tar" "$LOCAL/nginx:$SUITE" \
    --change 'EXPOSE 80' \
    --change 'CMD ["nginx", "-g", "daemon off;"]'

if [ "$monitoring" = 1 ]; then
    build_rootfs prometheus ca-certificates,prometheus tweak_prometheus
    import_image prometheus "$CACHE/rootfs/prometheus.tar" "$LOCAL/prometheus:$SUITE" \
        --change 'USER nobody' --change 'WORKDIR /prometheus' --change 'EXPOSE 9090' \
        --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
        --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
    build_rootfs alertmanager ca-certificates,prometheus-alertmanager tweak_alertmanager
    import_image alertmanager "$CACHE/rootfs/alertmanager.tar" "$LOCAL/alertmanager:$SUITE" \
        --change 'USER nobody' --change 'WORKDIR /alertmanager' --change 'EXPOSE 9093' \
        --change 'ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]' \
        --change 'CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]'
fi

if [ "$with_shoal" = 1 ]; then
    if [ -z "$bin" ]; then
        for b in target/release/shoal target/debug/shoal; do
            [ -x "$b" ] && { bin="$b"; break; }
        done
    fi
    [ -n "$bin" ] && [ -x "$bin" ] || die "no shoal binary (${bin:-target/{release,debug}/shoal}): cargo build --release --bin shoal, or --bin PATH"
    for f in config.json tokenizer.json model.safetensors vocab.txt; do
        [ -s "$MODEL_DIR/$f" ] || die "$MODEL_DIR/$f is missing: run scripts/fetch-model.sh"
    done
    # A copy, so that a build rewriting the binary meanwhile cannot mix two versions.
    snapshot="$CACHE/work/shoal.bin"
    cp "$bin" "$snapshot"
    bin_sha="$(sha256sum "$snapshot" | cut -d' ' -f1)"
    model_sha="$(cat "$MODEL_DIR"/config.json "$MODEL_DIR"/tokenizer.json "$MODEL_DIR"/vocab.txt "$MODEL_DIR"/model.safetensors | sha256sum | cut -d' ' -f1)"
    base_id="$(docker image inspect -f '{{.Id}}' "$LOCAL/debian:$SUITE")"
    dockerfile_sha="$(sha256sum deploy/docker/Dockerfile.prebuilt | cut -d' ' -f1)"
    want="$bin_sha/$model_sha/$base_id/$dockerfile_sha"
    have="$(docker image inspect -f '{{index .Config.Labels "org.shoal.build-inputs"}}' "$SHOAL_IMAGE" 2>/dev/null || true)"
    if [ "$have" = "$want" ] && [ "$rebuild" = 0 ]; then
        log "image $SHOAL_IMAGE: up to date with $bin"
    else
        t0=$(now)
        # Staged where .dockerignore lets it into the build context, without debug info.
        staged="$ROOT/target/docker-cache/bin/shoal"
        mkdir -p "${staged%/*}"
        if command -v objcopy >/dev/null 2>&1; then
            objcopy --strip-debug "$snapshot" "$staged.part"
        else
            cp "$snapshot" "$staged.part"
        fi
        chmod 755 "$staged.part"
        mv "$staged.part" "$staged"
        log "image $SHOAL_IMAGE: building from $bin ($(du -h "$staged" | cut -f1) without debug info)"
        docker build -q -f deploy/docker/Dockerfile.prebuilt \
            --build-arg BASE_IMAGE="$LOCAL/debian:$SUITE" \
            --build-arg SHOAL_BIN="${staged#"$ROOT"/}" \
            --label org.shoal.build-inputs="$want" \
            --label org.shoal.binary="$bin" \
            -t "$SHOAL_IMAGE" . >/dev/null
        log "image $SHOAL_IMAGE: built in $(( $(now) - t0 )) s"
        # Dangling layers of the image this one replaced.
        docker image prune -f --filter label=org.shoal.build-inputs >/dev/null 2>&1 || true
    fi
fi

rm -f "$CACHE/work/shoal.bin"
log "done in $(( $(now) - t_start )) s"
[ "$with_shoal" = 1 ] && echo "export SHOAL_IMAGE=$SHOAL_IMAGE"
echo "export NGINX_IMAGE=$LOCAL/nginx:$SUITE"
if [ "$monitoring" = 1 ]; then
    echo "export PROMETHEUS_IMAGE=$LOCAL/prometheus:$SUITE"
    echo "export ALERTMANAGER_IMAGE=$LOCAL/alertmanager:$SUITE"
fi
