"""The deployment package: what it holds, and that a cold instance runs the app's own modules from the bytecode
it ships instead of compiling them, and never runs bytecode older than its source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localdev import package

ROOT = Path(__file__).resolve().parents[2]

# Run in the unpacked package with no bytecode writes, as on Flex Consumption's read-only mount: every module of
# the package that is compiled from source instead of loaded from its bytecode is printed.
COMPILED_FROM_SOURCE = r"""
import importlib._bootstrap_external as external, json, sys
compiled = []
original = external.SourceLoader.source_to_code
def source_to_code(self, data, path, *, _optimize=-1):
    compiled.append(path)
    return original(self, data, path, _optimize=_optimize)
external.SourceLoader.source_to_code = source_to_code
import function_app
function_app.app.get_functions()
import shared.wiring, shared.connections, shared.views, shared.store.table_reads
print(json.dumps({"compiled": compiled, "marker": getattr(sys.modules["shared.views"], "EDITED", None),
                  "loaded": sorted(m.__file__ for m in sys.modules.values()
                                   if getattr(m, "__file__", "") and m.__file__.startswith(sys.argv[1]))}))
"""


def run_in(unpacked: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(unpacked)}
    out = subprocess.run([sys.executable, "-c", COMPILED_FROM_SOURCE, str(unpacked)], cwd=unpacked, env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    import json

    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_package_holds_the_app_and_its_bytecode_and_nothing_of_development() -> None:
    files = {path.as_posix() for path in package.packaged_files(ROOT)}
    for needed in ("function_app.py", "host.json", "requirements.txt", "shared/openapi.json",
                   "shared/functions/openapi.py", "console/index.html"):
        assert needed in files, needed
    for path in files:
        assert path.split("/")[0] not in {"tests", "localdev", "bench", "infra", "scripts", "docs", ".venv",
                                          "node_modules", ".hypothesis", ".reliability", ".git"}, path
    assert package.ignored_by("shared/__pycache__/views.cpython-311.pyc", package.ignore_patterns(ROOT)) == []
    assert package.ignored_by("tests/shared/__pycache__/x.pyc", package.ignore_patterns(ROOT)) == ["tests"]


@pytest.mark.parametrize("path", [".azure/dev/.env", ".azure/dev/config.json", ".env", "local.settings.json"])
def test_azd_s_environment_and_local_settings_are_neither_packaged_nor_committed(path: str) -> None:
    """azd keeps an environment's values (the webhook URL among them, a bearer credential) in plain text under
    ``.azure/``: Core Tools' publish follows ``.funcignore`` and must leave it out, and git must not take it (review
    R)."""
    assert package.ignored_by(path, package.ignore_patterns(ROOT)), path
    assert subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0, path


def test_negated_patterns_are_refused_rather_than_misread() -> None:
    with pytest.raises(ValueError, match="negated"):
        package.ignored_by("shared/x.py", ["!shared"])


@pytest.mark.e2e
def test_a_cold_process_of_the_package_compiles_none_of_its_modules(tmp_path: Path) -> None:
    unpacked = package.build(tmp_path / "package")
    assert not (unpacked / "tests").exists() and not (unpacked / "localdev").exists()
    result = run_in(unpacked)
    loaded = result["loaded"]
    assert isinstance(loaded, list) and len(loaded) > 20  # the app's own modules, loaded from the package
    assert result["compiled"] == []


@pytest.mark.e2e
def test_a_source_edited_after_the_bytecode_is_compiled_again_never_run_stale(tmp_path: Path) -> None:
    unpacked = package.build(tmp_path / "package")
    views = unpacked / "shared" / "views.py"
    views.write_text(views.read_text(encoding="utf-8") + "\nEDITED = 'after the hook'\n", encoding="utf-8")
    result = run_in(unpacked)
    assert result["marker"] == "after the hook"
    assert result["compiled"] == [str(views)]


def test_azd_precompiles_the_package_before_it_packages_it() -> None:
    import yaml

    azure = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    hook = azure["services"]["api"]["hooks"]["prepackage"]
    assert hook["posix"]["run"] == "python3 -m localdev.package --precompile"
    assert hook["windows"]["run"] == "python -m localdev.package --precompile"
    assert hook["posix"]["continueOnError"] is False and hook["windows"]["continueOnError"] is False


def test_the_hook_under_another_python_says_it_precompiled_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """(Review I, session 18.) Run by a Python 3.12, it wrote only cpython-312 files, which the deployed 3.11
    ignores: the saving on a cold start was lost without a word."""
    compiled: list[bool] = []
    monkeypatch.setattr(package, "precompile", lambda: compiled.append(True) or True)
    monkeypatch.setattr(package.sys, "version_info", (3, 12, 1, "final", 0))
    assert package.main(["--precompile"]) == 0
    assert compiled == [] and "nothing was precompiled" in capsys.readouterr().err


def test_the_deployed_python_is_the_template_s() -> None:
    bicep = (ROOT / "infra" / "app" / "api.bicep").read_text(encoding="utf-8")
    assert f"version: '{package.DEPLOYED_PYTHON[0]}.{package.DEPLOYED_PYTHON[1]}'" in bicep
