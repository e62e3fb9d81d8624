"""``local.settings.json`` as Azure Functions Core Tools reads it.

``{"IsEncrypted": false, "Values": {...}, "Host": {...}}``: each ``Values`` entry becomes an environment
variable unless the environment already has it (the environment wins, as with Core Tools).
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LocalSettings", "LocalSettingsError", "load_local_settings", "read_local_settings"]


class LocalSettingsError(ValueError):
    """``local.settings.json`` exists but cannot be used."""


@dataclass(frozen=True)
class LocalSettings:
    values: dict[str, str] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)


def _as_setting(path: Path, name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return ""
    raise LocalSettingsError(f"{path}: Values.{name} must be a string, not {type(value).__name__}")


def read_local_settings(path: Path) -> LocalSettings:
    """Read ``path``; a missing file gives empty settings. Raises :class:`LocalSettingsError` when unusable."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return LocalSettings()
    except OSError as exc:
        raise LocalSettingsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalSettingsError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(document, dict):
        raise LocalSettingsError(f"{path} must hold a JSON object with a 'Values' object")
    if document.get("IsEncrypted") is True:
        raise LocalSettingsError(
            f"{path} is encrypted (IsEncrypted: true); the local host reads only plain settings. "
            "Decrypt it (func settings decrypt) or set IsEncrypted to false"
        )
    raw_values = document.get("Values", {})
    if raw_values is None:
        raw_values = {}
    if not isinstance(raw_values, dict):
        raise LocalSettingsError(f"{path}: 'Values' must be a JSON object")
    raw_host = document.get("Host", {})
    if raw_host is None:
        raw_host = {}
    if not isinstance(raw_host, dict):
        raise LocalSettingsError(f"{path}: 'Host' must be a JSON object")
    values = {str(name): _as_setting(path, str(name), value) for name, value in raw_values.items()}
    return LocalSettings(values=values, host=raw_host)


def load_local_settings(path: Path, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put ``path``'s ``Values`` into ``environ`` where not already set; returns the names and values it set.

    A missing file sets nothing. Malformed JSON or an encrypted file raise :class:`LocalSettingsError`
    (a ``ValueError``) naming the file.
    """
    applied: dict[str, str] = {}
    for name, value in read_local_settings(path).values.items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    return applied
