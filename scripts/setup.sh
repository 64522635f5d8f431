#!/usr/bin/env bash
# Set up dlscope in ./.venv on a fresh machine.
#   bash scripts/setup.sh          the package (enough for `dlscope run all`)
#   bash scripts/setup.sh test     plus pytest, the Ray extra and headless Chromium for the tests
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
if [ "${1:-}" = "test" ]; then
  .venv/bin/pip install -q -e '.[test,ray]'
  # the report is tested in a real browser; its PDF's pages are rendered by poppler's pdftoppm
  if ! command -v chromium >/dev/null 2>&1 || ! command -v pdftoppm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium poppler-utils >/dev/null
  fi
else
  .venv/bin/pip install -q -e .
fi
