"""The Key Vault secrets data plane (any api-version), on the stand-in's own URL.

Routes: ``PUT /secrets/{name}`` (a new version), ``GET /secrets/{name}[/{version}]`` (403 for a disabled
version), ``PATCH /secrets/{name}[/{version}]`` (content type, tags, enabled, nbf, exp), ``GET /secrets`` and
``GET /secrets/{name}/versions`` (paged: ``maxresults`` up to 25, ``nextLink`` with ``$skiptoken``),
``DELETE /secrets/{name}`` (soft delete, purge scheduled after 90 days; the name cannot be reused until it is
recovered or purged: 409), ``GET /deletedsecrets[/{name}]``, ``DELETE /deletedsecrets/{name}`` (purge) and
``POST /deletedsecrets/{name}/recover``. Names are checked as Key Vault does; errors have its shape
(``{"error": {"code", "message", "innererror"}}``).

Every request is authorised first, before its body is read: without a valid bearer token for
``https://vault.azure.net`` from the vault's tenant (set with ``PUT /_admin/vault/tenant``, else the first
tenant created) it gets 401 with the ``WWW-Authenticate`` challenge the SDK's challenge policy expects.
:func:`dump` is the admin API's view of every secret and version.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from localdev.standin.context import Context
from localdev.standin.routing import HttpError, Request, Response, Router, empty_response, json_response
from localdev.standin.state import SecretVersion, VaultSecret
from localdev.standin.tokens import InvalidAccessToken

VAULT_RESOURCE = "https://vault.azure.net"
NAME_RE = re.compile(r"[0-9a-zA-Z-]{1,127}")
RECOVERABLE_DAYS = 90
MAX_SECRET_VALUE_BYTES = 25 * 1024  # Key Vault: "the maximum size of a secret value is 25k bytes"
DEFAULT_PAGE = 25
NAME = r"(?P<name>[^/]+)"
NOT_FOUND_HELP = (
    " If you recently deleted this secret you may be able to recover it using the correct recovery command. "
    "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
)


def kv_error(
    status: int, code: str, message: str, inner: str | None = None, headers: dict[str, str] | None = None
) -> HttpError:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    merged = {"x-ms-request-id": str(uuid.uuid4())}
    merged.update(headers or {})
    return HttpError(json_response(status, {"error": error}, merged))


def challenge_header(req: Request) -> str:
    tenant = req.ctx.state.effective_vault_tenant()
    return f'Bearer authorization="{req.base_url}/{tenant}", resource="{VAULT_RESOURCE}"'


def authorize(req: Request) -> dict[str, Any]:
    """The caller's token claims, or a 401 with the challenge. Never touches the body."""
    auth = req.header("authorization")
    challenge = {"WWW-Authenticate": challenge_header(req)}
    if not auth.lower().startswith("bearer "):
        req.note["auth"] = "none"
        raise kv_error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", headers=challenge)
    try:
        claims = req.ctx.signer.verify(auth[7:].strip(), audience=VAULT_RESOURCE)
    except InvalidAccessToken as exc:
        req.note["auth"] = "invalid"
        raise kv_error(401, "Unauthorized", f"AKV10022: {exc}", headers=challenge) from exc
    expected = req.ctx.state.effective_vault_tenant()
    if str(claims.get("tid", "")).lower() != expected:
        req.note["auth"] = "wrong-tenant"
        raise kv_error(
            401,
            "Unauthorized",
            f"AKV10032: Invalid issuer. Expected one of {req.base_url}/{expected}/v2.0, found {claims.get('iss')}.",
            headers=challenge,
        )
    req.note["auth"] = "bearer"
    req.note["appid"] = claims.get("appid")
    return claims


def _now() -> int:
    return int(time.time())


def _check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise kv_error(
            400,
            "BadParameter",
            "The request URI contains an invalid name: " + name + ". Secret names may contain only alphanumeric "
            "characters and dashes, and be 1 to 127 characters long.",
        )
    return name


def _not_found(name: str, version: str | None = None) -> HttpError:
    ident = f"{name}/{version}" if version else name
    return kv_error(
        404, "SecretNotFound", f"A secret with (name/id) {ident} was not found in this key vault." + NOT_FOUND_HELP
    )


def _attributes(v: SecretVersion) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": RECOVERABLE_DAYS,
    }
    if v.not_before is not None:
        attrs["nbf"] = v.not_before
    if v.expires is not None:
        attrs["exp"] = v.expires
    return attrs


def _item(base: str, secret: VaultSecret, v: SecretVersion, *, with_version: bool, value: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if value:
        out["value"] = v.value
    out["id"] = f"{base}/secrets/{secret.name}/{v.version}" if with_version else f"{base}/secrets/{secret.name}"
    if v.content_type is not None:
        out["contentType"] = v.content_type
    if v.tags:
        out["tags"] = dict(v.tags)
    out["attributes"] = _attributes(v)
    return out


def _deleted(base: str, secret: VaultSecret, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "recoveryId": f"{base}/deletedsecrets/{secret.name}",
        "deletedDate": secret.deleted_date,
        "scheduledPurgeDate": secret.scheduled_purge_date,
        **item,
    }


def _live(req: Request, name: str) -> VaultSecret:
    secret = req.ctx.state.vault.get(name.lower())
    if secret is None or secret.deleted:
        raise _not_found(name)
    return secret


def _deleted_secret(req: Request, name: str) -> VaultSecret:
    secret = req.ctx.state.vault.get(name.lower())
    if secret is None or not secret.deleted:
        raise kv_error(404, "SecretNotFound", f"Deleted Secret not found: {name}")
    return secret


def _body_object(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise kv_error(400, "BadParameter", f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise kv_error(400, "BadParameter", "The request body must be a JSON object.")
    return body


def _tags(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise kv_error(400, "BadParameter", "tags must be an object of strings")
    return {str(k): str(v) for k, v in raw.items()}


def _page(req: Request, items: list[dict[str, Any]]) -> Response:
    try:
        size = max(1, min(DEFAULT_PAGE, int(req.query.get("maxresults") or DEFAULT_PAGE)))
        start = max(0, int(req.query.get("$skiptoken") or 0))
    except ValueError as exc:
        raise kv_error(400, "BadParameter", "maxresults and $skiptoken must be integers") from exc
    chunk = items[start : start + size]
    next_link = None
    if start + size < len(items):
        api_version = req.query.get("api-version", "7.6")
        next_link = f"{req.base_url}{req.path}?api-version={api_version}&$skiptoken={start + size}&maxresults={size}"
    return json_response(200, {"value": chunk, "nextLink": next_link})


# --- handlers ------------------------------------------------------------------------------------------------


def set_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    req.note["secret"] = name
    body = _body_object(req)
    value = body.get("value")
    if not isinstance(value, str):
        raise kv_error(400, "BadParameter", "Property 'value' is required and must be a string.")
    if len(value.encode()) > MAX_SECRET_VALUE_BYTES:
        raise kv_error(400, "BadParameter", "The secret value exceeds the maximum allowed size of 25 KB.")
    attributes = body.get("attributes") or {}
    content_type = body.get("contentType")
    now = _now()
    state = req.ctx.state
    with state.lock:
        secret = state.vault.get(name.lower())
        if secret is not None and secret.deleted:
            raise kv_error(
                409,
                "Conflict",
                f"Secret {secret.name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged.",
                inner="ObjectIsDeletedButRecoverable",
            )
        if secret is None:
            secret = state.vault[name.lower()] = VaultSecret(name)
        version = SecretVersion(
            version=uuid.uuid4().hex,
            value=value,
            content_type=None if content_type is None else str(content_type),
            tags=_tags(body.get("tags")),
            enabled=bool(attributes.get("enabled", True)),
            created=now,
            updated=now,
            not_before=attributes.get("nbf"),
            expires=attributes.get("exp"),
        )
        secret.versions.append(version)
        req.note["version"] = version.version
        return json_response(200, _item(req.base_url, secret, version, with_version=True, value=True))


def get_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    wanted = req.params.get("version") or ""
    req.note["secret"] = name
    state = req.ctx.state
    with state.lock:
        secret = _live(req, name)
        version = secret.version(wanted) if wanted else secret.latest()
        if version is None:
            raise _not_found(name, wanted)
        if not version.enabled:
            raise kv_error(
                403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled"
            )
        req.note["version"] = version.version
        return json_response(200, _item(req.base_url, secret, version, with_version=True, value=True))


def update_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    wanted = req.params.get("version") or ""
    req.note["secret"] = name
    body = _body_object(req)
    state = req.ctx.state
    with state.lock:
        secret = _live(req, name)
        version = secret.version(wanted) if wanted else secret.latest()
        if version is None:
            raise _not_found(name, wanted)
        if "contentType" in body:
            version.content_type = None if body["contentType"] is None else str(body["contentType"])
        if "tags" in body:
            version.tags = _tags(body["tags"])
        attributes = body.get("attributes") or {}
        if attributes.get("enabled") is not None:
            version.enabled = bool(attributes["enabled"])
        if "nbf" in attributes:
            version.not_before = attributes["nbf"]
        if "exp" in attributes:
            version.expires = attributes["exp"]
        version.updated = _now()
        req.note["version"] = version.version
        return json_response(200, _item(req.base_url, secret, version, with_version=True, value=False))


def list_secrets(req: Request) -> Response:
    authorize(req)
    state = req.ctx.state
    with state.lock:
        items = [
            _item(req.base_url, s, s.latest(), with_version=False, value=False)
            for s in sorted(state.vault.values(), key=lambda s: s.name.lower())
            if not s.deleted and s.versions
        ]
    return _page(req, items)


def list_versions(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    state = req.ctx.state
    with state.lock:
        secret = state.vault.get(name.lower())
        if secret is None or secret.deleted:
            items: list[dict[str, Any]] = []
        else:
            items = [_item(req.base_url, secret, v, with_version=True, value=False) for v in secret.versions]
    return _page(req, items)


def delete_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    req.note["secret"] = name
    state = req.ctx.state
    with state.lock:
        secret = _live(req, name)
        now = _now()
        secret.deleted_date = now
        secret.scheduled_purge_date = now + RECOVERABLE_DAYS * 86400
        item = _item(req.base_url, secret, secret.latest(), with_version=True, value=False)
        return json_response(200, _deleted(req.base_url, secret, item))


def get_deleted_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    state = req.ctx.state
    with state.lock:
        secret = _deleted_secret(req, name)
        item = _item(req.base_url, secret, secret.latest(), with_version=True, value=False)
        return json_response(200, _deleted(req.base_url, secret, item))


def list_deleted_secrets(req: Request) -> Response:
    authorize(req)
    state = req.ctx.state
    with state.lock:
        items = [
            _deleted(req.base_url, s, _item(req.base_url, s, s.latest(), with_version=False, value=False))
            for s in sorted(state.vault.values(), key=lambda s: s.name.lower())
            if s.deleted
        ]
    return _page(req, items)


def purge_deleted_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    req.note["secret"] = name
    state = req.ctx.state
    with state.lock:
        secret = _deleted_secret(req, name)
        del state.vault[secret.name.lower()]
    return empty_response(204)


def recover_deleted_secret(req: Request) -> Response:
    authorize(req)
    name = _check_name(req.params["name"])
    req.note["secret"] = name
    state = req.ctx.state
    with state.lock:
        secret = _deleted_secret(req, name)
        secret.deleted_date = None
        secret.scheduled_purge_date = None
        return json_response(200, _item(req.base_url, secret, secret.latest(), with_version=True, value=False))


# --- admin view ----------------------------------------------------------------------------------------------


def dump(ctx: Context) -> dict[str, Any]:
    """Every secret, every version (oldest first) with its value: for tests, through the admin API."""
    with ctx.state.lock:
        return {
            s.name: {
                "name": s.name,
                "deleted": s.deleted,
                "deletedDate": s.deleted_date,
                "scheduledPurgeDate": s.scheduled_purge_date,
                "latest": s.latest().version if s.versions else None,
                "versions": [
                    {
                        "version": v.version,
                        "value": v.value,
                        "contentType": v.content_type,
                        "tags": v.tags,
                        "enabled": v.enabled,
                        "created": v.created,
                        "updated": v.updated,
                        "expires": v.expires,
                    }
                    for v in s.versions
                ],
            }
            for s in ctx.state.vault.values()
        }


def register(router: Router, ctx: Context) -> None:
    router.add("GET", r"/secrets/?", list_secrets)
    router.add("GET", rf"/secrets/{NAME}/versions/?", list_versions)
    router.add("PUT", rf"/secrets/{NAME}/?", set_secret)
    router.add("GET", rf"/secrets/{NAME}(?:/(?P<version>[^/]*))?", get_secret)
    router.add("PATCH", rf"/secrets/{NAME}(?:/(?P<version>[^/]*))?", update_secret)
    router.add("DELETE", rf"/secrets/{NAME}/?", delete_secret)
    router.add("GET", r"/deletedsecrets/?", list_deleted_secrets)
    router.add("GET", rf"/deletedsecrets/{NAME}/?", get_deleted_secret)
    router.add("DELETE", rf"/deletedsecrets/{NAME}/?", purge_deleted_secret)
    router.add("POST", rf"/deletedsecrets/{NAME}/recover/?", recover_deleted_secret)
