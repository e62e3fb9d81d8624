"""App management policies: what credentials a tenant lets an application add, and for how long.

Kept as Graph shows them, plain JSON on the tenant (:class:`~localdev.standin.state.Tenant`):

* the tenant default (``GET /v1.0/policies/defaultAppManagementPolicy``, a ``tenantAppManagementPolicy``):
  ``{"id": "00000000-0000-0000-0000-000000000000", "displayName", "description", "isEnabled",
  "applicationRestrictions": {"passwordCredentials": [...], "keyCredentials": [...]}}``;
* app management policies (``GET /v1.0/applications/{id}/appManagementPolicies``, ``appManagementPolicy``):
  ``{"id", "displayName", "description", "isEnabled", "restrictions": {"passwordCredentials": [...],
  "keyCredentials": [...]}}``, assigned to apps (``App.management_policy_ids``).

A restriction is ``{"restrictionType", "state": "enabled"|"disabled", "maxLifetime": ISO 8601 duration or null,
"restrictForAppsCreatedAfterDateTime": date or null}``. Types enforced: ``passwordAddition`` (no new password),
``passwordLifetime`` and ``customPasswordAddition`` are password ones (the last is accepted and shown, not
enforced: the stand-in never takes a custom password through Graph), ``asymmetricKeyLifetime`` a key one. A
restriction applies to apps created after its ``restrictForAppsCreatedAfterDateTime`` (all when null) while its
state is enabled and its policy is enabled. An enabled policy assigned to the app overrides the tenant default
for the restriction types it names (as Entra documents: the app's policy takes precedence).

:func:`violation` answers what Graph's ``addPassword``, ``addKey`` and ``PATCH keyCredentials`` refuse with: 400
``CredentialInvalidLifetimeAsPerAppPolicy`` "Credential lifetime exceeds the max value allowed as per assigned
policy '{policyId}'." (with ``details`` ``[{"code": "InvalidKeyEndDate", "target": "EndDate"}]``), or 400
``CredentialTypeNotAllowedAsPerAppPolicy`` for ``passwordAddition`` (the code is Graph's; the message wording
was not confirmed). A credential's lifetime is its ``endDateTime`` minus its ``startDateTime``.

Admin routes (in :mod:`localdev.standin.keys`, typed in :class:`localdev.standin.admin.AdminClient`; ``{t}`` tenant id):

* ``PUT /_admin/tenants/{t}/app-management-policies/default`` ``{"isEnabled"?, "applicationRestrictions":
  {"passwordCredentials": [...], "keyCredentials": [...]}}`` -> the tenant default as Graph shows it;
* ``POST /_admin/tenants/{t}/app-management-policies`` ``{"displayName", "isEnabled"?, "restrictions": {...},
  "appIds": [appIds it is assigned to]}`` -> 201 the policy; ``GET`` the same -> ``{"policies": [...]}``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from localdev.standin.state import App, State, StateError, Tenant, iso, parse_iso

DEFAULT_POLICY_ID = "00000000-0000-0000-0000-000000000000"
PASSWORD_TYPES = ("passwordAddition", "passwordLifetime", "customPasswordAddition")
KEY_TYPES = ("asymmetricKeyLifetime",)
LIFETIME_TYPES = ("passwordLifetime", "asymmetricKeyLifetime")
LIFETIME_CODE = "CredentialInvalidLifetimeAsPerAppPolicy"
TYPE_CODE = "CredentialTypeNotAllowedAsPerAppPolicy"
_DURATION = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?"
)


def parse_duration(value: str) -> dt.timedelta:
    """An ISO 8601 duration such as ``P180D``, ``P1Y`` (365 days), ``P6M`` (30 days a month) or ``PT12H``."""
    match = _DURATION.fullmatch(value.strip())
    if not match or value.strip() in ("P", "PT") or value.strip().endswith("T"):
        raise StateError(f"maxLifetime must be an ISO 8601 duration such as P180D, not {value!r}")
    parts = {name: int(number or 0) for name, number in match.groupdict().items()}
    days = parts["years"] * 365 + parts["months"] * 30 + parts["weeks"] * 7 + parts["days"]
    return dt.timedelta(days=days, hours=parts["hours"], minutes=parts["minutes"], seconds=parts["seconds"])


def _restriction(raw: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise StateError("a restriction must be an object")
    kind = raw.get("restrictionType")
    if kind not in allowed:
        raise StateError(f"restrictionType must be one of {allowed}, not {kind!r}")
    state = raw.get("state") or "enabled"
    if state not in ("enabled", "disabled"):
        raise StateError("state must be 'enabled' or 'disabled'")
    max_lifetime = raw.get("maxLifetime")
    if kind in LIFETIME_TYPES:
        if not isinstance(max_lifetime, str):
            raise StateError(f"{kind} needs maxLifetime (an ISO 8601 duration such as P180D)")
        parse_duration(max_lifetime)
    elif max_lifetime is not None:
        raise StateError(f"{kind} takes no maxLifetime")
    after = raw.get("restrictForAppsCreatedAfterDateTime")
    if after is not None:
        try:
            after = iso(parse_iso(str(after)))
        except ValueError as exc:
            raise StateError(f"bad restrictForAppsCreatedAfterDateTime: {exc}") from exc
    return {
        "restrictionType": kind,
        "state": state,
        "maxLifetime": max_lifetime,
        "restrictForAppsCreatedAfterDateTime": after,
    }


def parse_restrictions(raw: Any) -> dict[str, list[dict[str, Any]]]:
    """``{"passwordCredentials": [...], "keyCredentials": [...]}`` checked and normalised; StateError if bad."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StateError("restrictions must be an object")
    unknown = set(raw) - {"passwordCredentials", "keyCredentials"}
    if unknown:
        raise StateError(f"unknown restriction groups: {sorted(unknown)}")
    out: dict[str, list[dict[str, Any]]] = {}
    for group, allowed in (("passwordCredentials", PASSWORD_TYPES), ("keyCredentials", KEY_TYPES)):
        items = raw.get(group) or []
        if not isinstance(items, list):
            raise StateError(f"{group} must be a list")
        parsed = [_restriction(item, allowed) for item in items]
        kinds = [item["restrictionType"] for item in parsed]
        if len(set(kinds)) != len(kinds):
            raise StateError(f"{group} names a restrictionType twice")
        out[group] = parsed
    return out


def default_policy(tenant: Tenant) -> dict[str, Any]:
    """The tenant default as Graph shows it (an enabled, empty one until set)."""
    stored = tenant.default_app_management_policy
    return {
        "id": DEFAULT_POLICY_ID,
        "displayName": "Default app management tenant policy",
        "description": "Default tenant policy that enforces app management restrictions on applications and service "
        "principals. To apply policy to targeted resources, create a new policy under appManagementPolicies "
        "collection.",
        "isEnabled": bool(stored.get("isEnabled", True)),
        "applicationRestrictions": stored.get("applicationRestrictions")
        or {"passwordCredentials": [], "keyCredentials": []},
        "servicePrincipalRestrictions": {"passwordCredentials": [], "keyCredentials": []},
    }


def app_policies(tenant: Tenant, app: App) -> list[dict[str, Any]]:
    return [tenant.app_management_policies[p] for p in app.management_policy_ids if p in tenant.app_management_policies]


def violation(state: State, app: App, group: str, start: dt.datetime, end: dt.datetime) -> tuple[str, str, str] | None:
    """Why the tenant's policies refuse a new credential of ``group`` (``passwordCredentials`` or
    ``keyCredentials``) on ``app`` from ``start`` to ``end``: ``(code, message, policy id)``, or None."""
    with state.lock:
        tenant = state.require_tenant(app.tenant_id)
        effective: dict[str, tuple[dict[str, Any], str]] = {}
        default = default_policy(tenant)
        if default["isEnabled"]:
            for item in default["applicationRestrictions"].get(group, []):
                effective[item["restrictionType"]] = (item, DEFAULT_POLICY_ID)
        for policy in app_policies(tenant, app):
            if policy.get("isEnabled", True):
                for item in policy["restrictions"].get(group, []):
                    effective[item["restrictionType"]] = (item, policy["id"])
    for kind, (item, policy_id) in effective.items():
        if item["state"] != "enabled":
            continue
        after = item.get("restrictForAppsCreatedAfterDateTime")
        if after is not None and app.created <= parse_iso(after):
            continue
        if kind == "passwordAddition":
            return TYPE_CODE, f"Credential type not allowed as per assigned policy '{policy_id}'.", policy_id
        if kind in LIFETIME_TYPES and end - start > parse_duration(str(item["maxLifetime"])):
            message = f"Credential lifetime exceeds the max value allowed as per assigned policy '{policy_id}'."
            return LIFETIME_CODE, message, policy_id
    return None
