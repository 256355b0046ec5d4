#!/usr/bin/env bash
# Run the inference crate's unit tests (the matrix micro-kernels, attention with its heads on
# threads, a tiny BERT against candle: code that reads and writes through raw pointers, on small
# shapes), and the index crate's kernel and int8 code storage tests (`distance::`,
# `graph::storage::`: SIMD distances, float-by-int8 included), under AddressSanitizer: a read or write past an allocation (heap, stack or global), a
# use after free or a double free aborts the run.
#
# It covers what valgrind (scripts/check-kernels-valgrind.sh) cannot: valgrind hides AVX-512 from
# the program, so it checks the AVX2 and portable kernels only, while this runs the kernels this
# CPU picks (AVX-512, AVX512-BF16, and on CPUs with AMX the code around its tile instructions)
# and then the portable ones. Valgrind stays for what AddressSanitizer does not see (reads of
# uninitialised memory). The AMX tile instructions themselves are inline assembly, which no
# sanitizer instruments.
#
# The sanitizer's runtime ships with the stable toolchain; its flag is unstable, so the build sets
# RUSTC_BOOTSTRAP=1 for this one test build (its own target directory; nothing shipped is built
# this way). Miri cannot be installed with the one stable toolchain this project uses.
# --target keeps the flag off build scripts and proc macros (programs the build itself runs).
# Dependencies are built without optimisation here (cheaper to compile; the code checked is
# shoal's own, which keeps its opt-level 3).
#
# Usage: scripts/check-kernels-asan.sh [TEST FILTER...]   (default filters: native::, where every
# unsafe block of the inference crate is, and the index's distance:: and graph::storage::)
# Exits non-zero on any sanitizer report or test failure. Builds in $CARGO_TARGET_DIR/asan
# (default target/asan).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu) ;;
*)
    echo "AddressSanitizer is not set up here for $host: kernel sanitizer check SKIPPED" >&2
    exit 0
    ;;
esac
target_dir="${CARGO_TARGET_DIR:-target}/asan"

run() {
    echo "== AddressSanitizer: $*" >&2
    # Leaks are not what this looks for (thread pools live until exit).
    # (CARGO_ENCODED_RUSTFLAGS, if set, would win over RUSTFLAGS and drop the sanitizer)
    env -u CARGO_ENCODED_RUSTFLAGS "$@" ASAN_OPTIONS=detect_leaks=0 RUSTC_BOOTSTRAP=1 \
        RUSTFLAGS="-Zsanitizer=address" \
        CARGO_TARGET_DIR="$target_dir" RUST_BACKTRACE=0 \
        cargo test --config 'profile.dev.package."*".opt-level=0' -p shoal-inference \
        -p shoal-index --lib --target "$host" -- "${filters[@]}" --nocapture
}

# (every filter applies to both crates' test binaries; each names modules of one of them)
if [ $# -gt 0 ]; then filters=("$@"); else filters=(native:: distance:: graph::storage::); fi
start=$SECONDS
run SHOAL_CHECK_KERNELS=default
run SHOAL_FORCE_PORTABLE_KERNELS=1
echo "kernel sanitizer check passed in $((SECONDS - start)) s" >&2
