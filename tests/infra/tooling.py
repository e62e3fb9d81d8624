"""Where the infrastructure tools live (.venv-infra) and how the tests call them.

checkov pins packaging<24, which clashes with this repo's pytest, so checkov and the pycep-parser
it brings live in their own venv, made by scripts/infra-check.sh. INFRA_VENV overrides the path.
Without that venv the infra tests fail under CI (CI=true) and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = ROOT / "infra"
PARSE_SCRIPT = Path(__file__).with_name("_parse_infra.py")
INSTALL_HINT = "run scripts/infra-check.sh to create .venv-infra (checkov, pycep-parser)"


def infra_venv() -> Path:
    return Path(os.environ.get("INFRA_VENV") or ROOT / ".venv-infra")


def infra_tool(name: str) -> Path:
    """The path of a tool of .venv-infra; fails under CI and skips elsewhere when it is missing."""
    path = infra_venv() / "bin" / name
    if not path.exists():
        message = f"{path} is missing: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return path


def parse_texts(python: Path, texts: dict[str, str]) -> dict[str, Any]:
    """Parse each text with the infra venv (Bicep with pycep-parser, *.yaml with PyYAML).

    Returns name -> tree; a text that does not parse raises AssertionError naming it.
    """
    done = subprocess.run(
        [str(python), str(PARSE_SCRIPT)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise AssertionError(f"{PARSE_SCRIPT.name} failed ({done.returncode}): {done.stderr[-2000:]}")
    results: dict[str, dict[str, Any]] = json.loads(done.stdout)
    errors = {name: r["error"] for name, r in results.items() if "error" in r}
    assert not errors, f"not parsable: {errors}"
    return {name: r["ok"] for name, r in results.items()}


def bicep_sources() -> dict[str, str]:
    """Every .bicep file under infra/, by its path relative to infra/ (posix)."""
    return {
        path.relative_to(INFRA_DIR).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(INFRA_DIR.rglob("*.bicep"))
    }
