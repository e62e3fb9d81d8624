"""Fixtures of the infrastructure tests: the .venv-infra tools and the parsed templates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra.tooling import bicep_sources, infra_tool, parse_texts


@pytest.fixture(scope="session")
def infra_python() -> Path:
    return infra_tool("python")


@pytest.fixture(scope="session")
def parse(infra_python: Path) -> Callable[[dict[str, str]], dict[str, Any]]:
    def _parse(texts: dict[str, str]) -> dict[str, Any]:
        return parse_texts(infra_python, texts)

    return _parse


@pytest.fixture(scope="session")
def sources() -> dict[str, str]:
    found = bicep_sources()
    assert "main.bicep" in found, "infra/main.bicep is missing"
    return found


@pytest.fixture(scope="session")
def templates(parse: Callable[[dict[str, str]], dict[str, Any]], sources: dict[str, str]) -> dict[str, Any]:
    """Every infra/**/*.bicep parsed by pycep-parser, by path relative to infra/."""
    return parse(sources)
