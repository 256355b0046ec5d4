#!/usr/bin/env bash
# Run the native inference kernels (the matrix micro-kernels and attention, which read and write
# through raw pointers) under valgrind's memcheck, on the small shapes of their unit tests: any
# read or write outside a live allocation, or use of uninitialised memory, fails the check.
# Valgrind runs the optimised code as it is. scripts/check-kernels-asan.sh runs the same tests
# under AddressSanitizer, AVX-512 kernels included; Miri cannot be installed with the one stable
# toolchain this project uses.
#
# Valgrind has no AVX-512 and hides it from CPUID, so under it the kernels dispatch to their AVX2
# versions (the hand-written AVX2/FMA matrix kernel, the AVX2 clones of the rest; or the baseline
# ones): the check runs that default path, then the portable kernels
# (SHOAL_FORCE_PORTABLE_KERNELS=1). The AVX-512 and AMX kernels are not covered. The index's
# kernels (its float and float-by-int8 distances) and its int8 codes' storage run the same way
# (the index crate's `distance::` and `graph::storage::` tests).
#
# Usage: scripts/check-kernels-valgrind.sh [TEST FILTER]   (default filter: native::)
# Exits non-zero on any memcheck error or test failure. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
filter="${1:-native::}"

if ! command -v valgrind >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "valgrind is missing: installing it" >&2
        apt-get update -qq
        apt-get install -y -qq valgrind >/dev/null
    elif [ "${SHOAL_SKIP_VALGRIND:-}" = 1 ]; then
        echo "valgrind is missing and SHOAL_SKIP_VALGRIND=1: kernel memory check SKIPPED" >&2
        exit 0
    else
        echo "valgrind is missing and cannot be installed here (not root, or no apt-get):" \
            "install it, or set SHOAL_SKIP_VALGRIND=1 to skip the kernel memory check" >&2
        exit 1
    fi
fi

# The inference crate's unit-test binary (the workspace builds it with opt-level 3, line tables).
# --workspace, not -p shoal-inference: the dependencies keep the whole workspace's features, so
# what scripts/test.sh built is reused instead of compiled again.
# (Run by hand, this builds every crate's unit-test binary once; scripts/test.sh has them built.)
built=$(cargo test --workspace --lib --no-run --message-format=json) # (a failed build stops here)
bin=$(printf '%s\n' "$built" | grep '"name":"shoal_inference"' |
    grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d '"' -f 4 || true)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "could not find the shoal-inference unit-test binary" >&2
    exit 1
fi
# the index's kernels (float and float-by-int8 distances) and its int8 codes' storage
index_bin=$(printf '%s\n' "$built" | grep '"name":"shoal_index"' |
    grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d '"' -f 4 || true)
if [ -z "$index_bin" ] || [ ! -x "$index_bin" ]; then
    echo "could not find the shoal-index unit-test binary" >&2
    exit 1
fi

run() {
    echo "== memcheck: $* $bin $filter" >&2
    # --error-exitcode: any memcheck error fails the run (the tests' own failures exit 101).
    # --nocapture shows which kernels detection picked under valgrind ("shoal kernels: isa ...");
    # the panics printed are those of the tests that check refused shapes.
    env "$@" RUST_BACKTRACE=0 valgrind --quiet --error-exitcode=99 --leak-check=no \
        --track-origins=yes "$bin" "$filter" --test-threads=1 --nocapture
}

run_index() {
    echo "== memcheck: $* $index_bin distance:: graph::storage::" >&2
    env "$@" RUST_BACKTRACE=0 valgrind --quiet --error-exitcode=99 --leak-check=no \
        --track-origins=yes "$index_bin" distance:: graph::storage:: --test-threads=1
}

start=$SECONDS
run SHOAL_CHECK_KERNELS=default
run SHOAL_FORCE_PORTABLE_KERNELS=1
run_index
run_index SHOAL_FORCE_PORTABLE_KERNELS=1
echo "kernel memory check passed in $((SECONDS - start)) s" >&2
