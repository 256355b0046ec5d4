#!/usr/bin/env bash
# The test command: fetch the model if missing, check formatting and lints, build the binary, run
# every test of the workspace on the portable kernels (the path CPUs without AVX-512 or AVX2
# take), run the unit tests, the model tests and the end-to-end search tests again on the kernels
# the CPU picks, run the native kernels (inference's, and the index's distances) under valgrind's
# memcheck and under AddressSanitizer, and run a short chaos campaign (a fixed seed and a random
# one, which it prints) against a three-node cluster, and one on loopback behind fault-injecting
# proxies (the fallback where network namespaces cannot be made), then the deployment checks:
# the alert rules with promtool's unit tests, Alertmanager's config and the dashboard
# (scripts/check-monitoring.sh), the Kubernetes manifests against the schemas
# (scripts/check-k8s.sh), and the Docker Compose stack behind nginx with a node killed
# (scripts/test-compose.sh; skipped where no Docker engine runs), and a short chaos campaign
# against that stack (scripts/chaos-compose.sh: Docker's own faults, the same checker; skipped
# likewise). CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds once, from nothing: incremental compilation's bookkeeping only slows that down (a
# developer's repeated runs keep it, unless they set CARGO_INCREMENTAL themselves).
case "${CI:-}" in "" | false | 0) ;; *) export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}" ;; esac
# Each step's start, with the seconds since this script began: where a run's time goes.
step() { echo "== [$SECONDS s] $*" >&2; }
step "set-up: the model, the labelled set, Chromium, the chaos tools"
scripts/fetch-model.sh
scripts/fetch-bench-data.sh   # Wikipedia summaries: the labelled set of `shoal eval`'s test
scripts/browser.sh            # headless Chromium and its WebDriver: the web console's tests
scripts/chaos-deps.sh         # ip, nft, iptables, libfaketime: the chaos crate's tests and campaign
step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
step "build"
cargo build --bin shoal
# The whole suite once on the portable kernels (SHOAL_FORCE_PORTABLE_KERNELS=1), the path of CPUs
# without AVX-512 (inference) or AVX2 (the index's distances); the nodes the tests start inherit
# the variable. (The web console's browser tests fail, not skip, if Chromium cannot start after
# browser.sh.)
step "the whole suite on the portable kernels"
SHOAL_FORCE_PORTABLE_KERNELS=1 SHOAL_REQUIRE_BROWSER=1 cargo test --workspace
step "again on the kernels this CPU picks (AVX-512 or AVX2 where it has them)"
# What runs a kernel of its own: every crate's unit tests (the inference and index crates'
# kernel tests among them), the model tests against the Python references (in process, and
# through a node's /v1/embeddings and rerank endpoints: inference_api), and the end-to-end search
# tests; the chaos campaigns below run their nodes on these kernels too. (`shoal eval`'s
# search-quality test runs on the portable kernels only: its embeddings are those the model
# tests hold to the references on both paths.) (The whole suite
# on both paths took CI from 1,317 s to 2,280 s, too close to its 40-minute budget.) No cargo
# command of this script that shares target/ selects packages with -p (they pick targets with
# --lib/--test/--bin): that resolves the dependencies' features for those packages alone, and
# cargo then compiles dozens of dependencies again (8 minutes of a 28-minute run on 2 cores).
# (The AddressSanitizer check has a target folder of its own.)
cargo test --workspace --lib --test embedder --test reranker --test sentence_models --test e2e \
    --test hybrid --test inference_api
step "the kernels under valgrind, then AddressSanitizer"
scripts/check-kernels-valgrind.sh
scripts/check-kernels-asan.sh
step "chaos: a fixed seed and a random one against three nodes (docs/chaos.md)"
cargo build --workspace --bin shoal-chaos
target/debug/shoal-chaos --seed 1,random --seconds 45
# the fallback where namespaces cannot be made: loopback, a fault-injecting TCP proxy per node
target/debug/shoal-chaos --loopback --seed 2 --seconds 30 --in-turn \
    --faults isolate_leader,one_way_from_leader,bridge,packet_loss,delay
step "deployment: alert rules and dashboard, Kubernetes manifests, the Compose stack"
scripts/check-monitoring.sh
scripts/check-k8s.sh
scripts/test-compose.sh
step "chaos against the compose stack: docker kill, pause, network disconnect in turn (docs/chaos.md)"
scripts/chaos-compose.sh
step "passed"
