#!/usr/bin/env bash
# The browser tests (tests/ui) drive Debian's chromium through Playwright for Python (the
# `playwright` package of the test extra). Install chromium from apt when it is missing;
# never `playwright install`, which downloads a browser from the network.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version
