"""checkov (framework bicep, offline) finds no failed check in infra/; every skip is a documented comment.

A skip is a `// checkov:skip=CKV_AZURE_xxx: reason` line inside the resource's body (checkov reads
suppressions between a resource's first and last line). infra/.checkov.yaml keeps checkov off the one
file its Bicep parser cannot read (the Microsoft Graph extension's). The last test proves checkov still
fails a tampered copy, and that deleting a skip comment brings its finding back.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra import bicep_rules as rules
from tests.infra.tooling import INFRA_DIR, infra_tool

SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+)(?::\s*(.*))?$")


def run_checkov(directory: Path) -> dict[str, Any]:
    checkov = infra_tool("checkov")
    done = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(directory),
            "--framework",
            "bicep",
            "--skip-download",
            "--output",
            "json",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in (0, 1), f"checkov crashed ({done.returncode}): {done.stderr[-3000:]}"
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    assert len(bicep) == 1, f"expected one bicep report, got {[r.get('check_type') for r in reports]}"
    result: dict[str, Any] = bicep[0]
    return result


def skip_comments(directory: Path) -> list[tuple[str, str, str]]:
    """(file relative to directory, check id, reason) of every checkov:skip comment."""
    found = []
    for path in sorted(directory.rglob("*.bicep")):
        for line in path.read_text().splitlines():
            match = SKIP_COMMENT.search(line.strip())
            if match:
                found.append((path.relative_to(directory).as_posix(), match.group(1), (match.group(2) or "").strip()))
    return found


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_checkov(INFRA_DIR)


def test_checkov_finds_no_failed_check(report: dict[str, Any]) -> None:
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == [], f"checkov failed checks: {failed}"
    assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")
    assert summary["passed"] >= 20, summary
    assert summary["resource_count"] >= 15, summary


def test_every_skip_is_a_documented_comment_that_checkov_honours(report: dict[str, Any]) -> None:
    comments = skip_comments(INFRA_DIR)
    for path, check_id, reason in comments:
        assert len(reason) >= 20, f"{path}: checkov:skip={check_id} needs a one-line reason"
    skipped = {(c["file_path"].lstrip("/"), c["check_id"]) for c in report["results"]["skipped_checks"]}
    commented = {(path, check_id) for path, check_id, _ in comments}
    assert skipped == commented, (
        f"skipped without a comment: {skipped - commented}; comments checkov ignored: {commented - skipped}"
    )
    for check in report["results"]["skipped_checks"]:
        assert check["check_result"].get("suppress_comment") not in (None, "", "No comment provided"), check["check_id"]


def test_checkov_config_skips_only_the_graph_registration(
    parse: Callable[[dict[str, str]], dict[str, Any]], templates: dict[str, Any], report: dict[str, Any]
) -> None:
    """The one file checkov does not read holds Microsoft.Graph resources only (checkov has no checks for them)."""
    config = parse({"checkov.yaml": (INFRA_DIR / ".checkov.yaml").read_text()})["checkov.yaml"]
    assert set(config) == {"skip-path"}, config
    skipped = [path for path in templates if any(re.search(p, f"{INFRA_DIR}/{path}") for p in config["skip-path"])]
    assert skipped == [rules.API_REGISTRATION_MODULE], skipped
    types = {r["type"] for r in templates[rules.API_REGISTRATION_MODULE]["resources"].values()}
    # The application, its service principal, and the console's federated credential (docs/console.md, Sign-in).
    assert types == {rules.GRAPH_APPLICATION, rules.GRAPH_SERVICE_PRINCIPAL,
                     f"{rules.GRAPH_APPLICATION}/federatedIdentityCredentials"}, types
    scanned = {
        c["file_path"].lstrip("/") for kind in ("passed_checks", "skipped_checks") for c in report["results"][kind]
    }
    assert rules.API_REGISTRATION_MODULE not in scanned
    assert {"modules/network.bicep", "modules/keyvault.bicep", "modules/storage.bicep"} <= scanned, scanned


def test_checkov_fails_a_tampered_copy(tmp_path: Path) -> None:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA_DIR, copy)
    edits = {
        "modules/storage.bicep": [
            ("supportsHttpsTrafficOnly: true", "supportsHttpsTrafficOnly: false"),
            # Without its skip comment, the network rule finding comes back.
            (
                next(
                    line
                    for line in (copy / "modules/storage.bicep").read_text().splitlines(keepends=True)
                    if "checkov:skip=CKV_AZURE_35" in line
                ),
                "",
            ),
        ],
        "modules/keyvault.bicep": [("enablePurgeProtection: true", "enablePurgeProtection: false")],
        "app/api.bicep": [
            ("httpsOnly: true", "httpsOnly: false"),
            ("ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'"),
        ],
    }
    for relative, replacements in edits.items():
        path = copy / relative
        text = path.read_text()
        for old, new in replacements:
            assert text.count(old) == 1, f"{relative}: {old!r}"
            text = text.replace(old, new)
        path.write_text(text)
    failed = {c["check_id"] for c in run_checkov(copy)["results"]["failed_checks"]}
    assert {"CKV_AZURE_3", "CKV_AZURE_35", "CKV_AZURE_110", "CKV_AZURE_70", "CKV_AZURE_78"} <= failed, failed
