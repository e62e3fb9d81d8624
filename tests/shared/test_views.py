"""A read needs the records, the connection store and the token check: not what a write needs. What a read
imports is checked in a fresh interpreter, since the test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WHAT_A_READ_IMPORTS = """
import json, sys
import function_app
import shared.audit, shared.auth, shared.records, shared.views, shared.wiring
import shared.azure.clients, shared.store.tables, shared.store.history
print(json.dumps(sorted(sys.modules)))
"""
WRITE_ONLY = ["pydantic", "shared.models", "shared.connections", "shared.credentials", "shared.oauth",
              "shared.oauth_tokens", "shared.rotation.protocol", "shared.store.vault", "shared.azure.directory",
              "cryptography.x509", "msgraph"]


def test_the_read_path_imports_nothing_that_only_writes_need() -> None:
    out = subprocess.run([sys.executable, "-c", WHAT_A_READ_IMPORTS], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    loaded = set(json.loads(out.stdout))
    assert "shared.views" in loaded
    assert [name for name in WRITE_ONLY if name in loaded] == []
