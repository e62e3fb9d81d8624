"""API registrations: app registrations that expose an API with app roles, and the roles assigned to people and
daemons, for tokens a service validates against the stand-in's discovery document.

An API is an app registration (it is in the tenant's apps, with a service principal and credentials like any
other) whose application ID URI is ``api://{appId}``, that defines app roles (plain strings, such as
``AppConnections.Admin``) and exposes one delegated permission, ``user_impersonation``. Roles are assigned to a
*principal*: a user of the tenant (admin ``add_user``; named by its object id or userPrincipalName) or a client
application (named by its appId or its service principal's object id). An assignment is kept under the
principal's object id (the user's id; the client's service principal id), which is what tokens carry in
``oid``. A role the API does not define cannot be assigned (400).

Tokens (issued by :mod:`localdev.standin.entra` and :mod:`localdev.standin.oauth`): ``client_credentials`` with
``scope=api://{appId}/.default`` (or ``{appId}/.default``) gives a daemon a v2 token with ``aud`` = the API's
appId and ``roles`` assigned to its service principal, ``idtyp: "app"``; the authorization-code grant (and
refresh tokens) for those scopes gives a person's v2 token with the user's ``roles`` and no ``idtyp``.

Admin routes (``{t}``: tenant id, ``{a}``: the API's appId):

* ``POST /_admin/tenants/{t}/apis`` ``{"displayName", "roles": [...], "appId"?}`` -> 201 with ``appId``,
  ``identifierUri``, ``appRoles``, ``servicePrincipalId``...;
* ``GET /_admin/tenants/{t}/apis/{a}`` -> the same with ``assignments`` ``[{principalId, role}]``;
* ``POST``/``DELETE /_admin/tenants/{t}/apis/{a}/assignments`` ``{"principalId", "role"}`` -> the assignment
  ``{principalId, principalType: "User"|"ServicePrincipal", role, resourceId}`` (DELETE: 404 when the principal
  does not hold the role).
"""

from __future__ import annotations

from typing import Any

from localdev.standin import oauth
from localdev.standin.admin_api import _body, _guard, _strings
from localdev.standin.context import Context
from localdev.standin.routing import Request, Response, Router, json_response
from localdev.standin.state import State, StateError

TENANT = r"(?P<tenant>[^/]+)"
API = r"(?P<api>[^/]+)"


def resolve_principal(state: State, tenant_id: str, principal: str) -> tuple[str, str]:
    """``(object id, "User" | "ServicePrincipal")`` of a user (id or userPrincipalName) or a client application
    (appId or service principal id) of the tenant; 404 when there is none."""
    wanted = principal.strip().lower()
    with state.lock:
        tenant = state.require_tenant(tenant_id)
        users = oauth.directory(state).users.get(tenant.tenant_id) or []
        user = next((u for u in users if wanted in (u.user_id.lower(), u.username.lower())), None)
        if user is not None:
            return user.user_id.lower(), "User"
        app = next((a for a in tenant.apps.values() if wanted in (a.app_id, a.service_principal_id)), None)
        if app is not None:
            return app.service_principal_id, "ServicePrincipal"
    raise StateError(f"no user, application or service principal {principal} in tenant {tenant.tenant_id}", 404)


def _require_api(state: State, tenant_id: str, app_id: str) -> None:
    with state.lock:
        if not state.require_app(tenant_id, app_id).is_api:
            raise StateError(f"the app {app_id} exposes no API (register it with POST /_admin/tenants/{{t}}/apis)")


def _assignment_body(req: Request) -> tuple[str, str]:
    body = _body(req)
    principal, role = body.get("principalId"), body.get("role")
    if not isinstance(principal, str) or not principal:
        raise StateError("principalId (a user's id or userPrincipalName, or a client's appId or service "
                         "principal id) is required")
    if not isinstance(role, str) or not role:
        raise StateError("role (an app role value the API defines) is required")
    return principal, role


def add_api(req: Request) -> Response:
    body = _body(req)
    app_id = body.get("appId")
    if app_id is not None and not isinstance(app_id, str):
        raise StateError("appId must be a string")
    api = req.ctx.state.add_api(
        req.params["tenant"],
        display_name=str(body.get("displayName") or "api"),
        roles=_strings(body.get("roles"), "roles"),
        app_id=app_id,
    )
    with req.ctx.state.lock:
        return json_response(201, api.api_dict())


def get_api(req: Request) -> Response:
    state = req.ctx.state
    _require_api(state, req.params["tenant"], req.params["api"])
    with state.lock:
        return json_response(200, state.require_app(req.params["tenant"], req.params["api"]).api_dict())


def _change_assignment(req: Request, assign: bool) -> Response:
    state = req.ctx.state
    tenant_id, api_id = req.params["tenant"], req.params["api"]
    principal, role = _assignment_body(req)
    _require_api(state, tenant_id, api_id)
    object_id, kind = resolve_principal(state, tenant_id, principal)
    if assign:
        api = state.assign_role(tenant_id, api_id, object_id, role)
    else:
        api = state.unassign_role(tenant_id, api_id, object_id, role)
    answer: dict[str, Any] = {
        "principalId": object_id,
        "principalType": kind,
        "role": role,
        "resourceId": api.service_principal_id,
        "resourceAppId": api.app_id,
    }
    return json_response(201 if assign else 200, answer)


def assign_role(req: Request) -> Response:
    return _change_assignment(req, assign=True)


def unassign_role(req: Request) -> Response:
    return _change_assignment(req, assign=False)


def register(router: Router, ctx: Context) -> None:
    del ctx
    prefix = "/_admin/tenants/" + TENANT + "/apis"
    router.add("POST", prefix, _guard(add_api))
    router.add("GET", rf"{prefix}/{API}", _guard(get_api))
    router.add("POST", rf"{prefix}/{API}/assignments", _guard(assign_role))
    router.add("DELETE", rf"{prefix}/{API}/assignments", _guard(unassign_role))
