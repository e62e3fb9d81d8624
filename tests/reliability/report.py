"""``python -m tests.reliability.report``: the reliability figures, as a table, from ``.reliability/*.json``.

The files are written by the campaigns: ``fuzz.json`` (tests/reliability/test_fuzz.py), ``crashes.json``
(test_crashes.py), ``storm.json`` (test_storm.py) and ``scan.json`` (tests/e2e/test_zz_secret_scan.py, over the
logs and tables of the end-to-end tests, the fuzzing and the hostile requests). A campaign that has not run
shows "not run"; each row says when its figures were written. ``scripts/test.sh`` prints it after the tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parents[2] / ".reliability"
NOT_RUN = "not run"


def load(name: str, directory: Path = FIGURES) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _sum(*values: Any) -> Any:
    present = [v for v in values if isinstance(v, int)]
    return sum(present) if present else NOT_RUN


def rows(directory: Path = FIGURES) -> list[tuple[str, str, str]]:
    fuzz, crashes, storm, scan = (load(name, directory) for name in ("fuzz", "crashes", "storm", "scan"))
    out: list[tuple[str, str, str]] = []

    if fuzz is None:
        out += [("Requests fuzzed", NOT_RUN, "fuzz"), ("5xx seen while fuzzing", NOT_RUN, "fuzz")]
    else:
        out.append(("Requests fuzzed", str(fuzz.get("requests", "?")), f"fuzz: {fuzz.get('routes', '?')} routes"))
        out.append(("5xx seen while fuzzing", str(fuzz.get("server_errors", "?")),
                    f"fuzz: {fuzz.get('nonconforming', '?')} answers off the OpenAPI schema"))

    if crashes is None:
        out.append(("Crashes survived (SIGKILL mid-sweep)", NOT_RUN, "crashes"))
    else:
        out.append(("Crashes survived (SIGKILL mid-sweep)", str(crashes.get("crashesSurvived", "?")),
                    f"crashes: {crashes.get('killsMidSweep', '?')} killed mid-sweep, "
                    f"{crashes.get('halfDoneRotationsResumed', '?')} half-done rotations resumed, "
                    f"{crashes.get('connections', '?')} connections, seed {crashes.get('seed', '?')}"))

    if storm is None:
        out += [("Rotations under storm", NOT_RUN, "storm"), ("API 5xx under storm", NOT_RUN, "storm")]
    else:
        out.append(("Rotations under storm", f"{storm.get('rotationsSucceeded', '?')}/{storm.get('rotations', '?')}",
                    f"storm: {storm.get('sweeps', '?')} sweeps, {storm.get('faultsInjected', '?')} faults injected "
                    f"({int(float(storm.get('failureRate', 0)) * 100)}% of upstream calls)"))
        out.append(("API 5xx under storm", f"{storm.get('api5xx', '?')}/{storm.get('apiRequests', '?')}",
                    f"storm: statuses {storm.get('apiStatuses', {})}"))

    sources = (("crashes", crashes), ("storm", storm), ("scan", scan))

    def both(key: str) -> tuple[str, str]:
        value = _sum(*((data or {}).get(key) for _, data in sources))
        detail = ", ".join(f"{name}: {data[key]}" for name, data in sources if data is not None and key in data)
        return str(value), detail or "not run"

    for label, key in (("Lost secrets", "lostSecrets"), ("Orphaned credentials", "orphanedCredentials"),
                       ("Secrets found in logs or tables", "secretsInLogsOrTables")):
        value, detail = both(key)
        out.append((label, value, detail))
    written = ", ".join(f"{name} {data.get('writtenAt', '?')}" for name, data in (("fuzz", fuzz), *sources) if data)
    out.append(("Figures written at", "", written or "no campaign has run"))
    return out


def render(table: list[tuple[str, str, str]]) -> str:
    header = ("Figure", "Value", "Source / detail")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(3)]
    line = "+".join("-" * (w + 2) for w in widths)
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)), line]
    lines += [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def main() -> int:
    print(render(rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
