#!/usr/bin/env bash
# Installs the infrastructure checks (checkov, which brings the pycep-parser Bicep parser), locked with hashes
# in requirements-infra.txt (from requirements-infra.in; bash scripts/lock.sh re-locks),
# into their own venv, .venv-infra: checkov pins packaging<24, which clashes with the
# pytest of requirements-dev.txt, so it cannot share the main .venv.
#
#   scripts/infra-check.sh            create/refresh .venv-infra (idempotent), nothing else
#   scripts/infra-check.sh --run      ... then run checkov on infra/ (as tests/infra does)
#
# The pytest tests in tests/infra/ find .venv-infra/bin/checkov and .venv-infra/bin/python
# (or INFRA_VENV=/path/to/venv); run this script once before pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INFRA_VENV:-$ROOT/.venv-infra}"
REQS="$ROOT/requirements-infra.txt"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
    echo "infra-check: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when requirements-infra.txt changed since the last successful install.
STAMP="$VENV/.requirements-infra.sha256"
WANT="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || [ ! -x "$VENV/bin/checkov" ]; then
    echo "infra-check: installing $REQS into $VENV"
    # --require-hashes: every package, transitive ones included, must be in the lock with a matching hash.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$REQS"
    echo "$WANT" >"$STAMP"
fi

"$VENV/bin/python" -c "import pycep, yaml"
echo "infra-check: ready (checkov $("$VENV/bin/checkov" --version | tail -n1) in $VENV)"

if [ "${1:-}" = "--run" ]; then
    exec "$VENV/bin/checkov" --directory "$ROOT/infra" --framework bicep --skip-download --quiet --compact
fi
