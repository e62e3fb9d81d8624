"""Run a script in a fresh interpreter at the repository's root, as the tests of what a cold instance loads do."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def in_a_fresh_interpreter(script: str, *args: str, env: Mapping[str, str] | None = None) -> Any:
    """The JSON the script prints on its last line; the script must exit 0 (else its stderr fails the test)."""
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                         check=False, env=dict(env) if env is not None else None)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
