"""A setting the infrastructure takes as a parameter accepts there exactly what the service accepts: the same
default and the same bounds (``shared/settings.py``'s ``_number`` and ``_whole``; the parameter's
``@minValue``/``@maxValue``, found by the setting's name in its description). Otherwise a value the template
allows stops the service at its first request, or one the service would take cannot be deployed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r'_(?:number|whole)\(env, "([A-Z_]+)", ([\d.]+), ([\d.]+), ([\d.]+)\)')
PARAM = re.compile(r"((?:@\w+\(.*\)\n)+)param \w+ int = (\d+)\n")


def service_ranges() -> dict[str, tuple[float, float, float]]:
    text = (ROOT / "shared" / "settings.py").read_text(encoding="utf-8")
    return {name: (float(default), float(low), float(high)) for name, default, low, high in NUMBER.findall(text)}


def template_ranges() -> dict[tuple[str, str], tuple[float, float | None, float | None]]:
    found: dict[tuple[str, str], tuple[float, float | None, float | None]] = {}
    for path in sorted((ROOT / "infra").rglob("*.bicep")):
        for decorators, default in PARAM.findall(path.read_text(encoding="utf-8")):
            setting = re.search(r"@description\('.*\(([A-Z][A-Z_]+)\)", decorators)
            if setting is None:
                continue
            low = re.search(r"@minValue\((\d+)\)", decorators)
            high = re.search(r"@maxValue\((\d+)\)", decorators)
            found[(str(path.relative_to(ROOT)), setting.group(1))] = (
                float(default), float(low.group(1)) if low else None, float(high.group(1)) if high else None)
    return found


def test_every_numeric_setting_of_the_templates_has_the_service_s_default_and_bounds() -> None:
    service = service_ranges()
    template = template_ranges()
    assert {name for _, name in template} >= {"ROTATION_MAX_CONCURRENCY", "AUDIT_RETENTION_DAYS",
                                             "HEALTH_CHECK_INTERVAL_HOURS", "EXPIRY_WARNING_DAYS"}
    differ = {where: (found, service.get(where[1])) for where, found in template.items()
              if where[1] not in service or found != service[where[1]]}
    assert differ == {}, "template (default, min, max) against the service's"


LITERAL = re.compile(r"^\s+([A-Z][A-Z0-9_]+): '([^']*)'", re.MULTILINE)


def test_every_numeric_setting_the_templates_write_as_a_literal_is_within_the_service_s_bounds() -> None:
    """(Review I, session 18.) A literal app setting escaped the check: ``CONSOLE_SESSION_IDLE_MINUTES: '600'`` (the
    service takes at most 480) passed every infra test, and would have stopped the service at start-up."""
    service = service_ranges()
    literals = {(str(path.relative_to(ROOT)), name): value for path in sorted((ROOT / "infra").rglob("*.bicep"))
                for name, value in LITERAL.findall(path.read_text(encoding="utf-8")) if name in service}
    assert {name for _, name in literals} >= {"CONSOLE_SESSION_ABSOLUTE_HOURS", "CONSOLE_SESSION_IDLE_MINUTES"}
    outside = {where: value for where, value in literals.items()
               if not service[where[1]][1] <= float(value) <= service[where[1]][2]}
    assert outside == {}, "literal settings outside the service's (min, max)"
