#!/usr/bin/env bash
# Installs, then runs the service locally: Azurite, the Entra ID / Graph / Key Vault stand-in and the
# function host on http://localhost:7071. Ctrl+C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m localdev up "$@"
