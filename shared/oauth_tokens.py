"""Access tokens of OAuth connections: refreshed with the stored refresh token, cached in the process until
five minutes before they expire, and a refresh token Entra rotated is stored again (a new vault version made
current by the connection lifecycle). ``invalid_grant`` or ``interaction_required`` from Entra is
:class:`ReauthorizationRequired`, unless a refresh elsewhere (another instance) used the token and stores the one it
rotated to within a few seconds: that one is redeemed instead.

Tokens never reach a log, a table or a response: only the vault holds the refresh token.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.apps import AppSpec, find_app
from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    InvalidRequest,
    NotFound,
    SecretGone,
    VersionDisabled,
)
from shared.ports import Adapters, TokenResult
from shared.records import STATUS_DELETING, ConnectionRecord
from shared.settings import Settings
from shared.views import being_deleted

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

REFRESH_MARGIN_SECONDS = 300
# Entra's answers that only a new sign-in can fix (revoked, expired or consent-less refresh tokens).
REAUTHORIZE_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required", "login_required"})
# How long a refusal waits, in seconds, for a refresh elsewhere to store the token it rotated to (its vault write and
# the record's, a few hundred milliseconds) before it is taken as final: about 4 s in all.
ELSEWHERE_WAITS = (0.25, 0.5, 1.0, 2.0)


class OAuthNotConfigured(InvalidRequest):
    slug = "oauth-not-configured"
    title = "OAuth is not configured for this app"


class ReauthorizationRequired(CredentialRejected):
    slug = "reauthorization-required"
    title = "The connection must be authorized again"
    # The connection as the refusal found it (its current version, when a refresh elsewhere moved it meanwhile):
    # what the outcome is recorded against.
    record: ConnectionRecord | None = None


@dataclass(frozen=True)
class InstanceClient:
    client_id: str
    client_secret: str = field(repr=False)


def instance_client(settings: Settings, app: AppSpec) -> InstanceClient:
    """The instance's app registration for ``app``, or a 400 naming the two settings to set."""
    client = settings.oauth_client(app.oauth_setting_prefix)
    if not (client.client_id and client.client_secret):
        names = [f"{app.oauth_setting_prefix}_CLIENT_ID", f"{app.oauth_setting_prefix}_CLIENT_SECRET"]
        raise OAuthNotConfigured(
            f"OAuth is not configured for {app.id}: set {names[0]} and {names[1]} (the application (client) ID "
            "and a client secret of the instance's app registration) and restart the service.",
            extensions={"settings": names},
        )
    return InstanceClient(client.client_id, client.client_secret)


@dataclass(frozen=True)
class _Cached:
    token: str = field(repr=False)
    expires_on: int
    secret_version: str


class TokenCache:
    """Access tokens per (app, connection, scope), good until ``margin`` seconds before they expire, and only
    for the refresh-token version they came from."""

    def __init__(self, margin: float = REFRESH_MARGIN_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.margin = margin
        self.clock = clock
        self._entries: dict[tuple[str, str, str], _Cached] = {}

    def get(self, key: tuple[str, str, str], secret_version: str) -> tuple[str, int] | None:
        entry = self._entries.get(key)
        if entry is None or entry.secret_version != secret_version:
            return None
        if entry.expires_on - self.margin <= self.clock():
            return None
        return entry.token, entry.expires_on

    def put(self, key: tuple[str, str, str], secret_version: str, token: str, expires_on: int) -> None:
        self._entries[key] = _Cached(token, expires_on, secret_version)

    def forget(self, app: str, connection_id: str) -> None:
        for key in [key for key in self._entries if key[:2] == (app, connection_id)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


class _RefreshLock:
    """One refresh at a time per connection and scope in an event loop (a refresh token is used once): ``async
    with`` it. It leaves its table when the last refresh that holds or waits on it leaves (cancelled too), so the
    table holds the connections being refreshed, not every one ever refreshed (nor a deleted one's)."""

    __slots__ = ("_key", "_lock", "_table", "_users")

    def __init__(self, table: dict[tuple[str, str, str], _RefreshLock], key: tuple[str, str, str]) -> None:
        self._table = table
        self._key = key
        self._lock = asyncio.Lock()
        self._users = 0

    async def __aenter__(self) -> None:
        self._users += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *args: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        self._users -= 1
        if not self._users and self._table.get(self._key) is self:
            del self._table[self._key]


TOKEN_CACHE = TokenCache()
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, str], _RefreshLock]] = (
    weakref.WeakKeyDictionary()
)


def _lock(key: tuple[str, str, str]) -> _RefreshLock:
    """The refresh lock of ``key`` in this event loop: the one refreshes hold or wait on, else a new one."""
    table = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    lock = table.get(key)
    if lock is None:
        lock = table[key] = _RefreshLock(table, key)
    return lock


def _access_token(token: str, expires_on: int) -> AccessToken:
    from azure.core.credentials import AccessToken

    return AccessToken(token, expires_on)


# Keep a rotated refresh token: the connection afterwards, and whether it holds that token (not when another
# refresh token became current meanwhile: a re-authorization, or a refresh elsewhere).
SaveRefreshToken = Callable[[ConnectionRecord, str], Awaitable[tuple[ConnectionRecord, bool]]]


class OAuthTokens:
    def __init__(self, adapters: Adapters, save: SaveRefreshToken, cache: TokenCache | None = None) -> None:
        self.adapters = adapters
        self._save = save
        self.cache = TOKEN_CACHE if cache is None else cache

    def remember(self, record: ConnectionRecord, app: AppSpec, result: TokenResult) -> None:
        """Cache the access token that came with a sign-in, for the connection's current refresh token."""
        key = (record.app, record.id, app.scope(self.adapters.settings))
        self.cache.put(key, record.secret_version, result.access_token, result.expires_on)

    def forget(self, record: ConnectionRecord) -> None:
        self.cache.forget(record.app, record.id)

    async def access_token(self, app: AppSpec, record: ConnectionRecord, *, scope: str | None = None,
                           force_refresh: bool = False) -> tuple[ConnectionRecord, AccessToken]:
        """An access token (cached unless ``force_refresh``) and the connection as it is afterwards (its
        ``secret_version`` moves when Entra rotated the refresh token)."""
        scope = scope or app.scope(self.adapters.settings)
        key = (record.app, record.id, scope)
        if not force_refresh and (hit := self.cache.get(key, record.secret_version)) is not None:
            return record, _access_token(*hit)
        async with _lock(key):
            current = await self.adapters.connections.get(record.app, record.id)  # the newest refresh token
            if not force_refresh and (hit := self.cache.get(key, current.secret_version)) is not None:
                return current, _access_token(*hit)
            current, result, grant = await self._refresh(app, current, scope)
            if grant == current.secret_version:  # never a token of the grant before under a newer one's version
                self.cache.put(key, grant, result.access_token, result.expires_on)
            return current, _access_token(result.access_token, result.expires_on)

    async def refresh_now(self, app: AppSpec, record: ConnectionRecord) -> ConnectionRecord:
        """Refresh a token now (never from the cache): the connection as it is afterwards."""
        record, _token = await self.access_token(app, record, force_refresh=True)
        return record

    async def _refresh(self, app: AppSpec, record: ConnectionRecord,
                       scope: str) -> tuple[ConnectionRecord, TokenResult, str | None]:
        """A refresh: the connection afterwards, Entra's answer, and the version of the connection's secret whose
        grant the access token is (None when the connection moved to another grant meanwhile)."""
        client = instance_client(self.adapters.settings, app)
        for attempt in (1, 2):
            try:
                material = await self.adapters.vault.get(record.secret_name, record.secret_version)
            except (SecretGone, VersionDisabled) as gone:
                # A refresh elsewhere may have just superseded that version (a DELETE may be disabling it): read
                # again. Only a current version the vault no longer gives (deleted or disabled outside the service)
                # needs a new sign-in.
                fresh = await self.adapters.connections.get(record.app, record.id)  # NotFound: deleted meanwhile
                moved = fresh.secret_version != record.secret_version
                if moved and attempt == 1 and fresh.status != STATUS_DELETING:
                    record = fresh
                    continue
                if fresh.status == STATUS_DELETING:
                    raise being_deleted() from None
                if moved:
                    raise ConcurrentChange("The connection's refresh token changed twice while it was read "
                                           "(refreshed elsewhere); try again.") from None
                refused = ReauthorizationRequired(f"The connection's refresh token cannot be read from Key Vault "
                                                  f"({gone.detail}); authorize it again.")
                refused.record = record
                raise refused from None
            refresh_token = material.get("refreshToken")
            if not refresh_token:
                raise ReauthorizationRequired("The connection's secret in Key Vault holds no refresh token; "
                                              "authorize it again.")
            try:
                result = await self.adapters.tokens.redeem(record.tenant_id, {
                    "grant_type": "refresh_token", "client_id": client.client_id,
                    "client_secret": client.client_secret, "refresh_token": refresh_token,
                    "scope": f"offline_access {scope}",
                })
            except CredentialRejected as rejected:
                if rejected.extensions.get("entraError") not in REAUTHORIZE_ERRORS:
                    raise
                if attempt == 1:  # another instance may have used and rotated it a moment ago
                    newer = await self._rotated_elsewhere(record)
                    if newer is not None:
                        record = newer
                        continue
                refused = ReauthorizationRequired(rejected.detail, extensions=rejected.extensions)
                refused.record = record  # the version Entra refused (the newer one, after a move)
                raise refused from None
            break
        grant: str | None = record.secret_version
        if result.refresh_token is not None and result.refresh_token != refresh_token:
            record, kept = await self._save(record, result.refresh_token)
            grant = record.secret_version if kept else None
        return record, result, grant

    async def _rotated_elsewhere(self, record: ConnectionRecord) -> ConnectionRecord | None:
        """The connection once another refresh of its token stored the token Entra rotated to, or None when its
        refresh token stays the one refused. The lock covers one event loop: another instance's refresh may have
        redeemed the token before this one and be storing its successor still, so the record is read again, for
        up to ``ELSEWHERE_WAITS`` (a token really revoked is known as such a few seconds later)."""
        for wait in (0.0, *ELSEWHERE_WAITS):
            if wait:
                await self.adapters.sleep(wait)
            fresh = await self.adapters.connections.get(record.app, record.id)  # NotFound: deleted meanwhile
            if fresh.secret_version != record.secret_version:
                return fresh
        return None

    def credential(self, record: ConnectionRecord) -> OAuthCredential:
        return OAuthCredential(self, record)


class OAuthCredential:
    """An ``AsyncTokenCredential`` over an OAuth connection (cached tokens, rotated refresh tokens kept)."""

    def __init__(self, tokens: OAuthTokens, record: ConnectionRecord) -> None:
        app = find_app(record.app)
        if app is None:
            raise NotFound(f"There is no app '{record.app}'.")
        self._tokens = tokens
        self._app = app
        self.record = record

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.record, token = await self._tokens.access_token(self._app, self.record,
                                                             scope=scopes[0] if scopes else None)
        return token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> OAuthCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None
