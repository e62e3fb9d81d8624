"""The README and the pages under docs/: short enough to read, and no link that leads nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # an absolute URL (https:, mailto:) is not checked offline
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_stays_short_and_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260
    head = "\n".join(lines[:8])
    assert "scripts/start.sh" in head
    assert "scripts/test.sh" in head


def test_the_ci_entry_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/test.sh" in ci


def test_the_troubleshooting_page_quotes_messages_the_service_writes() -> None:
    """Each message docs/troubleshooting.md quotes (a row's first backticked text) is written by the service's code
    (or is Entra's code the service relays; a sentence of ``shared.azure.upstream`` after the service it names),
    so the page cannot drift from what an operator sees."""
    from shared.azure.upstream import SERVICES

    code = "".join(path.read_text() for path in sorted((ROOT / "shared").rglob("*.py")))
    rows = [line for line in (ROOT / "docs" / "troubleshooting.md").read_text().splitlines()
            if line.startswith("| `")]
    quoted = [row.split("`")[1] for row in rows]
    assert len(quoted) >= 10
    unwritten = [text for text in quoted
                 if text not in code and not any(text.startswith(f"{name} ") and text[len(name) + 1:] in code
                                                 for name in SERVICES.values())]
    assert unwritten == []


def test_every_http_route_the_app_registers_is_in_the_readme_api_table() -> None:
    """(Review of a newcomer's run.) The console's pages and assets, and `/`, were registered but not listed."""
    import json
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## API", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        for method_path in re.findall(r"`([^`]+)`", row.split("|")[1]):
            path = method_path.split(" ", 1)[-1].split("?", 1)[0].replace("…", "/api/v1/app-connections")
            listed.add(path.replace("[", "").replace("]", "").strip("/"))  # `/pages[/{id}]`: both
            listed.add(re.sub(r"\[.*?\]", "", path).strip("/"))
    code = ("import json, function_app\n"  # in a process of its own: the app is indexed once per process
            "print(json.dumps([str(b.get_dict_repr()['route']) for f in function_app.app.get_functions()\n"
            "                  for b in f.get_bindings() if b.get_dict_repr().get('type') == 'httpTrigger']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    registered = {"" if route.startswith("{ignored") else route for route in json.loads(out.stdout)}
    assert registered - listed == set()
