#!/usr/bin/env bash
# Re-locks every Python dependency set from its small .in file, with a --hash line for every distribution:
#
#   requirements.in       -> requirements.txt        the Function App (pip and the Azure Functions remote build)
#   requirements-dev.in   -> requirements-dev.txt    + local host, stand-in, tests, checks (scripts/install.sh)
#   requirements-infra.in -> requirements-infra.txt  checkov and the Bicep parser (scripts/infra-check.sh)
#   requirements-lock.in  -> requirements-lock.txt   the compiler itself (uv), installed with --require-hashes
#
# then refreshes package-lock.json from package.json (npm install --package-lock-only).
#
#   bash scripts/lock.sh                     keep every locked version that still satisfies the .in files
#   bash scripts/lock.sh --upgrade           move everything to its newest allowed version
#   bash scripts/lock.sh --upgrade-package X  move only X (repeatable)
#
# The sets are resolved for CPython 3.11 on x86_64 Linux (glibc 2.28+), what the developers' machines, CI and
# the Azure Functions Flex Consumption Python 3.11 host run; the hashes cover every file of each pinned release
# on PyPI, so pip picks the wheel of whatever platform it installs on. tests/test_locks.py fails when a lock no
# longer matches its .in file or package.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv-lock
if [ ! -x "$VENV/bin/uv" ] || ! cmp -s requirements-lock.txt "$VENV/.requirements-lock.txt"; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-lock.txt
  cp requirements-lock.txt "$VENV/.requirements-lock.txt"
fi
compile() {
  UV_CACHE_DIR="${UV_CACHE_DIR:-$VENV/cache}" "$VENV/bin/uv" pip compile --quiet "$1" --output-file "$2" \
    --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-url https://pypi.org/simple --no-config \
    --custom-compile-command "bash scripts/lock.sh" --no-strip-extras "${@:3}"
}
compile requirements.in requirements.txt "$@"
compile requirements-dev.in requirements-dev.txt "$@"
compile requirements-infra.in requirements-infra.txt "$@"
compile requirements-lock.in requirements-lock.txt "$@"
npm install --package-lock-only --ignore-scripts --no-audit --no-fund --loglevel=error
echo "lock: requirements*.txt and package-lock.json are up to date; commit them with the .in files"
