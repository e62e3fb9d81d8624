#!/usr/bin/env bash
# Installs everything the project needs into the project folder: a Python venv (.venv) with the locked,
# hash-checked packages of requirements-dev.txt (the runtime set of requirements.txt plus the local host,
# stand-in, tests and checks), Azurite and axe-core from npm with their lock file (node_modules, `npm ci`), and,
# with --browser (scripts/test.sh), Debian's Chromium for the console's browser tests (apt-get, as root or with
# sudo; running the service needs none of it). Safe to run again: it reinstalls only when a lock changed.
# Re-lock after changing a .in file or package.json: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.requirements-dev.sha256
WANT="$(sha256sum requirements-dev.txt | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  # --require-hashes: every package, transitive ones included, must be in the lock with a matching hash.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.txt
  echo "$WANT" >"$STAMP"
fi
if [ ! -x node_modules/.bin/azurite-table ] || ! cmp -s package-lock.json node_modules/.ops-package-lock.json; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.ops-package-lock.json
fi
# The console's browser tests drive Debian's Chromium (Playwright's own browser download does not work here).
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
  fi
fi
