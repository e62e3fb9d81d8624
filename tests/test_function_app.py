"""The function app is thin, indexes every route once, and loads no Azure SDK at import (cold start)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("msgraph", "azure.identity", "azure.data.tables", "azure.keyvault")


def test_importing_the_function_app_loads_no_azure_sdk():
    code = (
        "import json, sys, function_app\n"
        "function_app.app.get_functions()\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_host_json_matches_the_layout():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"
    assert host["extensions"]["http"]["routePrefix"] == ""
