#!/usr/bin/env bash
# The browser that the report tests drive: Debian's Chromium and its ChromeDriver, from apt (no
# browser download). Without them the browser tests skip, saying so; the content tests still run.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver) \
    || echo "chromium/chromium-driver could not be installed: the browser tests are skipped"
