#!/usr/bin/env bash
# Make a headless Chromium and its WebDriver available for tests/browser.
#
# Idempotent, run as root on Debian (CI and developer machines alike): installs
# Debian's chromium and chromium-driver when either is missing, then prints
# their versions. Selenium is pointed at /usr/bin/chromedriver explicitly, so
# nothing is ever downloaded by selenium-manager.
set -euo pipefail

say() { echo "install-browser: $*" >&2; }

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "$(chromium --version 2>/dev/null || echo 'chromium: no version')"
say "$(/usr/bin/chromedriver --version 2>/dev/null || echo 'chromedriver: no version')"
