"""The shape the design promises, checked on the source: arrows run one way (functions, then domain, then
adapters), the domain builds no client or store of its own, no import cycle under ``shared/``."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "shared"
# The domain: what the functions call and the adapters serve. It is handed its adapters (shared.ports).
DOMAIN = ["connections", "oauth", "oauth_tokens", "records", "ports", "apps", "models", "errors", "options", "sessions",
          "rotation.protocol", "rotation.sweep", "rotation.schedule", "rotation.config", "rotation.state",
          "rotation.pacing", "rotation.journal"]
ADAPTER_CONSTRUCTORS = {"AzureClients", "get_clients", "ConnectionsTable", "SecretVault", "ScheduleIndex",
                        "RotationHistory", "OAuthStates", "AzureDirectory", "EntraTokenEndpoint", "GraphApps",
                        "SessionTable"}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_TREES: dict[Path, ast.Module] = {}


def _parsed(path: Path) -> ast.Module:
    """The source of ``path`` parsed once, at collection, which is single-threaded: CPython 3.11.7's parser can
    fail with "AST constructor recursion depth mismatch" when another thread (a test's host or worker thread)
    compiles at the same time (python/cpython#106905)."""
    tree = _TREES.get(path)
    if tree is None:
        tree = _TREES[path] = ast.parse(path.read_text())
    return copy.deepcopy(tree)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (lazily), but for type checking only."""
    tree = _parsed(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {_module(path): path for path in SHARED.rglob("*.py")}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_there_is_no_import_cycle_under_shared() -> None:
    seen: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if seen.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(node):], node]))
        if seen.get(node) == 2:
            return
        seen[node] = 1
        for child in sorted(GRAPH[node]):
            visit(child, [*trail, node])
        seen[node] = 2

    for name in sorted(GRAPH):
        visit(name, [])


@pytest.mark.parametrize("name", DOMAIN)
def test_the_domain_neither_imports_triggers_nor_builds_adapters(name: str) -> None:
    path = MODULES[f"shared.{name}"]
    imports = _imports(path)
    assert not any(m.startswith("azure.functions") for m in imports)
    assert not any(m.startswith("shared.functions") for m in imports)
    assert not any(m.startswith("shared.wiring") for m in imports)
    used = {node.id for node in ast.walk(_parsed(path)) if isinstance(node, ast.Name)}
    used |= {node.attr for node in ast.walk(_parsed(path)) if isinstance(node, ast.Attribute)}
    assert not (used & ADAPTER_CONSTRUCTORS), f"shared.{name} builds {used & ADAPTER_CONSTRUCTORS}"


def test_nothing_under_shared_imports_localdev() -> None:
    for name, path in MODULES.items():
        assert not any(m.startswith("localdev") for m in _imports(path)), name


def test_only_the_wiring_module_builds_the_adapters() -> None:
    builders = set()
    for name, path in MODULES.items():
        calls = {node.func.id for node in ast.walk(_parsed(path))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        if calls & {"ConnectionsTable", "SecretVault", "ScheduleIndex", "RotationHistory", "OAuthStates",
                    "AzureDirectory", "EntraTokenEndpoint", "ConnectionService", "Rotator", "OAuthFlow",
                    "SessionTable", "Sessions", "SignIn"}:
            builders.add(name)
    assert builders == {"shared.wiring"}
