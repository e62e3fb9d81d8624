"""Console sign-in: Entra ID authorization code with PKCE, and server-side sessions behind an opaque cookie.

The backend-for-frontend pattern of the IETF draft "OAuth 2.0 for Browser-Based Applications": the service is the
confidential client (the API's own app registration, ``AUTH_AUDIENCE``), the browser never holds a token.

* The cookie ``__Host-appconn`` (HttpOnly, Secure, SameSite=Lax, Path=/, no Domain) holds only a random session
  id ``{YYYYMMDDHH}.{43 random characters}`` (the hour it expires at the latest, then 256 random bits). The store
  keys the session by the SHA-256 of the id, never the id itself; session ids are never logged or audited.
* A session holds the user's identity and roles from the validated ID token (signature, issuer, audience,
  lifetime: ``shared.auth.TokenValidator``; nonce), a CSRF token, and its times: it ends ``session_absolute_hours``
  after sign-in (``CONSOLE_SESSION_ABSOLUTE_HOURS``, default 8) or ``session_idle_minutes`` after its last use
  (``CONSOLE_SESSION_IDLE_MINUTES``, default 30; the last use is written at most once a minute, but at once when
  the person chooses to stay signed in: :meth:`Sessions.stay`). Roles are those
  of sign-in: a role removed in Entra ID stops at the next sign-in, at most ``session_absolute_hours`` later.
  No refresh token is requested or kept. Each sign-in purges (best effort, at most 100) what has expired.
* Calls that change state (anything but GET, HEAD, OPTIONS) by cookie need the header ``X-CSRF-Token`` equal to
  the session's (compared in constant time) AND an ``Origin`` equal to the service's own: the origin of
  ``SITE_URL`` (the public base URL the OAuth redirect URIs are built on), not the request's Host header.
* Sign-in: ``/auth/login`` stores a pending login (PKCE S256 verifier, nonce, the return path) keyed by the hash
  of its ``state``, single use, ten minutes, and sets ``__Host-appconn-login-<tag>`` (a tag of the state: one
  cookie per sign-in, so two tabs signing in at once do not undo each other) to the state: the callback must
  come back to the browser that started it (no login CSRF). The client authenticates with a client assertion
  (the managed identity's token for ``api://AzureADTokenExchange``, a federated credential on the registration)
  when ``FEDERATION_IDENTITY_CLIENT_ID`` is set, else with ``CONSOLE_CLIENT_SECRET``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.auth import Principal, principal_of
from shared.errors import (
    InvalidRequest,
    RequestForgery,
    ServiceError,
    ServiceMisconfigured,
    SignInRequired,
    Unauthorized,
    entra_said,
)
from shared.json_codec import iso

if TYPE_CHECKING:
    from shared.auth import TokenValidator
    from shared.ports import Clock, SessionStore, TokenEndpoint
    from shared.settings import Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "__Host-appconn"
LOGIN_COOKIE_PREFIX = "__Host-appconn-login-"  # + a tag of the state: one cookie per sign-in
CSRF_HEADER = "X-CSRF-Token"
LOGIN_PATH = "/auth/login"
CALLBACK_PATH = "/auth/callback"
DEFAULT_RETURN_TO = "/organization/app-connections"
LOGIN_LIFETIME = timedelta(minutes=10)
TOUCH_INTERVAL = timedelta(seconds=60)
SCOPE = "openid profile"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

_BUCKET = "%Y%m%d%H"
_ID = re.compile(r"^(?P<bucket>\d{10})\.[A-Za-z0-9_-]{43}\Z")
_LOGIN_HINT = re.compile(r"^[A-Za-z0-9._%+@-]{1,256}\Z")
_RETURN_TO = re.compile(r"^/(?![/\\])[\x21-\x7e]{0,2047}\Z")


@dataclass(frozen=True)
class Session:
    """A signed-in user's session as stored (keyed by the hash of its id)."""

    key: str  # SHA-256 (hex) of the session id
    bucket: str  # the hour it ends at the latest (YYYYMMDDHH, UTC): the store's partition
    user_id: str
    name: str  # the user name (preferred_username), as the audit names the user
    display_name: str  # the ``name`` claim, for the page
    tenant_id: str
    roles: frozenset[str]
    csrf_token: str = field(repr=False)
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # absolute

    def ends_at(self, idle: timedelta) -> datetime:
        return min(self.expires_at, self.last_seen_at + idle)

    def principal(self) -> Principal:
        return Principal(id=self.user_id, name=self.name, type="user", tenant_id=self.tenant_id, roles=self.roles)


@dataclass(frozen=True)
class SignedIn:
    """A completed sign-in: the user (from the validated ID token), their display name, where to go back to."""

    principal: Principal
    display_name: str
    return_to: str


@dataclass(frozen=True)
class PendingLogin:
    key: str  # SHA-256 (hex) of the state
    bucket: str
    verifier: str = field(repr=False)
    nonce: str = field(repr=False)
    return_to: str
    expires_at: datetime


def hash_of(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_id(expires_at: datetime) -> str:
    """A session id or login state: the hour it expires in, then 256 random bits."""
    return f"{expires_at.astimezone(UTC).strftime(_BUCKET)}.{secrets.token_urlsafe(32)}"


def id_keys(value: str | None) -> tuple[str, str] | None:
    """(bucket, hash) of an id shaped like ours, else None."""
    match = _ID.match(value or "")
    return (match.group("bucket"), hash_of(value or "")) if match else None


def bucket_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_BUCKET)


def cookies_of(header: str | None) -> dict[str, str]:
    """The cookies of a ``Cookie`` header, name to value (the first of a name, as browsers send the most specific
    first)."""
    cookies: dict[str, str] = {}
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key and key not in cookies:
            cookies[key] = value.strip().strip('"')
    return cookies


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (:func:`cookies_of`)."""
    return cookies_of(header).get(name)


MAX_PENDING_LOGINS = 4  # sign-ins of one browser at once; a fifth clears the others (a pile-up, not tabs)


def stale_login_cookies(header: str | None) -> list[str]:
    """The sign-in cookies a browser sends that a new sign-in clears: all of them once there are
    ``MAX_PENDING_LOGINS`` (sign-ins left unfinished, or a loop of them: each adds a cookie for ten minutes, and
    enough of them would overflow the request's headers or push the session cookie out of the browser's jar)."""
    pending = [name for name in cookies_of(header) if name.startswith(LOGIN_COOKIE_PREFIX)]
    return pending if len(pending) >= MAX_PENDING_LOGINS else []


def login_cookie(state: str) -> str:
    """The name of the cookie that binds sign-in ``state`` to the browser that started it: one per sign-in, so that
    two tabs signing in at once (a restored browser, two alert links opened) do not undo each other."""
    digest = hashlib.sha256(state.encode("utf-8", "surrogatepass"))  # any state (a forged lone surrogate too)
    return LOGIN_COOKIE_PREFIX + digest.hexdigest()[:12]


def set_cookie(name: str, value: str, max_age: int | None) -> str:
    """A ``__Host-`` cookie: HttpOnly, Secure, SameSite=Lax, Path=/, no Domain; ``max_age`` None: a cookie of the
    browser's session (it goes when the browser is closed)."""
    lifetime = "" if max_age is None else f"Max-Age={max(0, max_age)}; "
    return f"{name}={value}; {lifetime}Path=/; Secure; HttpOnly; SameSite=Lax"


def clear_cookie(name: str) -> str:
    return f"{name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; Secure; HttpOnly; SameSite=Lax"


def safe_return_to(value: str | None) -> str:
    """``value`` when it is a path of this origin (``/x``, not ``//host`` or ``/\\host``, printable ASCII, not a
    sign-in route), else the console's page."""
    if not value or not _RETURN_TO.match(value):
        return DEFAULT_RETURN_TO
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc or parts.path.startswith("/auth/"):
        return DEFAULT_RETURN_TO
    return value


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lowercased, without a default port (as browsers send ``Origin``)."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return ""
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def login_url(return_to: str | None = None) -> str:
    if not return_to:
        return LOGIN_PATH
    return f"{LOGIN_PATH}?{urllib.parse.urlencode({'returnTo': safe_return_to(return_to)})}"


def _sign_in_again(detail: str, return_to: str | None = None) -> SignInRequired:
    return SignInRequired(detail, extensions={"loginUrl": login_url(return_to)},
                          headers={"Set-Cookie": clear_cookie(SESSION_COOKIE)})


class Sessions:
    """Sessions: started at sign-in, resumed by cookie (absolute and idle expiry), ended at sign-out."""

    def __init__(self, store: SessionStore, clock: Clock, settings: Settings) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self.absolute = timedelta(hours=settings.console.session_absolute_hours)
        self.idle = timedelta(minutes=settings.console.session_idle_minutes)
        self.origin = origin_of(settings.site_url)

    async def start(self, principal: Principal, display_name: str = "") -> tuple[str, Session]:
        """A new session for ``principal``: its id (for the cookie alone) and the session."""
        now = self._clock()
        expires = now + self.absolute
        session_id = new_id(expires)
        keys = id_keys(session_id)
        assert keys is not None
        session = Session(key=keys[1], bucket=keys[0], user_id=principal.id, name=principal.name,
                          display_name=display_name or principal.name, tenant_id=principal.tenant_id,
                          roles=principal.roles,
                          csrf_token=secrets.token_urlsafe(32), created_at=now, last_seen_at=now, expires_at=expires)
        await self._store.create(session)
        return session_id, session

    async def resume(self, session_id: str | None, *, use: bool = True) -> Session:
        """The live session of ``session_id`` (its last use noted, unless ``use`` is False: a look at the session,
        as the page's check of its expiry, does not keep it alive), or a 401 with ``loginUrl`` that clears the
        cookie: no such session, ended, or past its absolute or idle expiry (then deleted). Without a cookie, there
        is nothing to clear, and the 401 clears nothing: a cross-site form's POST is sent without the ``SameSite=Lax``
        cookie, and an answer that cleared it would sign the person's browser out (its top-level answer may set it)."""
        if session_id is None:
            raise SignInRequired("Sign in to use the console.", extensions={"loginUrl": login_url(None)})
        keys = id_keys(session_id)
        if keys is None:
            raise _sign_in_again("Sign in to use the console.")
        session = await self._store.get(*keys)
        if session is None:
            raise _sign_in_again("The session has ended; sign in again.")
        now = self._clock()
        if now >= session.ends_at(self.idle):
            await self._store.delete(session.bucket, session.key)
            raise _sign_in_again("The session has expired; sign in again.")
        if use and now - session.last_seen_at >= TOUCH_INTERVAL:
            if not await self._store.touch(session.bucket, session.key, now):
                raise _sign_in_again("The session has ended; sign in again.")
            session = replace(session, last_seen_at=now)
        return session

    async def stay(self, session_id: str | None, method: str, origin: str | None,
                   csrf_token: str | None) -> Session:
        """``POST /auth/session``: the person chose to stay signed in. The session is checked as a change by cookie
        (:meth:`check_change`: this service's Origin and the session's CSRF token; a forgery is refused naming the
        person, before anything is written), then its use is noted now, even within a minute of the last: the
        person asked explicitly, and the idle expiry the answer describes must be the one they were promised."""
        session = await self.resume(session_id, use=False)
        try:
            self.check_change(session, method, origin, csrf_token)
        except RequestForgery as forged:
            forged.principal = session.principal()  # a change forged against a person signed in: audited
            raise
        now = self._clock()
        if not await self._store.touch(session.bucket, session.key, now):
            raise _sign_in_again("The session has ended; sign in again.")
        return replace(session, last_seen_at=now)

    async def end(self, session_id: str | None) -> Session | None:
        """Delete the session (None when there was none)."""
        keys = id_keys(session_id)
        if keys is None:
            return None
        session = await self._store.get(*keys)
        if session is None:
            return None
        await self._store.delete(session.bucket, session.key)
        return session

    def check_change(self, session: Session, method: str, origin: str | None, csrf_token: str | None,
                     changes: bool = False) -> None:
        """A state-changing call by cookie must come from this service's origin with the session's CSRF token.

        ``changes``: the route changes state (or is audited) whatever its method: the OAuth authorize route is a
        GET that starts a sign-in which creates or rebinds a connection, and a link on another site would reach
        it with the cookie (SameSite=Lax). It needs the CSRF token as well, which only the console's own script
        can send (a header: another site cannot set it without a CORS preflight, which the service never
        grants); its Origin, which browsers leave out of a same-origin GET, must be the service's when sent."""
        safe = method.upper() in SAFE_METHODS
        if safe and not changes:
            return
        if (origin or not safe) and (
                not origin or not self.origin
                or not hmac.compare_digest(origin.strip().lower().encode(), self.origin.encode())):
            raise RequestForgery(f"A change by session cookie must come from {self.origin or 'this service'} "
                                 "(the Origin header).")
        if not csrf_token or not hmac.compare_digest(csrf_token.encode(), session.csrf_token.encode()):
            raise RequestForgery(f"A change by session cookie needs the session's CSRF token in {CSRF_HEADER}.")

    async def caller(self, cookie_header: str | None, method: str, origin: str | None,
                     csrf_token: str | None, changes: bool = False) -> Principal:
        """The principal of the request's session cookie, checked as :meth:`resume` and :meth:`check_change`."""
        session = await self.resume(cookie_value(cookie_header, SESSION_COOKIE))
        try:
            self.check_change(session, method, origin, csrf_token, changes)
        except RequestForgery as forged:
            forged.principal = session.principal()  # a change forged against a person signed in: audited
            raise
        return session.principal()

    def describe(self, session: Session) -> dict[str, object]:
        """``GET /auth/session``'s answer. ``expiresIn`` is the seconds left by this service's clock (rounded up),
        which the page times its warning and its check of the session's lapse by: its own clock may be minutes off.
        ``absoluteExpiresIn`` is the seconds left until the absolute expiry, which no use extends: when it is no
        more than ``expiresIn``, the page's warning says that staying signed in is not possible."""
        ends_at = session.ends_at(self.idle)
        now = self._clock()
        return {
            "user": {"name": session.display_name, "username": session.name, "oid": session.user_id,
                     "tid": session.tenant_id},
            "roles": sorted(session.roles),
            "csrfToken": session.csrf_token,
            "expiresAt": iso(ends_at),
            "expiresIn": max(0, math.ceil((ends_at - now).total_seconds())),
            "absoluteExpiresIn": max(0, math.ceil((session.expires_at - now).total_seconds())),
        }

    async def purge_expired(self) -> int:
        """A page of the sessions and pending sign-ins of hours that have passed."""
        return await self._store.purge_expired(self._clock())

    async def purge_all_expired(self, budget_seconds: float = 60.0,
                                monotonic: Callable[[], float] = time.monotonic) -> int:
        """Every expired session and pending sign-in, page after page, for ``budget_seconds`` at most (the daily
        retention timer): anyone may start a sign-in, and each start writes a row that only a page of 100 at the
        next sign-in would otherwise remove."""
        started = monotonic()
        total = 0
        while monotonic() - started < budget_seconds:
            deleted = await self.purge_expired()
            total += deleted
            if not deleted:
                break
        return total


ClientAssertion = Callable[[], Awaitable[str]]


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


class SignIn:
    """The authorization-code flow with PKCE against the API's own registration, for the console."""

    def __init__(self, settings: Settings, store: SessionStore, tokens: TokenEndpoint, validator: TokenValidator,
                 clock: Clock, assertion: ClientAssertion | None = None) -> None:
        self._settings = settings
        self._store = store
        self._tokens = tokens
        self._validator = validator
        self._clock = clock
        self._assertion = assertion

    @property
    def client_id(self) -> str:
        audience = (self._settings.auth_audience or "").removeprefix("api://")
        if not audience or "/" in audience or ":" in audience:
            raise ServiceMisconfigured("Sign-in needs AUTH_AUDIENCE to be the API registration's client ID "
                                       "(or api://<client ID>).")
        return audience

    @property
    def redirect_uri(self) -> str:
        return self._settings.site_url + CALLBACK_PATH

    def _require_configured(self) -> None:
        self._validator.require_configured()
        _ = self.client_id
        console = self._settings.console
        if not (self._settings.federation_identity_client_id and self._assertion) and not console.client_secret:
            raise ServiceMisconfigured("Sign-in is not configured: set FEDERATION_IDENTITY_CLIENT_ID (the managed "
                                       "identity of a federated credential on the API registration) or "
                                       "CONSOLE_CLIENT_SECRET.")

    def _authorize_endpoint(self) -> str:
        tenant = urllib.parse.quote(self._settings.auth_tenant_id or "", safe="")
        return f"{self._settings.authority_host}/{tenant}/oauth2/v2.0/authorize"

    async def begin(self, return_to: str | None, login_hint: str | None = None,
                    select_account: bool = False) -> tuple[str, str]:
        """(the authorize URL to send the browser to, the state for the login cookie); ``login_hint`` (a user
        name, passed on to Entra ID) skips its account picker; ``select_account`` has Entra ID show it even to a
        browser it has signed in (``prompt=select_account``: after a sign-out or a lapsed session, on a shared
        machine, the next person is not signed in as the last without being asked)."""
        self._require_configured()
        now = self._clock()
        expires = now + LOGIN_LIFETIME
        state = new_id(expires)
        keys = id_keys(state)
        assert keys is not None
        verifier, nonce = secrets.token_urlsafe(64), secrets.token_urlsafe(32)
        await self._store.put_login(PendingLogin(key=keys[1], bucket=keys[0], verifier=verifier, nonce=nonce,
                                                 return_to=safe_return_to(return_to), expires_at=expires))
        try:  # best effort, as the OAuth states: what expired waits harmlessly for the next sign-in
            await self._store.purge_expired(now)
        except Exception as error:
            log.info("Could not purge expired console sessions (%s)", type(error).__name__)
        query = urllib.parse.urlencode({
            "client_id": self.client_id, "response_type": "code", "redirect_uri": self.redirect_uri,
            "response_mode": "query", "scope": SCOPE, "state": state, "nonce": nonce,
            "code_challenge": _challenge(verifier), "code_challenge_method": "S256",
            **({"login_hint": login_hint} if login_hint and _LOGIN_HINT.match(login_hint)
               else {"prompt": "select_account"} if select_account else {}),
        })
        return f"{self._authorize_endpoint()}?{query}", state

    async def complete(self, params: Mapping[str, str], login_cookie: str | None,
                       failed: Callable[[ServiceError], Awaitable[None]] | None = None) -> SignedIn:
        """Redeem the callback's code: the signed-in user (from the validated ID token) and the return path.
        ``failed`` hears how a sign-in this browser started ended when it did not sign anyone in (Entra's refusal,
        an ID token that is not the answer to it, ...); an answer that completes no pending sign-in is only
        refused."""
        self._require_configured()
        state = params.get("state") or ""
        keys = id_keys(state)
        if keys is None or not login_cookie or not hmac.compare_digest(state.encode(), login_cookie.encode()):
            raise InvalidRequest("This sign-in was not started in this browser, or has already been used; "
                                 "sign in again.")
        pending = await self._store.take_login(*keys)
        if pending is None or pending.expires_at <= self._clock():
            raise InvalidRequest("This sign-in has expired or has already been used; sign in again.")
        try:
            return await self._redeem(params, pending)
        except ServiceError as error:
            if failed is not None:
                await failed(error)
            raise

    async def _redeem(self, params: Mapping[str, str], pending: PendingLogin) -> SignedIn:
        if params.get("error"):
            said = entra_said(params["error"], params.get("error_description"))
            raise InvalidRequest(f"Entra ID did not sign you in ({said}).")
        code = params.get("code") or ""
        if not code or len(code) > 4096:
            raise InvalidRequest("The sign-in answer has no authorization code; sign in again.")
        form = {"grant_type": "authorization_code", "client_id": self.client_id, "code": code,
                "redirect_uri": self.redirect_uri, "code_verifier": pending.verifier, "scope": SCOPE,
                **await self._client_authentication()}
        result = await self._tokens.redeem(self._settings.auth_tenant_id or "", form)
        if not result.id_token:
            raise Unauthorized("Entra ID answered without an ID token.")
        claims = await self._validator.claims(result.id_token)
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), pending.nonce.encode()):
            raise Unauthorized("The ID token is not the answer to this sign-in (nonce).")
        principal = principal_of(claims)
        if principal.type != "user" or not principal.id:
            raise Unauthorized("The ID token does not name a user.")
        display_name = claims.get("name")
        return SignedIn(principal, display_name if isinstance(display_name, str) else "", pending.return_to)

    async def _client_authentication(self) -> dict[str, str]:
        console = self._settings.console
        if self._settings.federation_identity_client_id and self._assertion is not None:
            return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": await self._assertion()}
        assert console.client_secret is not None
        return {"client_secret": console.client_secret}
