#!/usr/bin/env bash
# What the web console's browser tests (tests/tests/console.rs) need: Debian's headless-capable
# Chromium and its WebDriver (chromium, chromium-driver). Installed when missing and this runs as
# root; without them the console tests say they were skipped (they never pretend to pass).
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" fonts-dejavu-core >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" fonts-dejavu-core >&2; } \
        || echo "browser: could not install ${missing[*]}; the console tests will be skipped" >&2
else
    echo "browser: ${missing[*]} missing and cannot be installed here; the console tests will be skipped" >&2
fi
