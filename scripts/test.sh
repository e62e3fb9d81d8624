#!/usr/bin/env bash
# Installs, then runs every check: ruff, mypy and the whole test suite (unit and end-to-end; the
# end-to-end tests start Azurite and the stand-in on free loopback ports and stop them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --browser
bash scripts/infra-check.sh   # checkov and the Bicep parser, in their own venv (.venv-infra)
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "== reliability figures (written by this run's campaigns; see docs/reliability.md)"
.venv/bin/python -m tests.reliability.report
