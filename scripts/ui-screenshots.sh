#!/usr/bin/env bash
# Screenshots of the web console for docs/ui/ (the README shows them): runs the console's browser
# tests with SHOAL_UI_SCREENSHOTS=1, which write each page's PNG there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
scripts/browser.sh
cargo build --bin shoal
SHOAL_UI_SCREENSHOTS=1 cargo test -p shoal-tests --test console -- --test-threads=1 --nocapture
ls -l docs/ui/
