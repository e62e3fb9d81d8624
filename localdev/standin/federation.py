"""Workload identity federation: a managed-identity endpoint, federated identity credentials, and the token
endpoint's check of a federated client assertion.

**Managed-identity endpoint** (what azure-identity's ``ManagedIdentityCredential`` calls on Azure Functions / App
Service, through MSAL's ``_obtain_token_on_app_service``): ``GET /msi/token?api-version=2019-08-01&resource=R
[&client_id=C | &principal_id=P | &object_id=P | &mi_res_id=ID]`` with header ``X-IDENTITY-HEADER: {secret}``.
Set ``IDENTITY_ENDPOINT={url}/msi/token`` and ``IDENTITY_HEADER`` = ``AdminClient.identity_endpoint()``'s
``header`` in the process that uses the credential. Answer 200 ``{"access_token", "expires_on": "<epoch
seconds>", "resource", "token_type": "Bearer", "client_id"}``; errors are App Service's shape ``{"statusCode",
"message", "correlationId"}`` (401 for a missing or wrong header, 400 for an unknown identity or a missing
resource). The token is signed by the stand-in's issuer key (the one in its JWKS) and carries ``iss`` =
``{url}/{tenant}/v2.0``, ``sub`` = ``oid`` = the identity's principal id, ``appid`` = ``azp`` = its client id,
``tid``, ``aud`` = the resource (``api://AzureADTokenExchange`` for token exchange; also the USGov and China
audiences), ``idtyp`` ``app`` and ``xms_mirid`` (the identity's resource id). A request naming no identity
is refused (the stand-in has no system-assigned identity).

**Federated identity credentials** on applications (Graph v1.0, addressed by ``/applications/{objectId}`` or
``/applications(appId='{appId}')``): ``GET .../federatedIdentityCredentials`` (``{"value": [...]}``),
``POST`` the same ``{"name", "issuer", "subject", "audiences": [one], "description"?}`` -> 201,
``GET``/``DELETE .../federatedIdentityCredentials/{id or name}`` (or ``...(name='{name}')``, msgraph's
``federated_identity_credentials_with_name``) -> 200 / 204. At most 20 per app (400
``Request_BadRequest`` past that; the wording of Graph's answer was not confirmed), a duplicate name or
issuer+subject is 409 with code ``Conflict`` (wording not confirmed either). Reading needs what reading the app needs;
writing needs Application.ReadWrite.All, or Application.ReadWrite.OwnedBy as an owner (see graph.py).

**Token endpoint** (``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``, a
``client_assertion`` not signed by a certificate of the app, while the app has a federated credential or the
assertion carries the stand-in's ``kid``): the assertion's ``iss``, ``sub`` and ``aud`` must equal (exactly,
case-sensitive) those of one federated credential of the app, else, as Entra answers: AADSTS70021 when the app
has none ("No matching federated identity record found for presented assertion. Assertion Issuer: '...'.
Assertion Subject: '...'. Assertion Audience: '...'."), AADSTS700211 when no credential has the issuer,
AADSTS700213 when none has the issuer and subject, AADSTS700212 when none also has the audience; a token Entra ID
(the stand-in) issued in another tenant than the app's is refused with AADSTS700236, as Entra refuses a managed
identity of another tenant (the stand-in has no multi-tenant applications). Then the
signature is checked with the stand-in's issuer key (an issuer that is not the stand-in cannot be verified here:
AADSTS50166) and ``exp``/``nbf`` with five minutes of skew (AADSTS700024). The token issued has ``appidacr``
"2".

**Admin API** (typed in :class:`localdev.standin.admin.AdminClient`):

* ``POST /_admin/managed-identities`` ``{"tenantId", "displayName"?, "clientId"?, "principalId"?}`` -> 201
  ``{clientId, principalId, tenantId, displayName, resourceId}``; ``GET /_admin/managed-identities`` ->
  ``{"identities": [...]}``; ``GET /_admin/managed-identities/endpoint`` -> ``{"endpoint", "header"}`` (the
  values of ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``);
* ``POST /_admin/tenants/{t}/apps/{a}/federated-credentials`` (the body as Graph's POST) -> 201 the credential;
  ``GET`` the same -> ``{"federatedCredentials": [...]}``; ``DELETE .../federated-credentials/{id or name}``.

Notes for the federated method: the issuer a federated credential needs for a managed identity of tenant T is
``{AZURE_AUTHORITY_HOST}/{T}/v2.0`` (the stand-in's URL as authority host), the subject the identity's
principal id, the audience ``api://AzureADTokenExchange``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

from localdev.standin import graph
from localdev.standin.admin_api import _body, _guard, _strings
from localdev.standin.context import Context
from localdev.standin.entra import fail, issuer, outside_valid_time
from localdev.standin.routing import HttpError, Request, Response, Router, empty_response, json_response
from localdev.standin.state import App, ManagedIdentity, StateError, Tenant

MSI_PATH = "/msi/token"
MANAGED_IDENTITY_TOKEN_LIFETIME = 86_399  # managed identity tokens live about 24 hours
FIC_DOCS = "https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation"
FIC_CHECK = (
    "Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
)
TENANT = r"(?P<tenant>[^/]+)"
APP = r"(?P<app>[^/]+)"


# --- the managed-identity endpoint ------------------------------------------------------------------------


def _msi_error(req: Request, status: int, message: str) -> HttpError:
    req.note["error"] = message
    return HttpError(
        json_response(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})
    )


def _identity(req: Request) -> ManagedIdentity:
    state = req.ctx.state
    query = req.query
    with state.lock:
        identities = list(state.managed_identities.values())
    wanted: list[ManagedIdentity] = []
    if query.get("client_id"):
        wanted = [i for i in identities if i.client_id == query["client_id"].lower()]
    elif query.get("principal_id") or query.get("object_id"):
        principal = (query.get("principal_id") or query.get("object_id") or "").lower()
        wanted = [i for i in identities if i.principal_id == principal]
    elif query.get("mi_res_id"):
        wanted = [i for i in identities if i.resource_id.lower() == query["mi_res_id"].lower()]
    else:
        raise _msi_error(req, 400, "No system assigned managed identity is enabled for this resource.")
    if not wanted:
        raise _msi_error(
            req,
            400,
            "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
        )
    return wanted[0]


def managed_identity_token(req: Request) -> Response:
    state = req.ctx.state
    presented = req.header("x-identity-header")
    with state.lock:
        expected = state.identity_header
    if not presented or presented != expected:
        raise _msi_error(req, 401, "Unauthorized. The X-IDENTITY-HEADER header is missing or wrong.")
    if req.query.get("api-version") != "2019-08-01":
        raise _msi_error(req, 400, "api-version 2019-08-01 is required.")
    resource = req.query.get("resource", "").strip()
    if not resource:
        raise _msi_error(req, 400, "The resource parameter is required.")
    identity = _identity(req)
    req.note["clientId"] = identity.client_id
    req.note["resource"] = resource
    claims: dict[str, Any] = {
        "aud": resource,
        "iss": issuer(req.ctx.url, identity.tenant_id),
        "tid": identity.tenant_id,
        "sub": identity.principal_id,
        "oid": identity.principal_id,
        "appid": identity.client_id,
        "azp": identity.client_id,
        "appidacr": "2",
        "azpacr": "2",
        "idtyp": "app",
        "xms_mirid": identity.resource_id,
        "ver": "2.0",
    }
    token = req.ctx.signer.issue(claims, lifetime=MANAGED_IDENTITY_TOKEN_LIFETIME)
    expires_on = int(time.time()) + MANAGED_IDENTITY_TOKEN_LIFETIME
    return json_response(
        200,
        {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        },
    )


# --- the token endpoint's federated assertion check ----------------------------------------------------------


def _stand_in_issuer(req: Request, value: str) -> bool:
    port = req.base_url.rsplit(":", 1)[1]
    return any(value.startswith(f"https://{host}:{port}/") for host in ("127.0.0.1", "localhost"))


def _issuing_tenant(req: Request, issuer: str) -> str | None:
    """The tenant (lower case) whose Entra ID issued a token of the stand-in's issuer ``{host}/{tenant}/v2.0``."""
    if not _stand_in_issuer(req, issuer):
        return None
    parts = issuer.split("/")
    return parts[3].lower() if len(parts) == 5 and parts[4] == "v2.0" else None


def check_federated(req: Request, tenant: Tenant, app: App, header: dict[str, object], assertion: str) -> None:
    """Accept ``assertion`` as ``app``'s client credential through one of its federated identity credentials, or
    raise the error Entra gives (see the module docstring)."""
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise fail(req, 401, "invalid_client", 50027, f"JWT token is invalid or malformed. ({exc})") from exc
    iss = str(unverified.get("iss", ""))
    sub = str(unverified.get("sub", ""))
    raw_aud = unverified.get("aud")
    audiences = [str(a) for a in raw_aud] if isinstance(raw_aud, list) else [str(raw_aud or "")]
    with req.ctx.state.lock:
        credentials = list(app.federated_credentials)
    if not credentials:
        raise fail(
            req,
            400,
            "invalid_request",
            70021,
            "No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{','.join(audiences)}'. "
            + FIC_DOCS,
        )
    by_issuer = [c for c in credentials if c.issuer == iss]
    if not by_issuer:
        raise fail(
            req,
            401,
            "invalid_client",
            700211,
            f"No matching federated identity record found for presented assertion issuer '{iss}'. {FIC_CHECK} "
            + FIC_DOCS,
        )
    by_subject = [c for c in by_issuer if c.subject == sub]
    if not by_subject:
        raise fail(
            req,
            401,
            "invalid_client",
            700213,
            f"No matching federated identity record found for presented assertion subject '{sub}'. {FIC_CHECK} "
            + FIC_DOCS,
        )
    matched = [c for c in by_subject if any(a in c.audiences for a in audiences)]
    if not matched:
        raise fail(
            req,
            401,
            "invalid_client",
            700212,
            f"No matching federated identity record found for presented assertion audience '{','.join(audiences)}'. "
            f"{FIC_CHECK} " + FIC_DOCS,
        )
    req.note["federatedCredential"] = matched[0].id
    issued_in = _issuing_tenant(req, iss)
    if issued_in is not None and issued_in != tenant.tenant_id.lower():
        raise fail(
            req,
            401,
            "invalid_client",
            700236,
            f"Entra ID tokens issued by issuer '{iss}' may not be used for federated identity credential flows for "
            "applications or managed identities registered in this tenant.",
        )
    if not _stand_in_issuer(req, iss) or header.get("kid") != req.ctx.signer.kid:
        raise fail(
            req,
            401,
            "invalid_client",
            50166,
            f"Request to External OIDC endpoint failed. The stand-in can verify only its own issuer's tokens, not "
            f"'{iss}'.",
        )
    try:
        claims = jwt.decode(
            assertion,
            req.ctx.signer.public_key,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise fail(
            req,
            401,
            "invalid_client",
            700027,
            "Client assertion contains an invalid signature. [Reason - The signature does not verify with the "
            f"issuer's key., Issuer: '{iss}']",
        ) from exc
    except jwt.PyJWTError as exc:
        raise fail(req, 401, "invalid_client", 50027, f"JWT token is invalid or malformed. ({exc})") from exc
    if outside_valid_time(claims):
        raise fail(
            req,
            401,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range. Review the documentation at "
            "https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
        )


# --- Graph: federatedIdentityCredentials ------------------------------------------------------------------------


def _graph_fic_input(req: Request, body: dict[str, Any]) -> tuple[str, str, str, list[str], str | None]:
    name, iss, sub = body.get("name"), body.get("issuer"), body.get("subject")
    audiences = body.get("audiences")
    description = body.get("description")
    for field_name, value in (("name", name), ("issuer", iss), ("subject", sub)):
        if not isinstance(value, str) or not value:
            raise graph.graph_error(
                req,
                400,
                "Request_BadRequest",
                f"Invalid value specified for property '{field_name}' of resource 'FederatedIdentityCredential'.",
            )
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise graph.graph_error(
            req,
            400,
            "Request_BadRequest",
            "Invalid value specified for property 'audiences' of resource 'FederatedIdentityCredential'.",
        )
    if description is not None and not isinstance(description, str):
        raise graph.graph_error(
            req,
            400,
            "Request_BadRequest",
            "Invalid value specified for property 'description' of resource 'FederatedIdentityCredential'.",
        )
    return str(name), str(iss), str(sub), [str(a) for a in audiences], description


def _fic_json(req: Request, app: App, credential: dict[str, Any]) -> dict[str, Any]:
    context = graph._context(req, f"applications('{app.object_id}')/federatedIdentityCredentials/$entity")
    return {"@odata.context": context, **credential}


def list_fics(req: Request) -> Response:
    caller = graph.authorize(req)
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, graph.Caller.may_read)
        items = [c.to_dict() for c in app.federated_credentials]
        context = graph._context(req, f"applications('{app.object_id}')/federatedIdentityCredentials")
    return graph.graph_response(req, 200, {"@odata.context": context, "value": items})


def add_fic(req: Request) -> Response:
    caller = graph.authorize(req)
    name, iss, sub, audiences, description = _graph_fic_input(req, graph._json_body(req))
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, graph.Caller.may_write)
        try:
            credential = state.add_federated_credential(
                app.tenant_id, app.app_id, name, iss, sub, audiences, description
            )
        except StateError as exc:
            code = "Conflict" if exc.status == 409 else "Request_BadRequest"
            raise graph.graph_error(req, exc.status, code, str(exc)) from exc
        req.note["federatedCredential"] = credential.id
        return graph.graph_response(req, 201, _fic_json(req, app, credential.to_dict()))


def _fic_of(req: Request, app: App) -> str:
    ref = req.params["fic"]
    for credential in app.federated_credentials:
        if credential.id == ref.lower() or credential.name == ref:
            return credential.id
    raise graph.graph_error(
        req,
        404,
        "Request_ResourceNotFound",
        f"Resource '{ref}' does not exist or one of its queried reference-property objects are not present.",
    )


def get_fic(req: Request) -> Response:
    caller = graph.authorize(req)
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, graph.Caller.may_read)
        fid = _fic_of(req, app)
        found = next(c for c in app.federated_credentials if c.id == fid)
        return graph.graph_response(req, 200, _fic_json(req, app, found.to_dict()))


def delete_fic(req: Request) -> Response:
    caller = graph.authorize(req)
    state = req.ctx.state
    with state.lock:
        app = graph.permitted_app(req, caller, graph.Caller.may_write)
        state.remove_federated_credential(app.tenant_id, app.app_id, _fic_of(req, app))
    return empty_response(204, {k: v for k, v in graph._headers(req).items() if k != "Content-Type"})


# --- admin ------------------------------------------------------------------------------------------------------


def admin_add_identity(req: Request) -> Response:
    body = _body(req)
    identity = req.ctx.state.add_managed_identity(
        str(body.get("tenantId") or ""),
        display_name=str(body.get("displayName") or "identity"),
        client_id=body.get("clientId"),
        principal_id=body.get("principalId"),
    )
    return json_response(201, identity.to_dict())


def admin_list_identities(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        return json_response(200, {"identities": [i.to_dict() for i in state.managed_identities.values()]})


def admin_identity_endpoint(req: Request) -> Response:
    with req.ctx.state.lock:
        header = req.ctx.state.identity_header
    return json_response(200, {"endpoint": req.base_url + MSI_PATH, "header": header})


def admin_add_fic(req: Request) -> Response:
    body = _body(req)
    credential = req.ctx.state.add_federated_credential(
        req.params["tenant"],
        req.params["app"],
        name=str(body.get("name") or ""),
        issuer=str(body.get("issuer") or ""),
        subject=str(body.get("subject") or ""),
        audiences=_strings(body.get("audiences"), "audiences"),
        description=None if body.get("description") is None else str(body["description"]),
    )
    return json_response(201, credential.to_dict())


def admin_list_fics(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        app = state.require_app(req.params["tenant"], req.params["app"])
        return json_response(200, {"federatedCredentials": [c.to_dict() for c in app.federated_credentials]})


def admin_remove_fic(req: Request) -> Response:
    removed = req.ctx.state.remove_federated_credential(req.params["tenant"], req.params["app"], req.params["fic"])
    return json_response(200, {"removed": removed.id})


def register(router: Router, ctx: Context) -> None:
    ctx.federated_check = check_federated
    router.add("GET", MSI_PATH, managed_identity_token)
    for address in (graph.APP_BY_APP_ID, graph.APP_BY_ID):
        collection = address + "/federatedIdentityCredentials"
        router.add("GET", collection + "/?", list_fics)
        router.add("POST", collection + "/?", add_fic)
        for item in (r"/(?P<fic>[^/()]+)", r"\(name='(?P<fic>[^'/]+)'\)"):
            router.add("GET", collection + item, get_fic)
            router.add("DELETE", collection + item, delete_fic)
    admin = "/_admin"
    app_path = f"{admin}/tenants/{TENANT}/apps/{APP}/federated-credentials"
    router.add("POST", f"{admin}/managed-identities", _guard(admin_add_identity))
    router.add("GET", f"{admin}/managed-identities", _guard(admin_list_identities))
    router.add("GET", f"{admin}/managed-identities/endpoint", _guard(admin_identity_endpoint))
    router.add("POST", app_path, _guard(admin_add_fic))
    router.add("GET", app_path, _guard(admin_list_fics))
    router.add("DELETE", app_path + "/(?P<fic>[^/]+)", _guard(admin_remove_fic))
