"""Entra ID v2.0 endpoints: OpenID discovery, JWKS and the token endpoint (client credentials).

* ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``GET /{tenant}/discovery[/v2.0]/keys`` for a
  known tenant or ``common``/``organizations``/``consumers``; an unknown tenant is 400 as in Entra.
* ``POST /{tenant}/oauth2/v2.0/token`` dispatches on ``grant_type`` to the grants registered with
  :func:`register_grant`: ``client_credentials`` here (a single ``{resource}/.default`` scope; an app-only
  access token with the app's ``roles``; for an app registration's API, ``api://{appId}/.default`` or
  ``{appId}/.default``, a v2 token with ``aud`` = the API's appId and the app roles assigned to the client on
  it, see :func:`issue_api_app_token`; an app the tenant lacks is AADSTS500011), ``authorization_code`` and
  ``refresh_token`` by
  :mod:`localdev.standin.oauth`. A tenant alias is refused here (AADSTS50059); ``oauth`` answers its own
  grants at ``/organizations`` and ``/common``.
* Client authentication (:func:`authenticate_client`): a client secret in the form or HTTP Basic (refused while
  a secret added through Graph is still propagating, and when expired), or a certificate ``client_assertion``
  (RS256 or PS256, the key found by ``x5t``/``x5t#S256``, audience, issuer/subject and times checked
  with five minutes of clock skew), or, when no certificate of the app signed it, a federated credential's token
  checked by :mod:`localdev.standin.federation` (``Context.federated_check``). ``appidacr`` says which ("1"
  secret, "2" certificate or federated assertion).

Errors are shaped like Entra's (``error``, ``error_description`` with ``AADSTS<code>``, ``error_codes``, trace
and correlation ids): :func:`entra_error` and :func:`fail`. Other grants can reuse :func:`authenticate_client`,
:func:`issue_access_token` and :func:`token_response`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from localdev.standin.context import Context, GrantHandler
from localdev.standin.routing import HttpError, Request, Response, Router, json_response
from localdev.standin.state import App, KeyCredential, Tenant, utcnow

TENANT_ALIASES = ("common", "organizations", "consumers")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS256", "PS256")  # Entra ID's: RSA only ('ES256' is AADSTS5002738)
CLOCK_SKEW = 300  # seconds of clock skew tolerated on assertion times, as Entra does
RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}
TENANT = r"(?P<tenant>[^/]+)"


def issuer(base_url: str, tenant_id: str) -> str:
    return f"{base_url}/{tenant_id}/v2.0"


def token_endpoint(base_url: str, tenant: str) -> str:
    return f"{base_url}/{tenant}/oauth2/v2.0/token"


def outside_valid_time(claims: Mapping[str, Any]) -> bool:
    """An assertion without ``exp``, expired, or not valid yet (``nbf``), each with Entra's clock skew."""
    now = time.time()
    exp, nbf = claims.get("exp"), claims.get("nbf")
    return (not isinstance(exp, int | float) or exp + CLOCK_SKEW < now
            or (isinstance(nbf, int | float) and nbf - CLOCK_SKEW > now))


def _timestamp() -> str:
    return utcnow().strftime("%Y-%m-%d %H:%M:%SZ")


def entra_error(req: Request, status: int, error: str, code: int, message: str) -> Response:
    """An error as Entra shapes it: ``AADSTS<code>: <message> Trace ID: ... Correlation ID: ... Timestamp: ...``."""
    trace_id = str(uuid.uuid4())
    correlation_id = req.header("client-request-id") or str(uuid.uuid4())
    stamp = _timestamp()
    description = f"AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {stamp}"
    req.note["error"] = f"AADSTS{code}"
    return json_response(
        status,
        {
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{req.base_url}/error?code={code}",
        },
        {"x-ms-request-id": trace_id, "client-request-id": correlation_id, "Cache-Control": "no-store, no-cache"},
    )


def fail(req: Request, status: int, error: str, code: int, message: str) -> HttpError:
    return HttpError(entra_error(req, status, error, code, message))


def tenant_not_found(req: Request, tenant: str, error: str = "invalid_request") -> HttpError:
    return fail(
        req,
        400,
        error,
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the "
        "correct cloud. Check with your subscription administrator, this may happen if there are no active "
        "subscriptions for the tenant.",
    )


def missing_parameter(req: Request, name: str) -> HttpError:
    return fail(
        req, 400, "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'."
    )


# --- discovery ------------------------------------------------------------------------------------------


def _discovery_tenant(req: Request) -> str:
    """The tenant segment as discovery documents show it; unknown tenants answer 400 like Entra."""
    tenant = req.params["tenant"]
    if tenant.lower() in TENANT_ALIASES:
        return tenant.lower()
    found = req.ctx.state.tenant(tenant)
    if found is None:
        raise tenant_not_found(req, tenant, "invalid_tenant")
    return found.tenant_id


def openid_configuration(req: Request) -> Response:
    tenant = _discovery_tenant(req)
    base = req.base_url
    issuer_tenant = "{tenantid}" if tenant in TENANT_ALIASES else tenant
    return json_response(
        200,
        {
            "token_endpoint": token_endpoint(base, tenant),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer(base, issuer_tenant),
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{base}/oidc/userinfo",
            "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{tenant}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/{tenant}/kerberos",
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        },
    )


def keys(req: Request) -> Response:
    tenant = _discovery_tenant(req)
    return json_response(200, req.ctx.signer.jwks(issuer(req.base_url, tenant)))


# --- token endpoint -------------------------------------------------------------------------------------


def token(req: Request) -> Response:
    tenant_segment = req.params["tenant"]
    form = req.form()
    req.note.update(
        {
            "tenant": tenant_segment,
            "grant_type": form.get("grant_type"),
            "client_id": form.get("client_id"),
            "scope": form.get("scope"),
        }
    )
    if tenant_segment.lower() in TENANT_ALIASES:
        raise fail(
            req,
            400,
            "invalid_request",
            50059,
            "No tenant-identifying information found in either the request or implied by any provided credentials.",
        )
    tenant = req.ctx.state.tenant(tenant_segment)
    if tenant is None:
        raise tenant_not_found(req, tenant_segment)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise missing_parameter(req, "grant_type")
    grant = req.ctx.grants.get(grant_type)
    if grant is None:
        raise fail(
            req, 400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
        )
    return grant(req, tenant, form)


def client_credentials(req: Request, tenant: Tenant, form: dict[str, str]) -> Response:
    app, acr = authenticate_client(req, tenant, form)
    resource = _default_scope_resource(req, form)
    api = find_api(req, tenant, resource)
    if api is not None:
        req.note["api"] = api.app_id
        return token_response(req, issue_api_app_token(req.ctx, tenant, app, api, acr))
    return token_response(req, issue_access_token(req.ctx, tenant, app, resource, acr))


def names_an_app(resource: str) -> bool:
    """Whether a resource names an app registration (``api://...`` or a bare appId), not a Microsoft service."""
    if resource.lower().startswith("api://"):
        return True
    try:
        uuid.UUID(resource)
    except ValueError:
        return False
    return True


def resource_not_found(req: Request, tenant: Tenant, resource: str) -> HttpError:
    return fail(
        req,
        400,
        "invalid_resource",
        500011,
        f"The resource principal named {resource} was not found in the tenant named {tenant.display_name}. This can "
        "happen if the application has not been installed by the administrator of the tenant or consented to by "
        "any user in the tenant. You might have sent your authentication request to the wrong tenant.",
    )


def find_api(req: Request, tenant: Tenant, resource: str) -> App | None:
    """The app registration a ``resource`` names (``api://{appId}``, another application ID URI, or an appId) in
    the tenant; None for other resources (Key Vault, Graph...); AADSTS500011 for an app the tenant lacks."""
    if not names_an_app(resource):
        return None
    api = req.ctx.state.find_api(tenant.tenant_id, resource)
    if api is None:
        raise resource_not_found(req, tenant, resource)
    return api


def issue_api_app_token(ctx: Context, tenant: Tenant, client: App, api: App, acr: str) -> str:
    """A v2 app-only access token for an app registration's API: ``aud`` is the API's appId, ``roles`` the app
    roles assigned to the client's service principal on it (no claim when none)."""
    with ctx.state.lock:
        roles = api.roles_of(client.service_principal_id)
    claims: dict[str, Any] = {
        "aud": api.app_id,
        "iss": issuer(ctx.url, tenant.tenant_id),
        "tid": tenant.tenant_id,
        "oid": client.service_principal_id,
        "sub": client.service_principal_id,
        "azp": client.app_id,
        "azpacr": acr,
        "idtyp": "app",
        "ver": "2.0",
    }
    if roles:
        claims["roles"] = roles
    return ctx.signer.issue(claims)


def _default_scope_resource(req: Request, form: dict[str, str]) -> str:
    scope = form.get("scope")
    if not scope:
        raise missing_parameter(req, "scope")
    scopes = [s for s in scope.split() if s.lower() not in RESERVED_SCOPES]
    if len(scopes) != 1 or not scopes[0].endswith("/.default"):
        raise fail(
            req,
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value "
            "with /.default suffixed to the resource identifier (application ID URI).",
        )
    return scopes[0].removesuffix("/.default")


def issue_access_token(ctx: Context, tenant: Tenant, app: App, resource: str, acr: str) -> str:
    """An app-only access token for ``resource`` signed by the stand-in."""
    claims: dict[str, Any] = {
        "aud": resource,
        "iss": issuer(ctx.url, tenant.tenant_id),
        "tid": tenant.tenant_id,
        "appid": app.app_id,
        "azp": app.app_id,
        "appidacr": acr,
        "azpacr": acr,
        "app_displayname": app.display_name,
        "oid": app.service_principal_id,
        "sub": app.service_principal_id,
        "idtyp": "app",
        "ver": "2.0",
    }
    if app.roles:
        claims["roles"] = sorted(app.roles)
    return ctx.signer.issue(claims)


def token_response(req: Request, access_token: str, extra: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599}
    body.update(extra or {})
    body["access_token"] = access_token
    return json_response(200, body, {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})


# --- client authentication -------------------------------------------------------------------------------


def authenticate_client(req: Request, tenant: Tenant, form: dict[str, str]) -> tuple[App, str]:
    """The app the request authenticates as, and its ``appidacr`` ("1" secret, "2" certificate)."""
    client_id = form.get("client_id", "")
    secret = form.get("client_secret")
    basic = req.header("authorization")
    if basic.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(basic[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise fail(req, 401, "invalid_client", 50027, "Invalid Basic authorization header.") from exc
        client_id = client_id or urllib.parse.unquote_plus(user)
        secret = urllib.parse.unquote_plus(password)
    if not client_id:
        raise missing_parameter(req, "client_id")
    req.note["client_id"] = client_id
    app = tenant.apps.get(client_id.lower())
    if app is None:
        raise fail(
            req,
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant.display_name}'. This "
            "can happen if the application has not been installed by the administrator of the tenant or consented "
            "to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
        )
    assertion = form.get("client_assertion")
    if secret is not None:
        req.note["auth"] = "secret"
        check_secret(req, app, secret)
        return app, "1"
    if assertion is not None:
        req.note["auth"] = "assertion"
        if form.get("client_assertion_type") != JWT_BEARER:
            raise fail(
                req, 400, "invalid_request", 50027, "Invalid client_assertion_type: expected " + JWT_BEARER + "."
            )
        check_assertion(req, tenant, app, assertion)
        return app, "2"
    raise fail(
        req,
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )


def _invalid_secret(req: Request, app: App) -> HttpError:
    return fail(
        req,
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, "
        f"not the client secret ID, for a secret added to app '{app.app_id}'.",
    )


def check_secret(req: Request, app: App, secret: str) -> None:
    now = utcnow()
    with req.ctx.state.lock:
        matches = [p for p in app.passwords if hmac.compare_digest(p.secret_text.encode(), secret.encode())]
    if not matches:
        raise _invalid_secret(req, app)
    credential = matches[0]
    req.note["key_id"] = credential.key_id
    # A secret added through Graph works only once it has propagated (its ready_at, fixed at creation).
    if credential.ready_at is not None and now < credential.ready_at:
        req.note["propagating"] = True
        raise _invalid_secret(req, app)
    if credential.end <= now or credential.start > now + dt.timedelta(seconds=CLOCK_SKEW):
        raise fail(
            req,
            401,
            "invalid_client",
            7000222,
            f"The provided client secret keys for app '{app.app_id}' are expired. Visit the Azure portal to create "
            "new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for "
            "added security: https://aka.ms/certCreds.",
        )


def _invalid_signature(req: Request, app: App, reason: str, thumbprint: str = "") -> HttpError:
    return fail(
        req,
        401,
        "invalid_client",
        700027,
        f"Client assertion contains an invalid signature. [Reason - {reason}, Thumbprint of key used by client: "
        f"'{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured "
        f"keys for app Id '{app.app_id}'.]",
    )


def _thumbprint_hex(value: str) -> str:
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4)).hex().upper()
    except (binascii.Error, ValueError):
        return value


def _find_key(app: App, header: dict[str, Any]) -> tuple[KeyCredential | None, str]:
    s256 = str(header.get("x5t#S256") or "").rstrip("=")
    sha1 = str(header.get("x5t") or "").rstrip("=")
    for key in app.keys:
        if (s256 and key.thumbprints.x5t_s256 == s256) or (sha1 and key.thumbprints.x5t == sha1):
            return key, key.thumbprints.sha1_hex
    return None, _thumbprint_hex(s256 or sha1)


def acceptable_audiences(req: Request, tenant: Tenant) -> set[str]:
    """Audiences accepted in a client assertion: the token endpoint (v2 or v1) or the issuer, any host alias."""
    port = req.base_url.rsplit(":", 1)[1]
    tids = {tenant.tenant_id, req.params["tenant"].lower()}
    paths = [f"/{t}{suffix}" for t in tids for suffix in ("/oauth2/v2.0/token", "/oauth2/token", "/v2.0", "")]
    return {f"https://{host}:{port}{path}" for host in ("127.0.0.1", "localhost") for path in paths}


def check_assertion(req: Request, tenant: Tenant, app: App, assertion: str) -> None:
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise fail(req, 401, "invalid_client", 50027, f"JWT token is invalid or malformed. ({exc})") from exc
    req.note["assertion"] = {"header": header, "claims": unverified}
    alg = str(header.get("alg"))
    if alg not in ASSERTION_ALGORITHMS:
        raise fail(
            req, 401, "invalid_client", 5002738, f"Invalid JWT token. '{alg}' is not a supported signature algorithm."
        )
    with req.ctx.state.lock:
        key, thumbprint = _find_key(app, header)
        federated = bool(app.federated_credentials) or header.get("kid") == req.ctx.signer.kid
    if key is None and federated and req.ctx.federated_check is not None:
        # Not signed by a certificate of the app: a federated credential's token (workload identity federation).
        req.note["auth"] = "federated"
        req.ctx.federated_check(req, tenant, app, header, assertion)
        return
    if key is None:
        raise _invalid_signature(req, app, "The key was not found.", thumbprint)
    req.note["key_id"] = key.key_id
    if not isinstance(key.public_key, rsa.RSAPublicKey):
        raise _invalid_signature(req, app, f"The key type does not match the algorithm {alg}.", thumbprint)
    now_dt = utcnow()
    if not key.start <= now_dt <= key.end:
        raise _invalid_signature(req, app, "The key used is expired.", thumbprint)
    try:
        claims = jwt.decode(
            assertion,
            key.public_key,
            algorithms=[alg],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise _invalid_signature(req, app, "The signature does not verify with the key.", thumbprint) from exc
    except jwt.PyJWTError as exc:
        raise fail(req, 401, "invalid_client", 50027, f"JWT token is invalid or malformed. ({exc})") from exc
    audiences = claims.get("aud")
    aud_list = audiences if isinstance(audiences, list) else [audiences]
    accepted = acceptable_audiences(req, tenant)
    if not any(isinstance(a, str) and a.rstrip("/") in accepted for a in aud_list):
        raise fail(
            req,
            401,
            "invalid_client",
            700027,
            f"Client assertion failed signature validation. [Reason - The audience '{audiences}' is invalid. "
            f"Expected {token_endpoint(req.base_url, tenant.tenant_id)}.]",
        )
    if str(claims.get("iss", "")).lower() != app.app_id or str(claims.get("sub", "")).lower() != app.app_id:
        raise fail(
            req,
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        )
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if outside_valid_time(claims):
        stamp = _timestamp()

        def when(value: object) -> str:
            if isinstance(value, int | float):
                return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            return "(none)"

        raise fail(
            req,
            401,
            "invalid_client",
            700024,
            f"Client assertion is not within its valid time range. Current time: {stamp}, assertion valid from "
            f"{when(nbf)}, expiry time of assertion {when(exp)}. Review the documentation at "
            "https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
        )


# --- registration --------------------------------------------------------------------------------------


def register_grant(ctx: Context, grant_type: str, handler: GrantHandler) -> None:
    ctx.grants[grant_type] = handler


def register(router: Router, ctx: Context) -> None:
    router.add("GET", rf"/{TENANT}/v2\.0/\.well-known/openid-configuration", openid_configuration)
    router.add("GET", rf"/{TENANT}/discovery/v2\.0/keys", keys)
    router.add("GET", rf"/{TENANT}/discovery/keys", keys)
    router.add("POST", rf"/{TENANT}/oauth2/v2\.0/token", token)
    register_grant(ctx, "client_credentials", client_credentials)
