"""The figures table of ``python -m tests.reliability.report``, from the campaigns' JSON files."""

import json

from tests.reliability.report import NOT_RUN, render, rows


def test_every_figure_is_shown_and_totals_add_up_across_campaigns(tmp_path):
    (tmp_path / "fuzz.json").write_text(json.dumps({"requests": 2100, "server_errors": 0, "nonconforming": 0,
                                                    "routes": 14, "writtenAt": "2026-11-23T10:00:00+00:00"}))
    (tmp_path / "crashes.json").write_text(json.dumps({"crashesSurvived": 20, "killsMidSweep": 19,
                                                       "lostSecrets": 0, "orphanedCredentials": 1,
                                                       "secretsInLogsOrTables": 0}))
    (tmp_path / "scan.json").write_text(json.dumps({"secretsInLogsOrTables": 2}))
    table = {label: (value, detail) for label, value, detail in rows(tmp_path)}
    assert table["Requests fuzzed"][0] == "2100"
    assert table["5xx seen while fuzzing"][0] == "0"
    assert table["Crashes survived (SIGKILL mid-sweep)"][0] == "20"
    assert table["Rotations under storm"][0] == NOT_RUN
    assert table["Orphaned credentials"] == ("1", "crashes: 1")
    assert table["Secrets found in logs or tables"] == ("2", "crashes: 0, scan: 2")
    assert "fuzz 2026-11-23T10:00:00+00:00" in table["Figures written at"][1]
    text = render(rows(tmp_path))
    assert text.splitlines()[0].startswith("Figure")


def test_nothing_run_says_so(tmp_path):
    table = {label: value for label, value, _ in rows(tmp_path)}
    assert table["Requests fuzzed"] == NOT_RUN
    assert table["Lost secrets"] == NOT_RUN
