"""Microsoft Graph v1.0 for application registrations, as msgraph-sdk calls it, on the stand-in's own URL.

Routes (all need a bearer token issued by the stand-in for Graph: ``aud`` is the stand-in URL, as requested with
the scope ``{GRAPH_ENDPOINT}/.default``, or ``https://graph.microsoft.com`` or Graph's app id; ``$select`` is
honoured on reads):

* ``GET /v1.0/applications(appId='{appId}')`` and ``GET /v1.0/applications/{id}``: the application;
* ``POST .../addPassword`` ``{"passwordCredential": {displayName, endDateTime, startDateTime}}``: 200 with the
  new credential and its ``secretText`` (the only time it is shown); the secret is a client secret of that app
  at the token endpoint, refused there (AADSTS7000215) until ``state.propagation_delay`` seconds have passed;
* ``POST .../removePassword`` ``{"keyId"}``: 204; the secret stops working at once;
* an app management policy (:mod:`localdev.standin.policies`) can refuse addPassword with 400
  ``CredentialInvalidLifetimeAsPerAppPolicy`` or ``CredentialTypeNotAllowedAsPerAppPolicy``;
  :mod:`localdev.standin.federation` adds ``.../federatedIdentityCredentials``, :mod:`localdev.standin.keys`
  ``addKey``/``removeKey``, ``PATCH`` of ``keyCredentials`` and the policy reads;
* ``GET /v1.0/applications`` with ``$select``, ``$top`` (default 100, at most 999): the caller's tenant's apps it
  may read, paged by ``@odata.nextLink`` (``$skiptoken``).

Permissions come from the token's ``roles`` (and ``scp``): reading needs Application.Read.All or
Application.ReadWrite.All (or Directory.*), or Application.ReadWrite.OwnedBy for apps whose owners include the
caller's service principal (``oid``); an app may always read itself. Writing needs Application.ReadWrite.All,
or Application.ReadWrite.OwnedBy plus ownership. Else 403 ``Authorization_RequestDenied``.

Errors have Graph's shape ``{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}``. Choices where real Graph's answer was not confirmed: removePassword with an unknown
keyId answers 400 ``Request_BadRequest`` (see :func:`remove_password`); ``$filter``/``$search``/``$orderby``
(and ``$expand``/``$count``) answer 400 ``Request_UnsupportedQuery`` (the stand-in does not implement them).

Failure injection uses the generic fault rules (they apply to ``/v1.0/`` paths);
:func:`graph_fault`, :func:`throttle_fault` and :func:`concurrency_fault` build rules with Graph-shaped
bodies. Every Graph request that reaches a handler is counted per operation, and addPassword/removePassword
calls are logged (:func:`calls_view`, ``GET /_admin/graph/calls``); :func:`app_passwords` lists an app's
current and removed passwords with who added and removed them (``GET /_admin/tenants/{t}/apps/{a}/passwords``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from localdev.standin import policies
from localdev.standin.context import Context
from localdev.standin.routing import Handler, HttpError, Request, Response, Router, empty_response, json_response
from localdev.standin.state import App, PasswordCredential, State, Tenant, iso, parse_iso, utcnow
from localdev.standin.tokens import InvalidAccessToken

GRAPH_RESOURCES = ("https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000")
READ_ROLES = frozenset(
    {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
WRITE_ROLES = frozenset({"Application.ReadWrite.All", "Directory.ReadWrite.All"})
OWNED_BY = "Application.ReadWrite.OwnedBy"
OPERATIONS = ("get", "list", "addPassword", "removePassword")
DEFAULT_PAGE = 100
MAX_PAGE = 999
LOG_LIMIT = 10_000
DEFAULT_PASSWORD_LIFETIME = dt.timedelta(days=730)  # Graph's default endDateTime: startDateTime + 2 years
JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

# Graph's answer to concurrent changes of one tenant's directory objects (seen on addPassword as 409, and as 503).
CONCURRENCY_CODE = "Directory_ConcurrencyViolation"
CONCURRENCY_MESSAGE = "Error due to concurrent requests being made to the tenant. Please wait briefly and retry."
DENIED_MESSAGE = "Insufficient privileges to complete the operation."

APP_BY_ID = r"/v1\.0/applications/(?P<id>[^/()]+)"
APP_BY_APP_ID = r"/v1\.0/applications\(appId='?(?P<appid>[^'/()]+)'?\)"


# --- what the admin interface shows -----------------------------------------------------------------------


@dataclass
class GraphCalls:
    """Kept in ``state.extra["graph"]`` (so ``reset`` clears it), under ``state.lock``."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATIONS, 0))
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_LIMIT))


def _calls(state: State) -> GraphCalls:
    with state.lock:
        calls = state.extra.get("graph")
        if not isinstance(calls, GraphCalls):
            calls = state.extra["graph"] = GraphCalls()
        return calls


def calls_view(state: State) -> dict[str, Any]:
    """``{"counts": {operation: n}, "log": [{operation, appId, objectId, keyId, callerAppId, time, status,
    error}]}``: requests that reached a Graph handler (faulted ones are in the request log and rule hits)."""
    with state.lock:
        calls = _calls(state)
        return {"counts": dict(calls.counts), "log": [dict(entry) for entry in calls.log]}


def password_view(credential: PasswordCredential) -> dict[str, Any]:
    """A password credential as the admin interface shows it (never the secret text)."""
    return {
        "keyId": credential.key_id,
        "hint": credential.hint,
        "displayName": credential.display_name,
        "startDateTime": iso(credential.start),
        "endDateTime": iso(credential.end),
        "createdBy": credential.created_by,
        "createdByAppId": credential.created_by_app,
        "createdAt": credential.created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "revoked": credential.revoked is not None,
        "revokedAt": None if credential.revoked is None else iso(credential.revoked),
        "revokedBy": credential.revoked_by,
        # When the token endpoint starts accepting it (set for a secret added through Graph while a propagation
        # delay is set), else None.
        "readyAt": None if credential.ready_at is None
        else credential.ready_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def app_passwords(state: State, tenant_id: str, app_id: str) -> list[dict[str, Any]]:
    """Current password credentials, then removed ones, oldest first within each."""
    with state.lock:
        app = state.require_app(tenant_id, app_id)
        return [password_view(p) for p in [*app.passwords, *app.removed_passwords]]


def graph_fault(
    status: int,
    code: str,
    message: str,
    *,
    method: str | None = None,
    path: str = r"^/v1\.0/",
    times: int | None = 1,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """A fault rule (for ``AdminClient.set_faults``) answering with a Graph-shaped error body. A rule without a
    JSON body makes msgraph raise kiota's ``APIError`` ("failed to deserialize") instead of ``ODataError``."""
    headers = {"Content-Type": JSON_TYPE}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    inner = {
        "date": "2026-01-01T00:00:00",
        "request-id": "00000000-0000-0000-0000-000000000000",
        "client-request-id": "00000000-0000-0000-0000-000000000000",
    }
    return {
        "method": method,
        "path": path,
        "status": status,
        "headers": headers,
        "body": {"error": {"code": code, "message": message, "innerError": inner}},
        "times": times,
    }


def throttle_fault(path: str = r"^/v1\.0/", retry_after: int = 1, times: int | None = 1) -> dict[str, Any]:
    """429 ``TooManyRequests`` with ``Retry-After`` (the body of Graph's throttling documentation)."""
    return graph_fault(
        429, "TooManyRequests", "Please retry again later.", path=path, times=times, retry_after=retry_after
    )


def concurrency_fault(
    operation: str = "addPassword",
    status: int = 409,
    times: int | None = 1,
    retry_after: int | None = None,
) -> dict[str, Any]:
    """POST ``.../{operation}`` answered with Graph's concurrency error: ``{"error": {"code":
    "Directory_ConcurrencyViolation", "message": "Error due to concurrent requests being made to the tenant. Please
    wait briefly and retry.", "innerError": {...}}}``, 409 by default (the same body has been seen with 503)."""
    return graph_fault(
        status,
        CONCURRENCY_CODE,
        CONCURRENCY_MESSAGE,
        method="POST",
        path=rf"^/v1\.0/applications[^?]*/{operation}$",
        times=times,
        retry_after=retry_after,
    )


# --- responses ----------------------------------------------------------------------------------------------


def _ids(req: Request) -> tuple[str, str]:
    request_id = req.note.get("graphRequestId")
    if not isinstance(request_id, str):
        request_id = req.note["graphRequestId"] = str(uuid.uuid4())
    return request_id, req.header("client-request-id") or request_id


def _headers(req: Request) -> dict[str, str]:
    request_id, client_request_id = _ids(req)
    return {
        "Content-Type": JSON_TYPE,
        "request-id": request_id,
        "client-request-id": client_request_id,
        "OData-Version": "4.0",
        "Cache-Control": "no-cache",
    }


def graph_response(req: Request, status: int, payload: Any) -> Response:
    return json_response(status, payload, _headers(req))


def graph_error(req: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> HttpError:
    request_id, client_request_id = _ids(req)
    req.note["error"] = code
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": utcnow().strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    merged = _headers(req)
    merged.update(headers or {})
    return HttpError(json_response(status, body, merged))


def policy_error(req: Request, refused: tuple[str, str, str]) -> HttpError:
    """400 with Graph's answer to a credential an app management policy refuses (see ``policies.violation``)."""
    code, message, _policy = refused
    error = graph_error(req, 400, code, message)
    if code == policies.LIFETIME_CODE:
        payload = json.loads(error.response.body)
        payload["error"]["details"] = [{"code": "InvalidKeyEndDate", "message": message, "target": "EndDate"}]
        error.response.body = json.dumps(payload, separators=(",", ":")).encode()
    return error


def _bad_request(req: Request, message: str) -> HttpError:
    return graph_error(req, 400, "Request_BadRequest", message)


def _denied(req: Request) -> HttpError:
    return graph_error(req, 403, "Authorization_RequestDenied", DENIED_MESSAGE)


# --- the caller ---------------------------------------------------------------------------------------------


@dataclass
class Caller:
    tenant_id: str
    app_id: str
    service_principal_id: str
    roles: frozenset[str]

    def may_read(self, app: App) -> bool:
        return bool(self.roles & READ_ROLES) or self.owns(app) or self.app_id == app.app_id

    def may_write(self, app: App) -> bool:
        return bool(self.roles & WRITE_ROLES) or self.owns(app)

    def owns(self, app: App) -> bool:
        return OWNED_BY in self.roles and self.service_principal_id in app.owners

    @property
    def has_app_role(self) -> bool:
        return bool(self.roles & (READ_ROLES | {OWNED_BY}))


def accepted_audiences(req: Request) -> set[str]:
    port = req.base_url.rsplit(":", 1)[1]
    return {req.base_url, f"https://localhost:{port}", *GRAPH_RESOURCES}


def authorize(req: Request) -> Caller:
    """The caller of a Graph request, or 401 ``InvalidAuthenticationToken``. Never touches the body."""
    challenge = {
        "WWW-Authenticate": f'Bearer realm="", authorization_uri="{req.base_url}/common/oauth2/authorize", '
        'client_id="00000003-0000-0000-c000-000000000000"'
    }
    auth = req.header("authorization")
    if not auth.lower().startswith("bearer ") or not auth[7:].strip():
        req.note["auth"] = "none"
        raise graph_error(req, 401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
    try:
        claims = req.ctx.signer.verify(auth[7:].strip())
    except InvalidAccessToken as exc:
        req.note["auth"] = "invalid"
        message = str(exc)
        if "expired" in message.lower():
            message = "Lifetime validation failed, the token is expired."
        else:
            message = f"Access token validation failure. {message}"
        raise graph_error(req, 401, "InvalidAuthenticationToken", message, challenge) from exc
    audiences = claims.get("aud")
    aud_list = audiences if isinstance(audiences, list) else [audiences]
    accepted = accepted_audiences(req)
    if not any(isinstance(a, str) and a.rstrip("/") in accepted for a in aud_list):
        req.note["auth"] = "wrong-audience"
        raise graph_error(
            req, 401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.", challenge
        )
    raw_roles = claims.get("roles")
    roles: list[Any] = raw_roles if isinstance(raw_roles, list) else []
    scopes = str(claims.get("scp") or "").split()  # delegated tokens: scopes are treated like roles
    req.note["auth"] = "bearer"
    req.note["appid"] = claims.get("appid") or claims.get("azp")
    return Caller(
        tenant_id=str(claims.get("tid", "")).lower(),
        app_id=str(claims.get("appid") or claims.get("azp") or "").lower(),
        service_principal_id=str(claims.get("oid", "")).lower(),
        roles=frozenset(str(r) for r in [*roles, *scopes]),
    )


# --- lookups ------------------------------------------------------------------------------------------------


def _tenant(state: State, caller: Caller) -> Tenant | None:
    return state.tenants.get(caller.tenant_id)


def permitted_app(req: Request, caller: Caller, allowed: Callable[[Caller, App], bool]) -> App:
    """The application the request's path names, when ``allowed`` lets the caller act on it (else Graph's 403)."""
    app = _find(req, caller)
    if not allowed(caller, app):
        raise _denied(req)
    return app


def _find(req: Request, caller: Caller) -> App:
    """The addressed app in the caller's tenant (call under ``state.lock``); 404 or 403 when it can't be seen."""
    state = req.ctx.state
    tenant = _tenant(state, caller)
    object_id = req.params.get("id")
    app_id = req.params.get("appid")
    found: App | None = None
    if tenant is not None:
        if app_id is not None:
            found = tenant.apps.get(app_id.lower())
        else:
            wanted = (object_id or "").lower()
            found = next((a for a in tenant.apps.values() if a.object_id == wanted), None)
    if found is None:
        if not caller.has_app_role:
            raise _denied(req)
        raise graph_error(
            req,
            404,
            "Request_ResourceNotFound",
            f"Resource '{app_id or object_id}' does not exist or one of its queried reference-property objects "
            "are not present.",
        )
    req.note["appId"] = found.app_id
    req.note["objectId"] = found.object_id
    return found


def _key_credential_json(app: App) -> list[dict[str, Any]]:
    return [
        {
            "customKeyIdentifier": base64.b64encode(bytes.fromhex(k.thumbprints.sha1_hex)).decode("ascii"),
            "displayName": k.display_name,
            "endDateTime": iso(k.end),
            "key": None,
            "keyId": k.key_id,
            "startDateTime": iso(k.start),
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
        }
        for k in app.keys
    ]


def application_json(app: App) -> dict[str, Any]:
    return {
        "id": app.object_id,
        "deletedDateTime": None,
        "appId": app.app_id,
        "createdDateTime": iso(app.created),
        "displayName": app.display_name,
        "signInAudience": "AzureADMyOrg",
        "keyCredentials": _key_credential_json(app),
        "passwordCredentials": [p.to_dict() for p in app.passwords],
    }


def _selected(req: Request) -> list[str] | None:
    raw = req.query.get("$select", req.query.get("select"))
    if raw is None:
        return None
    return [name.strip() for name in raw.split(",") if name.strip()]


def _project(item: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    """``$select``: the named properties (case-insensitive; unknown names are left out) and always ``id``."""
    if not select:
        return item
    wanted = {name.lower() for name in select} | {"id"}
    return {key: value for key, value in item.items() if key.lower() in wanted}


def _context(req: Request, suffix: str) -> str:
    return f"{req.base_url}/v1.0/$metadata#{suffix}"


# --- counting and logging -----------------------------------------------------------------------------------


def _counted(operation: str, handler: Handler) -> Handler:
    @wraps(handler)
    def run(req: Request) -> Response:
        req.note["graph"] = operation
        req.note["target"] = req.target  # the path and query as sent, before percent-decoding
        state = req.ctx.state
        with state.lock:
            calls = _calls(state)
            calls.counts[operation] = calls.counts.get(operation, 0) + 1
        status = 500
        try:
            response = handler(req)
            status = response.status
            return response
        except HttpError as exc:
            status = exc.response.status
            raise
        finally:
            if operation in ("addPassword", "removePassword"):
                entry = {
                    "operation": operation,
                    "time": utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "status": status,
                    "appId": req.note.get("appId"),
                    "objectId": req.note.get("objectId") or req.params.get("id"),
                    "keyId": req.note.get("keyId"),
                    "callerAppId": req.note.get("appid"),
                    "error": req.note.get("error"),
                }
                with state.lock:
                    _calls(state).log.append(entry)

    return run


# --- handlers -----------------------------------------------------------------------------------------------


def get_application(req: Request) -> Response:
    caller = authorize(req)
    state = req.ctx.state
    with state.lock:
        app = permitted_app(req, caller, Caller.may_read)
        item = _project(application_json(app), _selected(req))
    return graph_response(req, 200, {"@odata.context": _context(req, "applications/$entity"), **item})


def _skip_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"standin-offset:{offset}".encode()).decode("ascii").rstrip("=")


def _offset(req: Request, token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "standin-offset":
            raise ValueError(text)
        return max(0, int(number))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _bad_request(req, "Invalid skip token.") from exc


def list_applications(req: Request) -> Response:
    caller = authorize(req)
    for unsupported in ("$filter", "$search", "$orderby", "$expand", "$count"):
        if unsupported in req.query or unsupported[1:] in req.query:
            raise graph_error(
                req, 400, "Request_UnsupportedQuery", f"The stand-in does not support {unsupported} on applications."
            )
    raw_top = req.query.get("$top", req.query.get("top"))
    try:
        top = DEFAULT_PAGE if raw_top is None else int(raw_top)
    except ValueError as exc:
        raise _bad_request(req, f"Invalid page size specified: '{raw_top}'.") from exc
    if not 1 <= top <= MAX_PAGE:
        raise _bad_request(req, f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_PAGE} inclusive.")
    raw_token = req.query.get("$skiptoken", req.query.get("skiptoken"))
    offset = 0 if raw_token is None else _offset(req, raw_token)
    select = _selected(req)
    if not caller.has_app_role:
        raise _denied(req)
    state = req.ctx.state
    with state.lock:
        tenant = _tenant(state, caller)
        visible = [a for a in (tenant.apps.values() if tenant else ()) if caller.may_read(a)]
        page = [_project(application_json(a), select) for a in visible[offset : offset + top]]
        more = offset + top < len(visible)
    context = _context(req, f"applications({','.join(select)})" if select else "applications")
    body: dict[str, Any] = {"@odata.context": context, "value": page}
    if more:
        query = [("$top", str(top))]
        if select:
            query.append(("$select", ",".join(select)))
        query.append(("$skiptoken", _skip_token(offset + top)))
        encoded = "&".join(f"{k}={urllib.parse.quote(v, safe=',')}" for k, v in query)
        body["@odata.nextLink"] = f"{req.base_url}/v1.0/applications?{encoded}"
    req.note["count"] = len(page)
    return graph_response(req, 200, body)


def _json_body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError as exc:
        raise _bad_request(
            req,
            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
            "payload is of valid JSON format.",
        ) from exc
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise _bad_request(req, "The request payload must be a JSON object.")
    return body


def _date(req: Request, value: Any, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_iso(str(value))
    except ValueError as exc:
        raise _bad_request(
            req, f"Invalid value specified for property '{name}' of resource 'PasswordCredential'."
        ) from exc


def add_password(req: Request) -> Response:
    caller = authorize(req)
    body = _json_body(req)
    credential_in = body.get("passwordCredential") or {}
    if not isinstance(credential_in, dict):
        raise _bad_request(req, "Invalid value specified for property 'passwordCredential'.")
    display_name = credential_in.get("displayName")
    end = _date(req, credential_in.get("endDateTime"), "endDateTime")
    start = _date(req, credential_in.get("startDateTime"), "startDateTime")
    state = req.ctx.state
    with state.lock:
        app = permitted_app(req, caller, Caller.may_write)
        begin = start or utcnow()
        refused = policies.violation(state, app, "passwordCredentials", begin, end or begin + DEFAULT_PASSWORD_LIFETIME)
        if refused is not None:
            raise policy_error(req, refused)
        credential = state.add_password(
            app.tenant_id,
            app.app_id,
            display_name=None if display_name is None else str(display_name),
            end=end,
            start=start,
            created_by="graph",
            created_by_app=caller.app_id,
        )
    req.note["keyId"] = credential.key_id
    payload = {"@odata.context": _context(req, "microsoft.graph.passwordCredential"), **credential.to_dict(True)}
    return graph_response(req, 200, payload)


def remove_password(req: Request) -> Response:
    """204, or 400 ``Request_BadRequest`` "No password credential found with keyId '...'." for an unknown key:
    the status and wording of real Graph's answer to an unknown keyId were not confirmed."""
    caller = authorize(req)
    body = _json_body(req)
    raw = body.get("keyId")
    req.note["keyId"] = raw
    try:
        key_id = str(uuid.UUID(str(raw)))
    except ValueError as exc:
        raise _bad_request(req, "Invalid value specified for property 'keyId' of resource 'removePassword'.") from exc
    state = req.ctx.state
    with state.lock:
        app = permitted_app(req, caller, Caller.may_write)
        if not any(p.key_id.lower() == key_id for p in app.passwords):
            raise _bad_request(req, f"No password credential found with keyId '{key_id}'.")
        state.remove_password(app.tenant_id, app.app_id, key_id, revoked_by="graph")
    return empty_response(204, {k: v for k, v in _headers(req).items() if k != "Content-Type"})


# --- registration -------------------------------------------------------------------------------------------


def register(router: Router, ctx: Context) -> None:
    del ctx
    for address in (APP_BY_APP_ID, APP_BY_ID):
        router.add("GET", address, _counted("get", get_application))
        router.add("POST", address + "/addPassword", _counted("addPassword", add_password))
        router.add("POST", address + "/removePassword", _counted("removePassword", remove_password))
    router.add("GET", r"/v1\.0/applications/?", _counted("list", list_applications))
