"""Who is calling, and may they: Entra ID access tokens for the service's API registration, and app roles.

:class:`TokenValidator` checks a bearer token in the service itself (it holds where no platform
authentication sits in front): RS256 signature by a key of the OIDC discovery document of
``{AZURE_AUTHORITY_HOST}/{AUTH_TENANT_ID}/v2.0`` (cached; fetched again on an unknown ``kid``, at most once a
minute), issuer, audience ``AUTH_AUDIENCE`` (the API's client ID, or ``api://`` and it, both accepted),
``exp`` and ``nbf`` with a small skew. ``alg: none``, HS256 and every other algorithm are refused. There is no
open mode: without ``AUTH_TENANT_ID`` and ``AUTH_AUDIENCE`` every request is refused with a 503. The token
format is checked by :mod:`shared.jws` (our own strict JOSE parsing, the RSA signature by ``cryptography``),
not by a general JWT library: importing this module imports no cryptography at all, and the first fetch of
the keys imports it in a thread while it waits on the network, so a cold process's first request stays lean.

Roles come from the token's ``roles`` claim, for people (delegated tokens) and daemons (app-only tokens) alike:
``AppConnections.{Reader,Writer,Rotator,Auditor,Admin}``, each optionally limited to one app with a suffix
(``AppConnections.Writer.azure-key-vault``). Admin grants every role.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from shared import jws
from shared.errors import (
    Forbidden,
    ServiceError,
    ServiceMisconfigured,
    Unauthorized,
    UpstreamError,
    UpstreamThrottled,
    escaped,
)
from shared.settings import Settings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

ROLE_PREFIX = "AppConnections."
READER, WRITER, ROTATOR, AUDITOR, ADMIN = "Reader", "Writer", "Rotator", "Auditor", "Admin"
ROLES = (READER, WRITER, ROTATOR, AUDITOR, ADMIN)
CLOCK_SKEW_SECONDS = 120
DELEGATED_SCOPE = "user_impersonation"  # the API's one delegated permission (infra/main.bicep)
INSUFFICIENT_SCOPE = f'Bearer error="insufficient_scope", scope="{DELEGATED_SCOPE}"'
REFETCH_INTERVAL_SECONDS = 60.0
KEYS_MAX_AGE_SECONDS = 24 * 3600.0  # the key set is read again after a day, so a key Entra withdrew stops working
KEYS_HARD_MAX_AGE_SECONDS = KEYS_MAX_AGE_SECONDS + 3600.0  # till then read behind the requests; past it, waited for
FETCH_BACKOFF_SECONDS = 10.0  # after a failed read of the documents, none is tried again for this long
THROTTLED_HOLD_MAX_SECONDS = 300.0  # ... or for Entra's Retry-After when it throttled the read, up to this long
MAX_TOKEN_CHARS = jws.MAX_TOKEN_CHARS
CHALLENGE = 'Bearer error="invalid_token"'
VALIDATED_CACHE_SIZE = 1024  # tokens whose principal is kept until they expire (the oldest used goes first)


@dataclass(frozen=True)
class Principal:
    """The caller a valid token names."""

    id: str  # the object id (oid) of the user or the daemon's service principal
    name: str
    type: str  # "user" | "app"
    tenant_id: str
    roles: frozenset[str]

    def grant(self, role: str, app: str | None) -> str | None:
        """The role claim that lets this caller act as ``role`` (for ``app``, when the route has one)."""
        wanted = [f"{ROLE_PREFIX}{ADMIN}", f"{ROLE_PREFIX}{role}"]
        if app:
            wanted += [f"{ROLE_PREFIX}{ADMIN}.{app}", f"{ROLE_PREFIX}{role}.{app}"]
        return next((claim for claim in wanted if claim in self.roles), None)

    def apps_granted(self, role: str) -> set[str] | None:
        """The apps ``role`` is granted for: None when for every app."""
        if self.grant(role, None):
            return None
        prefixes = (f"{ROLE_PREFIX}{role}.", f"{ROLE_PREFIX}{ADMIN}.")
        return {claim.split(".", 2)[2] for claim in self.roles if claim.startswith(prefixes)}


def granted_apps(role: str) -> set[str] | None:
    """The apps the acting caller (``shared.audit.current``) holds ``role`` for: None when for every app."""
    from shared.audit import current

    caller = current()
    return Principal(caller.actor.id, caller.actor.name, caller.actor.type, "", caller.roles).apps_granted(role)


def authorize(principal: Principal, role: str, app: str | None) -> str:
    """The role claim used, or a 403 naming the role needed. The app is the route's, which the caller chose (a path
    segment, a query parameter): the message quotes it escaped and cut short, as the audit record of the refusal
    (``access.refused``) writes the message down."""
    used = principal.grant(role, app)
    if used is None:
        needed = f"{ROLE_PREFIX}{role}" + (f" (or {ROLE_PREFIX}{role}.{escaped(app, 80)})" if app else "")
        raise Forbidden(f"This needs the app role {needed}.", extensions={"requiredRole": f"{ROLE_PREFIX}{role}"})
    return used


REFUSALS: Mapping[jws.Reason, str] = MappingProxyType({
    "malformed": "The access token is not a JWT.",
    "algorithm": "The access token is not signed with RS256.",
    "expired": "The access token has expired.",
    "not_yet_valid": "The access token is not valid yet.",
    "audience": "The access token is for another API (audience).",
    "issuer": "The access token comes from another issuer.",
    "invalid": "The access token's signature or claims are not valid.",
})


def _unauthorized(detail: str) -> Unauthorized:
    return Unauthorized(detail, headers={"WWW-Authenticate": CHALLENGE})


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Send an Entra ID access token for this API: Authorization: Bearer <token>.",
                           headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("The Authorization header must be 'Bearer <token>'.")
    if len(token) > MAX_TOKEN_CHARS:
        raise _unauthorized("The access token is too long.")
    return token


FetchJson = Callable[[str], Awaitable[Any]]


class SigningKeys:
    """The signing keys of the tenant's OIDC discovery document, cached; fetched again for an unknown ``kid``,
    at most once every ``REFETCH_INTERVAL_SECONDS``, and once they are ``KEYS_MAX_AGE_SECONDS`` old (a key Entra
    withdrew in an emergency rollover is no longer trusted once that read lands). That daily read runs behind the
    requests: the request that finds the keys due starts it in a task and goes on with the keys there are, as do
    the requests that come while it runs; only keys past ``KEYS_HARD_MAX_AGE_SECONDS`` (or none, or an unknown
    ``kid``) are waited for. Requests waiting on a read do not read again once it completed (whatever it took, and
    whether it failed), so concurrent requests at a cold start read once. A read that fails keeps the keys there
    are, and no other read is tried for ``FETCH_BACKOFF_SECONDS``: an outage of the authority is not met with a
    read per request; after a read Entra still throttled (``UpstreamThrottled``: 429 or 503 when the retries ran
    out), none is tried before Entra's wait is over either (``THROTTLED_HOLD_MAX_SECONDS`` at most). Without keys,
    every token check until the next read is then a ``503`` whose ``Retry-After`` is what is left of that wait;
    after any other failure a ``502``."""

    def __init__(self, settings: Settings, fetch_json: FetchJson,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._fetch = fetch_json
        self._monotonic = monotonic
        self._keys: dict[str, RSAPublicKey] = {}
        self._issuer: str | None = None
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._throttled_until: float | None = None  # when Entra's wait of the last (throttled) read ends
        self._lock = asyncio.Lock()
        self._reads = 0  # reads completed (or failed): a request that waited on one does not read again
        self._behind: asyncio.Task[None] | None = None  # the daily read running behind the requests, held here

    @property
    def discovery_url(self) -> str:
        return f"{self._settings.authority_host}/{self._settings.auth_tenant_id}/v2.0/.well-known/openid-configuration"

    async def issuer(self) -> str:
        if self._issuer is None:
            await self._refresh(force=True)
        assert self._issuer is not None
        return self._issuer

    async def key(self, kid: str) -> RSAPublicKey | None:
        fetched = self._fetched_at
        if fetched is None or kid not in self._keys:
            await self._refresh(force=fetched is None)
        elif (age := self._monotonic() - fetched) >= KEYS_HARD_MAX_AGE_SECONDS:
            await self._refresh(force=False)
        elif age >= KEYS_MAX_AGE_SECONDS:
            self._read_behind()
        return self._keys.get(kid)

    async def settled(self) -> None:
        """Wait for the read running behind the requests, if one is (it never raises)."""
        if self._behind is not None:
            await asyncio.wait([self._behind])

    async def close(self) -> None:
        """End the read running behind the requests, if one is: cancelled and awaited, so that no task is left
        pending when the clients it reads over close (the host's shutdown, ``shared.wiring.token_validator``)."""
        behind, self._behind = self._behind, None
        if behind is not None and not behind.done():
            behind.cancel()
            await asyncio.wait([behind])

    def _read_behind(self) -> None:
        """Start the daily read in a task, unless a read is running or the last one failed under its back-off. The
        task is held on the object (the loop keeps only a weak reference), and what it raised is retrieved and
        logged (``_refresh`` keeps the keys read before on a failed read, so nothing is expected)."""
        if self._lock.locked() or (self._behind is not None and not self._behind.done()):
            return
        if self._failed_at is not None and self._monotonic() < self._next_read_after(self._failed_at):
            return
        from shared.azure.retry import shared_task

        self._behind = shared_task(self._refresh(force=False))  # not under the deadline of the request it began in
        self._behind.add_done_callback(_logged)

    async def _refresh(self, force: bool) -> None:
        reads = self._reads
        async with self._lock:
            if self._reads != reads and self._fetched_at is not None:
                return  # a read completed while this request waited: its keys (or, failed, the ones kept)
            now = self._monotonic()
            if not force and self._fetched_at is not None and now - self._fetched_at < REFETCH_INTERVAL_SECONDS:
                return
            if self._failed_at is not None and now < (resume := self._next_read_after(self._failed_at)):
                if self._issuer is None:
                    if self._throttled_until is not None:
                        raise UpstreamThrottled("Entra ID is busy and the tenant's signing keys could not be read; "
                                                "try again later.", retry_after=max(1.0, resume - now))
                    raise UpstreamError("The tenant's signing keys could not be read; try again in a few seconds.")
                return  # the keys there are, until the next try
            try:
                if self._fetched_at is None:  # a cold start: import cryptography while the documents are fetched
                    (issuer, jwks), _ = await asyncio.gather(self._documents(), asyncio.to_thread(jws.load_crypto))
                else:
                    issuer, jwks = await self._documents()
                keys = await asyncio.to_thread(_usable_keys, jwks, self._keys)
            except Exception as error:
                self._reads += 1
                self._failed_at = now
                self._throttled_until = now + error.retry_after if isinstance(error, UpstreamThrottled) else None
                if self._issuer is None:
                    if isinstance(error, ServiceError):
                        raise
                    raise UpstreamError(f"The tenant's signing keys could not be read ({type(error).__name__}); "
                                        "try again in a few seconds.") from None
                log.warning("The tenant's signing keys could not be read again; the ones read before are kept")
                return
            self._keys, self._issuer, self._fetched_at, self._failed_at = keys, issuer, now, None
            self._reads += 1

    def _next_read_after(self, failed_at: float) -> float:
        """When the documents may be read again after a read that failed at ``failed_at``: after the back-off, or
        after Entra's wait when it throttled that read (a read every back-off would only prolong the throttling),
        held no longer than ``THROTTLED_HOLD_MAX_SECONDS``, so that a new key is not waited for an hour."""
        resume = failed_at + FETCH_BACKOFF_SECONDS
        if self._throttled_until is not None:
            resume = max(resume, min(self._throttled_until, failed_at + THROTTLED_HOLD_MAX_SECONDS))
        return resume

    async def _documents(self) -> tuple[str, Any]:
        """The issuer of the discovery document and the key set it points to."""
        document = await self._fetch(self.discovery_url)
        if not isinstance(document, dict) or not document.get("jwks_uri") or not document.get("issuer"):
            raise ServiceMisconfigured("The OIDC discovery document of AUTH_TENANT_ID has no issuer or keys.")
        jwks_uri = str(document["jwks_uri"])
        if not _on_host_of(jwks_uri, self.discovery_url):  # the keys every token is checked with: the authority's
            raise ServiceMisconfigured("The OIDC discovery document of AUTH_TENANT_ID names signing keys elsewhere "
                                       "than on its authority over https; none are trusted.")
        return str(document["issuer"]), await self._fetch(jwks_uri)


def _logged(read: asyncio.Task[None]) -> None:
    """What a read behind the requests raised, retrieved (never "Task exception was never retrieved") and logged by
    its type alone."""
    if not read.cancelled() and (error := read.exception()) is not None:
        log.warning("The tenant's signing keys could not be read again (%s); the ones read before are kept",
                    type(error).__name__)


def _on_host_of(url: str, authority_url: str) -> bool:
    """``url`` is an https:// URL on the host and port of ``authority_url`` (443 when not said; a host name's
    letters in any case, a final dot or none), with nothing before the host."""
    from urllib.parse import urlsplit

    def origin(raw: str) -> tuple[str, int] | None:
        parts = urlsplit(raw)
        try:
            port = parts.port or 443
        except ValueError:  # not a port
            return None
        if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
            return None
        return parts.hostname.rstrip(".").lower(), port

    found = origin(url)
    return found is not None and found == origin(authority_url)


def _usable_keys(jwks: Any, known: Mapping[str, RSAPublicKey]) -> dict[str, RSAPublicKey]:
    """The RS256 signing keys of a key set, by ``kid``; a key that is not one (another type or use, a modulus
    under 2048 bits, a malformed number) is left out, so no token signed by it is accepted. A key the same as the
    one ``known`` under its ``kid`` (the same numbers) is that object: the tokens remembered as verified with it
    stay remembered (:class:`TokenValidator` compares the key objects), while a changed or withdrawn one is not."""
    keys: dict[str, RSAPublicKey] = {}
    listed = jwks.get("keys") if isinstance(jwks, dict) else None
    for jwk in listed if isinstance(listed, list) else []:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            continue
        try:
            key = jws.public_key(jwk)
        except jws.JwsError:
            continue
        before = known.get(jwk["kid"])
        keys[jwk["kid"]] = before if before is not None and before.public_numbers() == key.public_numbers() else key
    return keys


class TokenValidator:
    """Validates bearer tokens. A token that passed is remembered, by its SHA-256, with the principal it names
    until its ``exp`` (at most ``VALIDATED_CACHE_SIZE`` of them): the same token again is answered without a
    second signature check. Its outcome is the one a full check would give, since the keys are cached too and
    a token past ``exp`` is checked in full again (and refused once past the clock skew)."""

    def __init__(self, settings: Settings, keys: SigningKeys, now: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._keys = keys
        self._now = now
        # sha256(token) -> (claims, principal, expiry, key id, the key it was verified with)
        self._validated: OrderedDict[bytes, tuple[Mapping[str, Any], Principal, float, str, RSAPublicKey]] = (
            OrderedDict())

    async def close(self) -> None:
        """End what runs behind the requests (the daily read of the keys: :meth:`SigningKeys.close`)."""
        await self._keys.close()

    @property
    def audiences(self) -> list[str]:
        audience = self._settings.auth_audience or ""
        accepted = {audience}
        if audience.startswith("api://"):
            accepted.add(audience.removeprefix("api://"))
        else:
            accepted.add(f"api://{audience}")
        return sorted(accepted)

    def require_configured(self) -> None:
        if not (self._settings.auth_tenant_id and self._settings.auth_audience):
            raise ServiceMisconfigured(
                "Authentication is not configured: set AUTH_TENANT_ID and AUTH_AUDIENCE (the API registration's "
                "tenant and client ID). The service has no open mode.")

    async def validate(self, authorization: str | None) -> Principal:
        claims, principal = await self._checked(bearer_token(authorization))
        # An access token names the client it was issued to (azp, v1 appid) and never carries a nonce; an ID token
        # (the console's, whose audience is this API too) is the other way round, and is no credential for the API.
        if "nonce" in claims or not (claims.get("azp") or claims.get("appid")):
            raise _unauthorized("The token is not an access token (an ID token is not accepted as a bearer token).")
        # A delegated token (scp) acts for a person through a client: only with the API's delegated permission,
        # which the person (or an administrator) consented that client to use. An app-only token has no scp.
        if "scp" in claims and DELEGATED_SCOPE not in str(claims.get("scp") or "").split():
            refused = Forbidden(f"The token's delegated permissions (scp) do not include {DELEGATED_SCOPE}; ask "
                                f"for the scope <the API's identifier URI>/{DELEGATED_SCOPE} (or /.default).",
                                headers={"WWW-Authenticate": INSUFFICIENT_SCOPE})
            refused.principal = principal  # identified by a valid token: the refusal is audited
            raise refused
        return principal

    async def claims(self, token: str) -> dict[str, Any]:
        """The claims of a token of the tenant for this API (an access token, or the console's ID token)."""
        return dict((await self._checked(token))[0])

    async def _checked(self, token: str) -> tuple[Mapping[str, Any], Principal]:
        """The token's claims and the principal they name: remembered, or checked in full."""
        self.require_configured()
        if len(token) > MAX_TOKEN_CHARS:
            raise _unauthorized("The token is too long.")
        # Any text hashes (a lone surrogate too, which no token holds: jws.parse refuses it, a 401).
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        known = self._validated.get(digest)
        if known is not None:
            # Remembered while it has not expired and the tenant still publishes the key it was verified with (the
            # keys are read again daily: once that read lands, a key withdrawn in an emergency rollover is not
            # trusted, nor what it signed); else checked in full again.
            # The key lookup may wait on the authority, and a request with the same token may meanwhile have
            # dropped or replaced the entry: only the entry still remembered is moved or dropped.
            if self._now() < known[2] and await self._keys.key(known[3]) is known[4]:
                if self._validated.get(digest) is known:
                    self._validated.move_to_end(digest)
                return known[0], known[1]
            if self._validated.get(digest) is known:
                del self._validated[digest]
        try:
            signed = jws.parse(token)
        except jws.JwsError as refused:
            raise _unauthorized(REFUSALS[refused.reason]) from None
        key = await self._keys.key(signed.kid) if signed.kid else None
        if key is None:
            raise _unauthorized("The access token is signed with a key the tenant does not publish.")
        issuer = await self._keys.issuer()
        try:
            claims = await asyncio.to_thread(jws.verify, signed, key, issuer=issuer, audiences=self.audiences,
                                             now=self._now(), leeway=CLOCK_SKEW_SECONDS)
        except jws.JwsError as refused:
            raise _unauthorized(REFUSALS[refused.reason]) from None
        checked = MappingProxyType(dict(claims))
        principal = principal_of(checked)
        self._remember(digest, checked, principal, claims.get("exp"), signed.kid or "", key)
        return checked, principal

    def _remember(self, digest: bytes, claims: Mapping[str, Any], principal: Principal, expires: Any, kid: str,
                  key: RSAPublicKey) -> None:
        if not isinstance(expires, int | float) or isinstance(expires, bool) or expires <= self._now():
            return
        self._validated[digest] = (claims, principal, float(min(expires, 2.0**53)), kid, key)  # an int may be huge
        while len(self._validated) > VALIDATED_CACHE_SIZE:
            self._validated.popitem(last=False)


def principal_of(claims: Mapping[str, Any]) -> Principal:
    roles = claims.get("roles") or []
    app_only = claims.get("idtyp") == "app" or ("scp" not in claims and "preferred_username" not in claims
                                                 and "upn" not in claims and "name" not in claims)
    name = claims.get("preferred_username") or claims.get("upn") or claims.get("name") or claims.get("azp") or ""
    return Principal(
        id=str(claims.get("oid") or claims.get("sub") or ""),
        name=str(name),
        type="app" if app_only else "user",
        tenant_id=str(claims.get("tid") or ""),
        roles=frozenset(str(role) for role in roles if isinstance(role, str)) if isinstance(roles, list)
        else frozenset(),
    )


def fetch_json_with(send: Callable[[str], Awaitable[tuple[int, bytes]]]) -> FetchJson:
    """A ``FetchJson`` over a function that GETs a URL and answers (status, body)."""

    async def fetch(url: str) -> Any:
        status, body = await send(url)
        if status != 200:
            raise ServiceMisconfigured(f"The OIDC document {url} answered {status}.")
        try:
            return json.loads(body)
        except ValueError:
            raise ServiceMisconfigured(f"The OIDC document {url} is not JSON.") from None

    return fetch
