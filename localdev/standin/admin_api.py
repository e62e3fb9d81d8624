"""The admin interface under ``/_admin/`` (JSON): seed tenants and apps, inspect traffic and the vault, inject faults.

Routes registered here (``{t}``: tenant id, ``{a}``: appId):

* ``GET /health``, ``GET /stats`` (connections opened, handshakes, requests logged), ``POST /reset``;
* directory: ``GET``/``POST /tenants``, ``POST /tenants/{t}/apps``, ``GET /tenants/{t}/apps/{a}``,
  ``POST``/``DELETE .../roles``, ``POST .../secrets``, ``DELETE .../secrets/{keyId}``, ``POST .../certificates``,
  ``DELETE .../certificates/{keyId}``, ``POST .../owners`` (for Application.ReadWrite.OwnedBy);
* Key Vault: ``PUT /vault/tenant`` (the tenant whose tokens the vault accepts), ``GET /vault/secrets`` (every
  version with its value);
* traffic and failures: ``GET``/``DELETE /requests`` (the request log), ``GET``/``PUT /faults`` (fault rules,
  see :class:`~localdev.standin.state.FaultRule`), ``PUT /latency``;
* Graph: ``GET /tenants/{t}/apps/{a}/passwords`` (current and removed password credentials, who added and
  removed them), ``PUT /graph/propagation-delay``, ``GET /graph/calls`` (counts and addPassword/removePassword
  log);
* webhook receivers (``POST /webhooks/{name}``; registered by ``webhooks.py``): ``GET /webhooks/deliveries``
  (``?name=`` for one receiver; oldest first: ``name``, ``headers``, ``body``, ``json``, ``receivedAt``,
  ``status``), ``DELETE /webhooks/deliveries``, ``PUT /webhooks/{name}/failures`` ``{"status", "times"}`` (the
  receiver answers ``status`` to its next ``times`` deliveries, still recording them).

``oauth.py`` registers the OAuth ones (``/_admin/oauth/...``, ``.../redirect-uris``, ``/tenants/{t}/users``),
``apis.py`` the API ones (``/tenants/{t}/apis...``) and ``webhooks.py`` the webhook ones, with :func:`_guard` and
:func:`_body` from here. A :class:`~localdev.standin.state.StateError` becomes a JSON error with its status.
Admin requests are not subject to faults or latency, stay out of the request log, and a connection whose first
request is one is not counted in ``connectionsOpened``. :class:`localdev.standin.admin.AdminClient` is the typed
client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localdev.standin import graph, keyvault
from localdev.standin.context import Context
from localdev.standin.routing import HttpError, Request, Response, Router, json_response
from localdev.standin.state import StateError, parse_iso

PREFIX = "/_admin"
TENANT = r"(?P<tenant>[^/]+)"
APP = r"(?P<app>[^/]+)"


def _body(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError as exc:
        raise HttpError(json_response(400, {"error": f"invalid JSON: {exc}"})) from exc
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise HttpError(json_response(400, {"error": "the body must be a JSON object"}))
    return body


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StateError(f"{field} must be a list of strings")
    return list(value)


def health(req: Request) -> Response:
    return json_response(200, {"status": "ok", "url": req.base_url})


def stats(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        return json_response(
            200,
            {
                "connectionsOpened": state.connections_opened,
                "handshakes": state.handshakes,
                "requestsLogged": len(state.request_log),
            },
        )


def reset(req: Request) -> Response:
    req.ctx.state.reset()
    return json_response(200, {"reset": True})


def list_tenants(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        return json_response(
            200,
            {
                "vaultTenant": state.effective_vault_tenant(),
                "tenants": [
                    {
                        "tenantId": t.tenant_id,
                        "displayName": t.display_name,
                        "apps": [a.to_dict() for a in t.apps.values()],
                    }
                    for t in state.tenants.values()
                ],
            },
        )


def add_tenant(req: Request) -> Response:
    body = _body(req)
    tenant = req.ctx.state.add_tenant(body.get("tenantId"), body.get("displayName"))
    return json_response(201, {"tenantId": tenant.tenant_id, "displayName": tenant.display_name})


def add_app(req: Request) -> Response:
    body = _body(req)
    app = req.ctx.state.add_app(
        req.params["tenant"],
        display_name=str(body.get("displayName") or "app"),
        app_id=body.get("appId"),
        roles=_strings(body.get("roles"), "roles"),
    )
    return json_response(201, app.to_dict())


def get_app(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        return json_response(200, state.require_app(req.params["tenant"], req.params["app"]).to_dict())


def grant_roles(req: Request) -> Response:
    body = _body(req)
    app = req.ctx.state.grant_roles(req.params["tenant"], req.params["app"], _strings(body.get("roles"), "roles"))
    with req.ctx.state.lock:
        return json_response(200, app.to_dict())


def revoke_roles(req: Request) -> Response:
    body = _body(req)
    app = req.ctx.state.revoke_roles(req.params["tenant"], req.params["app"], _strings(body.get("roles"), "roles"))
    with req.ctx.state.lock:
        return json_response(200, app.to_dict())


def add_secret(req: Request) -> Response:
    body = _body(req)
    try:
        end = parse_iso(body["endDateTime"]) if body.get("endDateTime") else None
        start = parse_iso(body["startDateTime"]) if body.get("startDateTime") else None
    except ValueError as exc:
        raise StateError(f"bad date: {exc}") from exc
    credential = req.ctx.state.add_password(
        req.params["tenant"],
        req.params["app"],
        display_name=body.get("displayName"),
        end=end,
        secret_text=body.get("secretText"),
        start=start,
    )
    return json_response(201, credential.to_dict(with_secret=True))


def remove_secret(req: Request) -> Response:
    req.ctx.state.remove_password(req.params["tenant"], req.params["app"], req.params["key"])
    return json_response(200, {"removed": req.params["key"]})


def add_certificate(req: Request) -> Response:
    body = _body(req)
    pem = body.get("certificate")
    if not isinstance(pem, str):
        raise StateError("certificate (PEM) is required")
    credential = req.ctx.state.add_certificate(req.params["tenant"], req.params["app"], pem, body.get("displayName"))
    return json_response(201, credential.to_dict())


def remove_certificate(req: Request) -> Response:
    req.ctx.state.remove_certificate(req.params["tenant"], req.params["app"], req.params["key"])
    return json_response(200, {"removed": req.params["key"]})


def set_vault_tenant(req: Request) -> Response:
    body = _body(req)
    tenant = req.ctx.state.require_tenant(str(body.get("tenantId") or ""))
    with req.ctx.state.lock:
        req.ctx.state.vault_tenant = tenant.tenant_id
    return json_response(200, {"tenantId": tenant.tenant_id})


def vault_secrets(req: Request) -> Response:
    return json_response(200, keyvault.dump(req.ctx))


def requests_log(req: Request) -> Response:
    clear = req.query.get("clear", "").lower() in ("1", "true", "yes")
    return json_response(200, {"requests": req.ctx.state.requests(clear=clear)})


def clear_requests(req: Request) -> Response:
    req.ctx.state.requests(clear=True)
    return json_response(200, {"cleared": True})


def get_faults(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        return json_response(200, {"rules": [rule.to_dict() for rule in state.faults]})


def set_faults(req: Request) -> Response:
    rules = _body(req).get("rules")
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise StateError("rules must be a list of objects")
    req.ctx.state.set_faults(rules)
    return get_faults(req)


def set_latency(req: Request) -> Response:
    body = _body(req)
    try:
        ms = max(0, int(body.get("ms") or 0))
    except (TypeError, ValueError) as exc:
        raise StateError("ms must be an integer") from exc
    with req.ctx.state.lock:
        req.ctx.state.latency_ms = ms
    return json_response(200, {"ms": ms})


def add_owner(req: Request) -> Response:
    owner = _body(req).get("owner")
    if not isinstance(owner, str) or not owner:
        raise StateError("owner (an appId or service principal id) is required")
    app = req.ctx.state.add_owner(req.params["tenant"], req.params["app"], owner)
    with req.ctx.state.lock:
        return json_response(200, app.to_dict())


def app_passwords(req: Request) -> Response:
    passwords = graph.app_passwords(req.ctx.state, req.params["tenant"], req.params["app"])
    return json_response(200, {"passwords": passwords})


def set_propagation_delay(req: Request) -> Response:
    try:
        seconds = max(0.0, float(_body(req).get("seconds") or 0))
    except (TypeError, ValueError) as exc:
        raise StateError("seconds must be a number") from exc
    with req.ctx.state.lock:
        req.ctx.state.propagation_delay = seconds
    return json_response(200, {"seconds": seconds})


def graph_calls(req: Request) -> Response:
    return json_response(200, graph.calls_view(req.ctx.state))


def _guard(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    def run(req: Request) -> Response:
        try:
            return handler(req)
        except StateError as exc:
            return json_response(exc.status, {"error": str(exc)})

    return run


def register(router: Router, ctx: Context) -> None:
    del ctx
    rows: list[tuple[str, str, Callable[[Request], Response]]] = [
        ("GET", "/health", health),
        ("GET", "/stats", stats),
        ("POST", "/reset", reset),
        ("GET", "/tenants", list_tenants),
        ("POST", "/tenants", add_tenant),
        ("POST", f"/tenants/{TENANT}/apps", add_app),
        ("GET", f"/tenants/{TENANT}/apps/{APP}", get_app),
        ("POST", f"/tenants/{TENANT}/apps/{APP}/roles", grant_roles),
        ("DELETE", f"/tenants/{TENANT}/apps/{APP}/roles", revoke_roles),
        ("POST", f"/tenants/{TENANT}/apps/{APP}/secrets", add_secret),
        ("DELETE", f"/tenants/{TENANT}/apps/{APP}/secrets/(?P<key>[^/]+)", remove_secret),
        ("POST", f"/tenants/{TENANT}/apps/{APP}/certificates", add_certificate),
        ("DELETE", f"/tenants/{TENANT}/apps/{APP}/certificates/(?P<key>[^/]+)", remove_certificate),
        ("PUT", "/vault/tenant", set_vault_tenant),
        ("GET", "/vault/secrets", vault_secrets),
        ("GET", "/requests", requests_log),
        ("DELETE", "/requests", clear_requests),
        ("GET", "/faults", get_faults),
        ("PUT", "/faults", set_faults),
        ("PUT", "/latency", set_latency),
        ("POST", f"/tenants/{TENANT}/apps/{APP}/owners", add_owner),
        ("GET", f"/tenants/{TENANT}/apps/{APP}/passwords", app_passwords),
        ("PUT", "/graph/propagation-delay", set_propagation_delay),
        ("GET", "/graph/calls", graph_calls),
    ]
    for method, path, handler in rows:
        router.add(method, PREFIX + path, _guard(handler))
