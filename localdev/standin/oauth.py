"""Entra ID's authorization-code flow: the authorize endpoint (auto-consent as a test user) and the
``authorization_code`` and ``refresh_token`` grants of the token endpoint.

- ``GET /{tenant}/oauth2/v2.0/authorize`` (``tenant``: a GUID, ``organizations`` or ``common``) checks the
  client and that ``redirect_uri`` is one registered on the app (admin ``add_redirect_uri``), signs in a test
  user of the tenant (for ``organizations``/``common``: the tenant set with admin ``set_sign_in``, else the
  app's home tenant; the user ``login_hint`` names (its userPrincipalName or id; an error page, AADSTS50034, when
  the tenant has none such), else the one set with ``set_sign_in``, else the tenant's first, created on first
  use) and redirects (302) to ``redirect_uri`` with ``code``,
  ``state`` and ``session_state``, or with ``error=access_denied`` (AADSTS65004) when admin ``set_consent(
  decline=True)`` says the user declines. An unknown client or redirect URI gets an error page, as Entra shows.
- Codes are bound to the client, the redirect URI and the PKCE challenge (S256 or plain), single use
  (AADSTS54005) and live five minutes (AADSTS70008); a wrong ``code_verifier`` is AADSTS50148.
- Refresh tokens rotate: each use returns a new one and invalidates the old (AADSTS70000 afterwards); admin
  ``revoke_refresh_tokens`` revokes a tenant's (or one user's) tokens (AADSTS50173); they expire after 90 days
  (AADSTS700082).
- Scopes for an app registration's API (admin ``add_api``: ``api://{appId}/.default`` or ``{appId}/.default``,
  or ``/user_impersonation``, its one delegated permission) give a v2 access token with ``aud`` = the API's
  appId, ``azp`` (the client), ``oid``, ``sub``, ``tid``, ``name``, ``preferred_username``, ``scp`` and
  ``roles`` (the app roles assigned to the user on the API, admin ``assign_role``; no claim when none), and no
  ``idtyp``; an API the tenant lacks is AADSTS500011, another permission name AADSTS65005.
- Responses carry ``access_token`` (delegated: ``aud`` is the scope's resource, ``scp``, ``tid``, ``oid``),
  ``refresh_token`` (when ``offline_access`` was consented), ``id_token`` (``tid``, ``oid``,
  ``preferred_username``; when ``openid`` was asked), ``expires_in`` and ``scope``.

The token endpoint of ``organizations``/``common`` is answered here for these two grants (the tenant is the
one the code or refresh token was issued in); ``server.build_router`` registers this module before ``entra``.
Admin routes live under ``/_admin/oauth/`` and ``/_admin/tenants/{t}/apps/{a}/redirect-uris``; every token
issued here is listed by ``GET /_admin/oauth/tokens`` so that tests can look for them where they must not be.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import html
import secrets
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from localdev.standin import entra
from localdev.standin.admin_api import _body, _guard
from localdev.standin.context import Context
from localdev.standin.routing import HttpError, Request, Response, Router, json_response
from localdev.standin.state import App, State, StateError, Tenant, iso, utcnow

CODE_LIFETIME = dt.timedelta(minutes=5)
REFRESH_TOKEN_LIFETIME = dt.timedelta(days=90)
ALIASES = ("organizations", "common")
SCOPE_NAMES_FOR_DEFAULT = "user_impersonation"
API_SCOPE = "user_impersonation"  # the delegated permission an API registered with admin add_api exposes


@dataclass
class User:
    tenant_id: str
    user_id: str
    username: str
    display_name: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "tenantId": self.tenant_id,
            "userPrincipalName": self.username,
            "displayName": self.display_name,
        }


@dataclass
class AuthCode:
    tenant_id: str
    client_id: str
    user_id: str
    redirect_uri: str
    scopes: list[str]
    challenge: str | None
    challenge_method: str
    expires: dt.datetime
    used: bool = False
    nonce: str | None = None


@dataclass
class RefreshToken:
    tenant_id: str
    client_id: str
    user_id: str
    scopes: list[str]
    issued: dt.datetime
    expires: dt.datetime
    redeemed: bool = False
    revoked: dt.datetime | None = None

    @property
    def status(self) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.redeemed:
            return "redeemed"
        return "expired" if self.expires <= utcnow() else "active"


@dataclass
class Directory:
    """Kept in ``state.extra["oauth"]`` (so ``reset`` clears it), under ``state.lock``."""

    redirect_uris: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (tenant, appId) -> URIs
    users: dict[str, list[User]] = field(default_factory=dict)  # tenant -> users
    sign_in_tenant: str | None = None
    sign_in_user: str | None = None
    decline: bool = False
    account_picker: bool = False  # without login_hint, the authorize endpoint lets the person choose a user
    codes: dict[str, AuthCode] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token value issued here (for secret scans)


def directory(state: State) -> Directory:
    with state.lock:
        found = state.extra.get("oauth")
        if not isinstance(found, Directory):
            found = state.extra["oauth"] = Directory()
        return found


def find_app(state: State, client_id: str) -> App | None:
    """The app registration with this client id, in whichever tenant it lives (its home tenant)."""
    wanted = client_id.lower()
    with state.lock:
        for tenant in state.tenants.values():
            if wanted in tenant.apps:
                return tenant.apps[wanted]
    return None


def add_user(state: State, tenant_id: str, username: str | None = None, display_name: str | None = None) -> User:
    with state.lock:
        tenant = state.require_tenant(tenant_id)
        users = directory(state).users.setdefault(tenant.tenant_id, [])
        number = len(users) + 1
        user = User(
            tenant_id=tenant.tenant_id,
            user_id=str(uuid.uuid4()),
            username=username or f"user{number}@tenant-{tenant.tenant_id[:8]}.example",
            display_name=display_name or f"Test User {number}",
        )
        users.append(user)
        return user


def _signed_in_user(state: State, tenant: Tenant, login_hint: str | None = None) -> User | None:
    """The user ``login_hint`` names (None when the tenant has no such user), else the one set with admin
    ``set_sign_in``, else the tenant's first user (created when there is none)."""
    with state.lock:
        found = directory(state)
        users = found.users.get(tenant.tenant_id) or []
        if login_hint:
            hint = login_hint.lower()
            return next((u for u in users if u.username.lower() == hint or u.user_id == hint), None)
        chosen = next((u for u in users if u.user_id == found.sign_in_user), None)
        return chosen or (users[0] if users else add_user(state, tenant.tenant_id))


def _user(state: State, tenant_id: str, user_id: str) -> User:
    with state.lock:
        users = directory(state).users.get(tenant_id) or []
        return next(u for u in users if u.user_id == user_id)


# --- scopes -------------------------------------------------------------------------------------------


def _resource_scopes(scopes: list[str], base_url: str) -> tuple[str, list[str]]:
    """The one resource the scopes are for, and the permission names (``.default`` -> user_impersonation)."""
    resources: set[str] = set()
    names: list[str] = []
    for scope in scopes:
        if scope.lower() in entra.RESERVED_SCOPES:
            continue
        if "/" in scope:  # {resource}/{name}, the resource a URI or an appId
            resource, _, name = scope.rpartition("/")
        else:  # a bare permission name is Microsoft Graph's
            resource, name = base_url, scope
        resources.add(resource)
        names.append(SCOPE_NAMES_FOR_DEFAULT if name == ".default" else name)
    if len(resources) > 1:
        raise ValueError("scopes for more than one resource")
    return (resources.pop() if resources else base_url), (names or ["User.Read"])


class ScopeRefused(Exception):
    def __init__(self, error: str, code: int, message: str) -> None:
        super().__init__(message)
        self.error, self.code, self.message = error, code, message


def _api_of(state: State, tenant: Tenant, resource: str, names: list[str]) -> App | None:
    """The app registration whose API the scopes are for (None for other resources); its one delegated
    permission is ``user_impersonation`` (``.default`` means it)."""
    if not entra.names_an_app(resource):
        return None
    api = state.find_api(tenant.tenant_id, resource)
    if api is None:
        raise ScopeRefused(
            "invalid_resource",
            500011,
            f"The resource principal named {resource} was not found in the tenant named {tenant.display_name}.",
        )
    unknown = sorted(set(names) - {API_SCOPE})
    if unknown:
        raise ScopeRefused(
            "invalid_scope",
            65005,
            f"The application asked for scope '{unknown[0]}' that doesn't exist on the resource '{api.app_id}'.",
        )
    return api


# --- authorize ----------------------------------------------------------------------------------------


def _error_page(req: Request, status: int, code: int, message: str) -> HttpError:
    req.note["error"] = f"AADSTS{code}"
    text = html.escape(f"AADSTS{code}: {message}")
    body = f"<!doctype html><title>Sign in</title><h1>Sorry, but we're having trouble signing you in.</h1><p>{text}</p>"
    return HttpError(
        Response(status, body.encode(), {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"})
    )


def _redirect(uri: str, params: dict[str, str | None]) -> Response:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if urllib.parse.urlsplit(uri).query else "?"
    return Response(302, b"", {"Location": f"{uri}{separator}{query}", "Cache-Control": "no-store"})


def authorize(req: Request) -> Response:
    state = req.ctx.state
    query = req.query
    req.note.update({"tenant": req.params["tenant"], "client_id": query.get("client_id"), "scope": query.get("scope")})
    client_id = query.get("client_id", "")
    if not client_id:
        raise _error_page(req, 400, 900144, "The request body must contain the following parameter: 'client_id'.")
    app = find_app(state, client_id)
    if app is None:
        raise _error_page(
            req, 400, 700016, f"Application with identifier '{client_id}' was not found in the directory."
        )
    redirect_uri = query.get("redirect_uri", "")
    with state.lock:
        registered = list(directory(state).redirect_uris.get((app.tenant_id, app.app_id), []))
    if redirect_uri not in registered:
        raise _error_page(
            req,
            400,
            50011,
            f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
            f"configured for the application '{app.app_id}'. Make sure the redirect URI sent in the request matches "
            "one added to your application in the Azure portal.",
        )
    segment = req.params["tenant"].lower()
    with state.lock:
        found = directory(state)
        sign_in_tenant, decline = found.sign_in_tenant, found.decline
    if segment in ALIASES:
        tenant = state.tenant(sign_in_tenant or app.tenant_id)
    elif segment == "consumers":
        tenant = None
    else:
        tenant = state.tenant(segment)
    if tenant is None:
        raise _error_page(req, 400, 90002, f"Tenant '{req.params['tenant']}' not found.")
    back: dict[str, str | None] = {"state": query.get("state")}

    def refuse(error: str, code: int, message: str) -> Response:
        req.note["error"] = f"AADSTS{code}"
        return _redirect(redirect_uri, {"error": error, "error_description": f"AADSTS{code}: {message}", **back})

    if query.get("response_type") != "code":
        return refuse("unsupported_response_type", 700054, "response_type 'code' is the one this stand-in knows.")
    if query.get("response_mode", "query") != "query":
        return refuse("invalid_request", 900144, "This stand-in answers with response_mode=query only.")
    scopes = query.get("scope", "").split()
    if not scopes:
        return refuse("invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
    try:
        resource, names = _resource_scopes(scopes, req.base_url)
    except ValueError:
        return refuse("invalid_scope", 28000, "Provided value for the input parameter scope is not valid.")
    try:
        _api_of(state, tenant, resource, names)
    except ScopeRefused as refused:
        return refuse(refused.error, refused.code, refused.message)
    challenge = query.get("code_challenge") or None
    method = query.get("code_challenge_method") or "plain"
    if challenge is not None and method not in ("S256", "plain"):
        return refuse("invalid_request", 501491, "Invalid code_challenge_method: expected S256 or plain.")
    if decline:
        return refuse(
            "access_denied", 65004, "User declined to consent to access the app."
        )
    login_hint = query.get("login_hint") or None
    with state.lock:
        picker = directory(state).account_picker
    if picker and not login_hint:
        return _account_picker(req, tenant, app)
    user = _signed_in_user(state, tenant, login_hint)
    if user is None:
        raise _error_page(
            req,
            400,
            50034,
            f"The user account {login_hint} does not exist in the {tenant.display_name} directory. To sign into "
            "this application, the account must be added to the directory.",
        )
    code = "1.A" + secrets.token_urlsafe(64)
    with state.lock:
        directory(state).codes[code] = AuthCode(
            tenant_id=tenant.tenant_id,
            client_id=app.app_id,
            user_id=user.user_id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            challenge=challenge,
            challenge_method=method,
            expires=utcnow() + CODE_LIFETIME,
            nonce=query.get("nonce") or None,
        )
    req.note["user"] = user.user_id
    return _redirect(redirect_uri, {"code": code, **back, "session_state": str(uuid.uuid4())})


def _account_picker(req: Request, tenant: Tenant, app: App) -> Response:
    """"Pick an account": a link per user of the tenant, each the same authorize request with its login_hint
    (and the app roles it holds on ``app``, when ``app`` is an API)."""
    state = req.ctx.state
    with state.lock:
        users = list(directory(state).users.get(tenant.tenant_id) or [])
        roles = {user.user_id: app.roles_of(user.user_id) for user in users}
    items = []
    for user in users:
        query = urllib.parse.urlencode({**req.query, "login_hint": user.username})
        held = ", ".join(roles[user.user_id]) or "no app roles"
        items.append(
            f'<li><a href="{html.escape(req.path + "?" + query)}">Sign in as {html.escape(user.display_name)}</a> '
            f"({html.escape(user.username)}: {html.escape(held)})</li>"
        )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Pick an account</title></head>'
        f"<body><main><h1>Pick an account</h1><p>Sign in to {html.escape(app.display_name or app.app_id)} "
        f"(local stand-in for Entra ID).</p><ul>{''.join(items)}</ul></main></body></html>"
    )
    req.note["picker"] = True
    return Response(200, body.encode(), {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
                                         "Content-Security-Policy": "default-src 'none'"})


# --- token grants -------------------------------------------------------------------------------------


def _authenticate(req: Request, tenant: Tenant, form: dict[str, str]) -> App:
    """The client, authenticated in its home tenant (the app may sign in users of another tenant)."""
    home = find_app(req.ctx.state, form.get("client_id", ""))
    home_tenant = req.ctx.state.tenant(home.tenant_id) if home is not None else None
    app, _acr = entra.authenticate_client(req, home_tenant or tenant, form)
    return app


def _invalid_grant(req: Request, code: int, message: str) -> HttpError:
    return entra.fail(req, 400, "invalid_grant", code, message)


def _check_tenant(req: Request, tenant: Tenant, issued_in: str, what: str) -> None:
    if req.params["tenant"].lower() not in ALIASES and tenant.tenant_id != issued_in:
        raise _invalid_grant(req, 700005, f"Provided {what} is intended to use against other tenant, thus rejected.")


def _pkce_matches(code: AuthCode, verifier: str) -> bool:
    if code.challenge is None:
        return True
    if code.challenge_method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    else:
        expected = verifier
    return hmac.compare_digest(expected.encode(), code.challenge.encode())


def authorization_code(req: Request, tenant: Tenant, form: dict[str, str]) -> Response:
    app = _authenticate(req, tenant, form)
    value = form.get("code")
    if not value:
        raise entra.missing_parameter(req, "code")
    state = req.ctx.state
    with state.lock:
        code = directory(state).codes.get(value)
        if code is None:
            raise _invalid_grant(req, 9002313, "Invalid request. Request is malformed or invalid.")
        if code.client_id != app.app_id:
            raise _invalid_grant(
                req, 70000, "The provided value for the 'code' parameter is not valid: it was issued to another client."
            )
        if code.used:
            raise _invalid_grant(
                req,
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                "existing refresh token.",
            )
        code.used = True  # any redemption attempt uses the code up
    if code.expires <= utcnow():
        raise _invalid_grant(
            req,
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive "
            "authorization request for this user and resource.",
        )
    _check_tenant(req, tenant, code.tenant_id, "Authorization Code")
    if form.get("redirect_uri", "") != code.redirect_uri:
        raise _invalid_grant(
            req,
            500112,
            f"The reply address '{form.get('redirect_uri', '')}' does not match the reply address "
            f"'{code.redirect_uri}' provided when requesting Authorization code.",
        )
    verifier = form.get("code_verifier")
    if code.challenge is not None and not verifier:
        raise entra.fail(
            req, 400, "invalid_request", 50148, "The code_verifier is missing but a code_challenge was supplied."
        )
    if not _pkce_matches(code, verifier or ""):
        raise _invalid_grant(
            req,
            50148,
            "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.",
        )
    issued_in = state.tenant(code.tenant_id)
    assert issued_in is not None
    return _issue(req, issued_in, app, _user(state, code.tenant_id, code.user_id), code.scopes, form.get("scope"),
                  nonce=code.nonce)


def refresh_token(req: Request, tenant: Tenant, form: dict[str, str]) -> Response:
    app = _authenticate(req, tenant, form)
    value = form.get("refresh_token")
    if not value:
        raise entra.missing_parameter(req, "refresh_token")
    state = req.ctx.state
    with state.lock:
        token = directory(state).refresh_tokens.get(value)
        if token is None:
            raise _invalid_grant(req, 9002313, "Invalid request. Request is malformed or invalid.")
        if token.client_id != app.app_id:
            raise _invalid_grant(
                req, 70000, "The provided value for the 'refresh_token' is not valid: it was issued to another client."
            )
        if token.revoked is not None:
            raise _invalid_grant(
                req,
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might "
                f"have changed or reset their password. The grant was issued on '{iso(token.issued)}' and the "
                f"TokensValidFrom date (before which tokens are not valid) for this user is '{iso(token.revoked)}'.",
            )
        if token.redeemed:
            raise _invalid_grant(
                req,
                70000,
                "The provided value for the 'refresh_token' is not valid: it was already redeemed (this stand-in "
                "rotates refresh tokens on every use).",
            )
        if token.expires <= utcnow():
            raise _invalid_grant(
                req,
                700082,
                f"The refresh token has expired due to inactivity. The token was issued on {iso(token.issued)} and "
                "was inactive for 90.00:00:00.",
            )
        _check_tenant(req, tenant, token.tenant_id, "refresh token")
        token.redeemed = True
    issued_in = state.tenant(token.tenant_id)
    assert issued_in is not None
    return _issue(req, issued_in, app, _user(state, token.tenant_id, token.user_id), token.scopes, form.get("scope"))


def _issue(
    req: Request, tenant: Tenant, app: App, user: User, consented: list[str], requested: str | None,
    nonce: str | None = None,
) -> Response:
    """Access, refresh and id tokens for ``user`` and the requested (else the consented) scopes."""
    ctx = req.ctx
    scopes = (requested or "").split() or consented
    try:
        resource, names = _resource_scopes(scopes, req.base_url)
    except ValueError:
        raise entra.fail(
            req, 400, "invalid_scope", 28000, "Provided value for the input parameter scope is not valid."
        ) from None
    try:
        api = _api_of(ctx.state, tenant, resource, names)
    except ScopeRefused as refused:
        raise entra.fail(req, 400, refused.error, refused.code, refused.message) from None
    if api is None and any(s.endswith("/.default") for s in scopes) and app.roles:
        names = sorted(app.roles)  # `.default`: the client app's statically consented delegated permissions
    wanted = {s.lower() for s in scopes} | {s.lower() for s in consented}
    common = {"iss": entra.issuer(ctx.url, tenant.tenant_id), "tid": tenant.tenant_id, "oid": user.user_id}
    subject = hashlib.sha256(f"{user.user_id}:{app.app_id}".encode()).hexdigest()[:43]
    if api is not None:
        req.note["api"] = api.app_id
        access = ctx.signer.issue(_api_user_claims(ctx.state, common, api, app, user, subject, names))
    else:
        access = ctx.signer.issue(
            {
                **common,
                "aud": resource,
                "sub": subject,
                "appid": app.app_id,
                "azp": app.app_id,
                "appidacr": "1",
                "app_displayname": app.display_name,
                "scp": " ".join(names),
                "upn": user.username,
                "preferred_username": user.username,
                "name": user.display_name,
                "idtyp": "user",
                "ver": "2.0",
            }
        )
    extra: dict[str, Any] = {"scope": " ".join(f"{resource}/{name}" for name in names)}
    issued = [access]
    if "openid" in wanted:
        id_claims: dict[str, Any] = {
            **common,
            "aud": app.app_id,
            "sub": hashlib.sha256(f"{user.user_id}:{app.app_id}".encode()).hexdigest()[:43],
            "preferred_username": user.username,
            "name": user.display_name,
            "ver": "2.0",
        }
        if "profile" not in wanted:  # as Entra: who signed in (oid) and their names need the profile scope
            for claim in ("oid", "preferred_username", "name"):
                id_claims.pop(claim, None)
        if nonce:  # the authorize request's nonce, as Entra echoes it (only from the authorization code grant)
            id_claims["nonce"] = nonce
        with ctx.state.lock:  # an app signing users in to itself: the app roles assigned to them on it
            own_roles = app.roles_of(user.user_id)
        if own_roles:
            id_claims["roles"] = own_roles
        extra["id_token"] = ctx.signer.issue(id_claims)
        issued.append(extra["id_token"])
    if "offline_access" in wanted:
        value = "1.A" + secrets.token_urlsafe(96)
        now = utcnow()
        with ctx.state.lock:
            directory(ctx.state).refresh_tokens[value] = RefreshToken(
                tenant_id=tenant.tenant_id,
                client_id=app.app_id,
                user_id=user.user_id,
                scopes=list(dict.fromkeys([*consented, *scopes])),
                issued=now,
                expires=now + REFRESH_TOKEN_LIFETIME,
            )
        extra["refresh_token"] = value
        issued.append(value)
    with ctx.state.lock:
        directory(ctx.state).issued.extend(issued)
    req.note["user"] = user.user_id
    return entra.token_response(req, access, extra)


def _api_user_claims(
    state: State, common: dict[str, Any], api: App, client: App, user: User, subject: str, names: list[str]
) -> dict[str, Any]:
    """A v2 delegated access token for an API: ``aud`` is its appId, ``roles`` the app roles assigned to the user
    on it (no claim when none), no ``idtyp`` (it is an optional claim Entra adds to app-only tokens only here)."""
    with state.lock:
        roles = api.roles_of(user.user_id)
    claims: dict[str, Any] = {
        **common,
        "aud": api.app_id,
        "sub": subject,
        "azp": client.app_id,
        "azpacr": "1",
        "scp": " ".join(dict.fromkeys(names)),
        "name": user.display_name,
        "preferred_username": user.username,
        "ver": "2.0",
    }
    if roles:
        claims["roles"] = roles
    return claims


def alias_token(req: Request) -> Response:
    """``/organizations`` or ``/common`` token endpoint: the two user grants find their tenant in the code or
    refresh token; anything else is Entra's own answer (AADSTS50059)."""
    form = req.form()
    grant_type = form.get("grant_type")
    state = req.ctx.state
    issued_in: str | None = None
    with state.lock:
        found = directory(state)
        if grant_type == "authorization_code" and form.get("code") in found.codes:
            issued_in = found.codes[form["code"]].tenant_id
        elif grant_type == "refresh_token" and form.get("refresh_token") in found.refresh_tokens:
            issued_in = found.refresh_tokens[form["refresh_token"]].tenant_id
    grant = req.ctx.grants.get(grant_type or "")
    if grant_type not in ("authorization_code", "refresh_token") or grant is None:
        return entra.token(req)
    req.note.update(
        {"tenant": req.params["tenant"], "grant_type": grant_type, "client_id": form.get("client_id"),
         "scope": form.get("scope")}
    )
    tenant = state.tenant(issued_in) if issued_in else None
    if tenant is None:
        raise _invalid_grant(req, 9002313, "Invalid request. Request is malformed or invalid.")
    return grant(req, tenant, form)


# --- admin --------------------------------------------------------------------------------------------


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StateError(f"{name} must be a string")
    return value


def admin_add_redirect_uri(req: Request) -> Response:
    uri = _optional_str(_body(req), "uri")
    if not uri or not uri.startswith(("https://", "http://")):
        raise StateError("uri must be an absolute http(s) URL")
    state = req.ctx.state
    with state.lock:
        app = state.require_app(req.params["tenant"], req.params["app"])
        uris = directory(state).redirect_uris.setdefault((app.tenant_id, app.app_id), [])
        if uri not in uris:
            uris.append(uri)
        return json_response(200, {"appId": app.app_id, "redirectUris": list(uris)})


def admin_add_user(req: Request) -> Response:
    body = _body(req)
    username, display_name = _optional_str(body, "userPrincipalName"), _optional_str(body, "displayName")
    user = add_user(req.ctx.state, req.params["tenant"], username, display_name)
    return json_response(201, user.to_dict())


def admin_set_sign_in(req: Request) -> Response:
    body = _body(req)
    tenant_id, user_id = _optional_str(body, "tenantId"), _optional_str(body, "userId")
    state = req.ctx.state
    with state.lock:
        if tenant_id is not None:
            tenant_id = state.require_tenant(tenant_id).tenant_id
        found = directory(state)
        found.sign_in_tenant, found.sign_in_user = tenant_id, user_id
    return json_response(200, {"tenantId": tenant_id, "userId": user_id})


def admin_set_consent(req: Request) -> Response:
    decline = bool(_body(req).get("decline"))
    with req.ctx.state.lock:
        directory(req.ctx.state).decline = decline
    return json_response(200, {"decline": decline})


def admin_set_account_picker(req: Request) -> Response:
    enabled = bool(_body(req).get("enabled"))
    with req.ctx.state.lock:
        directory(req.ctx.state).account_picker = enabled
    return json_response(200, {"enabled": enabled})


def admin_revoke(req: Request) -> Response:
    body = _body(req)
    state = req.ctx.state
    tenant = state.require_tenant(str(body.get("tenantId") or ""))
    user_id = _optional_str(body, "userId")
    now = utcnow()
    count = 0
    with state.lock:
        for token in directory(state).refresh_tokens.values():
            if token.tenant_id == tenant.tenant_id and user_id in (None, token.user_id) and token.revoked is None:
                token.revoked = now
                count += 1
    return json_response(200, {"revoked": count})


def admin_tokens(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        found = directory(state)
        return json_response(
            200,
            {
                "issued": list(found.issued),
                "refreshTokens": [
                    {
                        "value": value,
                        "tenantId": token.tenant_id,
                        "clientId": token.client_id,
                        "userId": token.user_id,
                        "issued": iso(token.issued),
                        "status": token.status,
                    }
                    for value, token in found.refresh_tokens.items()
                ],
                "users": [user.to_dict() for users in found.users.values() for user in users],
            },
        )


def register(router: Router, ctx: Context) -> None:
    tenant = entra.TENANT
    router.add("GET", rf"/{tenant}/oauth2/v2\.0/authorize", authorize)
    router.add("POST", r"/(?P<tenant>(?i:organizations|common))/oauth2/v2\.0/token", alias_token)
    entra.register_grant(ctx, "authorization_code", authorization_code)
    entra.register_grant(ctx, "refresh_token", refresh_token)
    admin = "/_admin"
    router.add("POST", rf"{admin}/tenants/{tenant}/apps/(?P<app>[^/]+)/redirect-uris", _guard(admin_add_redirect_uri))
    router.add("POST", rf"{admin}/tenants/{tenant}/users", _guard(admin_add_user))
    router.add("PUT", rf"{admin}/oauth/sign-in", _guard(admin_set_sign_in))
    router.add("PUT", rf"{admin}/oauth/consent", _guard(admin_set_consent))
    router.add("PUT", rf"{admin}/oauth/account-picker", _guard(admin_set_account_picker))
    router.add("POST", rf"{admin}/oauth/revoke", _guard(admin_revoke))
    router.add("GET", rf"{admin}/oauth/tokens", _guard(admin_tokens))
