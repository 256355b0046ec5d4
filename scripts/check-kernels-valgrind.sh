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
# The unit-test binary of crate $1 (as cargo names it) among those built.
test_binary() {
    local found
    found=$(printf '%s\n' "$built" | grep "\"name\":\"$1\"" |
        grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d '"' -f 4 || true)
    if [ -z "$found" ] || [ ! -x "$found" ]; then
        echo "could not find the $1 unit-test binary" >&2
        exit 1
    fi
    printf '%s\n' "$found"
}
bin=$(test_binary shoal_inference)
# the index's kernels (float and float-by-int8 distances) and its int8 codes' storage
index_bin=$(test_binary shoal_index)

# run [VAR=VALUE...] -- BINARY FILTER...: the tests under memcheck, in the environment given.
run() {
    local vars=()
    while [ "$1" != -- ]; do vars+=("$1"); shift; done
    shift
    echo "== memcheck: ${vars[*]} $*" >&2
    # --error-exitcode: any memcheck error fails the run (the tests' own failures exit 101).
    # --nocapture shows which kernels detection picked under valgrind ("shoal kernels: isa ...");
    # the panics printed are those of the tests that check refused shapes.
    env "${vars[@]}" RUST_BACKTRACE=0 valgrind --quiet --error-exitcode=99 --leak-check=no \
        --track-origins=yes "$@" --test-threads=1 --nocapture
}

start=$SECONDS
run SHOAL_CHECK_KERNELS=default -- "$bin" "$filter"
run SHOAL_FORCE_PORTABLE_KERNELS=1 -- "$bin" "$filter"
run -- "$index_bin" distance:: graph::storage::
run SHOAL_FORCE_PORTABLE_KERNELS=1 -- "$index_bin" distance:: graph::storage::
echo "kernel memory check passed in $((SECONDS - start)) s" >&2
