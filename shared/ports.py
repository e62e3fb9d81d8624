"""The seams between the domain and the outside world: what the domain asks of its adapters.

The domain services (connections, rotation, OAuth) are handed an :class:`Adapters` bundle through their
constructors; ``shared.wiring`` builds the real one from the Azure SDK clients, tests build one from
in-memory fakes. Nothing here imports an SDK, and no domain module builds an adapter of its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from shared.records import AuditRecord, ConnectionRecord, Notification, PendingAuthorization, RotationEvent

if TYPE_CHECKING:
    from shared.apps import AppSpec, Method
    from shared.sessions import PendingLogin, Session
    from shared.settings import Settings


# -- values exchanged with the adapters -----------------------------------------------------------------------
@dataclass(frozen=True)
class PasswordCredential:
    key_id: str
    hint: str | None
    display_name: str | None
    end_date_time: datetime | None


@dataclass(frozen=True)
class KeyCredential:
    """A certificate on an application (``keyCredentials``): ``thumbprint`` is its ``customKeyIdentifier``, the
    SHA-1 thumbprint of the certificate in upper-case hex."""

    key_id: str
    display_name: str | None
    thumbprint: str | None
    end_date_time: datetime | None
    usage: str | None = None


@dataclass(frozen=True)
class AppRegistration:
    object_id: str
    app_id: str
    display_name: str | None
    passwords: tuple[PasswordCredential, ...]
    keys: tuple[KeyCredential, ...] = ()  # read by a certificate's session only (Graph throttles those reads)
    created_at: datetime | None = None  # createdDateTime: some policy restrictions bind only newer applications


@dataclass(frozen=True)
class LifetimePolicy:
    """What an app-management policy (the application's own, else the tenant's default) allows a new credential:
    the longest lifetime of a password and of a certificate key (None: no limit), whether passwords may be added
    at all, and where the policy came from ("application" or "tenant")."""

    source: str
    password_max_lifetime: timedelta | None = None
    key_max_lifetime: timedelta | None = None
    password_addition_restricted: bool = False


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential of an application (``federatedIdentityCredentials``)."""

    id: str
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class NewPassword:
    key_id: str
    secret_text: str = field(repr=False)
    end_date_time: datetime | None


@dataclass(frozen=True)
class StoredVersion:
    version: str
    material: dict[str, str] | None = field(repr=False)  # as the vault answered the write (None: not returned)


@dataclass(frozen=True)
class DueEntry:
    key: str
    app: str
    connection_id: str
    due: datetime


@dataclass(frozen=True)
class TokenResult:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_on: int
    claims: dict[str, Any] = field(default_factory=dict, repr=False)  # the ID token's, else the access token's
    id_token: str | None = field(default=None, repr=False)  # as the token endpoint answered (not yet validated)

    @property
    def tenant_id(self) -> str | None:
        tid = self.claims.get("tid")
        return str(tid).lower() if tid else None

    @property
    def username(self) -> str | None:
        value = self.claims.get("preferred_username") or self.claims.get("upn")
        return str(value) if value else None


# -- the adapters ---------------------------------------------------------------------------------------------
class ConnectionReads(Protocol):
    """The reads of connection records alone (what a read request needs; a ``ConnectionStore`` has them too)."""

    async def get(self, app: str, connection_id: str) -> ConnectionRecord: ...
    async def get_by_name(self, app: str, name: str) -> ConnectionRecord: ...
    async def list_page(
        self, app: str, limit: int, continuation: str | None
    ) -> tuple[list[ConnectionRecord], str | None]: ...


class HistoryReads(Protocol):
    """A page of a connection's rotation attempts, newest first (a ``HistoryStore`` has it too)."""

    async def page(
        self, connection_id: str, limit: int, continuation: str | None
    ) -> tuple[list[RotationEvent], str | None]: ...


class ConnectionStore(Protocol):
    """Connection records; names unique per app; every update and delete guarded by the record's ETag (a
    concurrent change is a ``Conflict``)."""

    async def insert(self, record: ConnectionRecord) -> ConnectionRecord: ...
    async def get(self, app: str, connection_id: str) -> ConnectionRecord: ...
    async def get_by_name(self, app: str, name: str) -> ConnectionRecord: ...
    async def list_page(
        self, app: str, limit: int, continuation: str | None
    ) -> tuple[list[ConnectionRecord], str | None]: ...
    async def update(self, record: ConnectionRecord, previous_name: str | None = None,
                     notify: Sequence[Notification] = ()) -> ConnectionRecord: ...
    async def delete(self, record: ConnectionRecord) -> None: ...


class OutboxStore(Protocol):
    """Notifications queued with the change they tell of (same transaction), until delivered."""

    async def pending(self, apps: Sequence[str], limit: int = 100) -> list[Notification]:
        """Due or not, oldest first: at most ``limit`` never tried and at most ``limit`` tried before."""
        ...

    async def claim(self, item: Notification, until: datetime) -> Notification | None: ...
    async def delivered(self, item: Notification) -> None: ...
    async def retry_later(self, item: Notification) -> None: ...


class WebhookStatus(int):
    """A receiver's HTTP status with the wait it asked for (``retry_after``, seconds: a 429's or 503's
    ``Retry-After``), which the outbox waits at least before it tries again."""

    retry_after: float | None

    def __new__(cls, status: int, retry_after: float | None = None) -> WebhookStatus:
        made = super().__new__(cls, status)
        made.retry_after = retry_after
        return made


# How long a webhook POST waits for the receiver's answer (the adapter's timeout), and so the least of a delivery
# pass's budget a send needs to start: a pass never cuts a send short (``shared.notify``).
WEBHOOK_TIMEOUT_SECONDS = 15.0


class Webhook(Protocol):
    """POST of a JSON body to the configured receiver: its HTTP status (an exception when unreachable, or when no
    answer came within ``WEBHOOK_TIMEOUT_SECONDS``), a :class:`WebhookStatus` when the receiver said how long to
    wait."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int: ...


class SecretStore(Protocol):
    """One secret per connection, a version per change (the only place secret material is kept)."""

    async def write(
        self, name: str, material: Mapping[str, str], tags: Mapping[str, str], *,
        expires_on: datetime | None = None,
    ) -> StoredVersion: ...
    async def get(self, name: str, version: str) -> dict[str, str]: ...
    async def disable(self, name: str, version: str) -> bool:
        """Disable a version: True once it is disabled or gone, False when Key Vault refused (logged)."""
        ...
    async def disable_others(self, name: str, keep: str) -> int: ...
    async def disable_older(self, name: str, version: str) -> int:
        """Disable every enabled version written before ``version``; one written after it (which a later request
        may have made current meanwhile) stays. How many."""
        ...
    async def disable_tagged(self, name: str, tag: str, value: str) -> int: ...
    async def enabled_since(self, name: str) -> datetime | None:
        """When the newest enabled version was written; None when none is (or there is no such secret)."""
        ...
    async def delete(self, name: str) -> None: ...


class ScheduleStore(Protocol):
    """The due-time index of scheduled work: a sweep reads only what is due. Each entry written has a key of its
    own, but for ``keep`` (the entry a connection points at now), written again when it is at ``due`` already."""

    async def put(self, due: datetime, app: str, connection_id: str, keep: str | None = None) -> str: ...
    async def remove(self, key: str | None) -> None: ...
    async def due(self, now: datetime, limit: int = 1000) -> list[DueEntry]: ...


class HistoryStore(Protocol):
    """Rotation attempts, one entry each, newest first; writing an attempt's outcome again replaces it, and its
    ``running`` entry is written only when the attempt has none (a worker held up past its lease must not reopen
    an attempt the worker that took it over closed)."""

    async def record(self, event: RotationEvent) -> None: ...
    async def get(self, connection_id: str, started_at: datetime, rotation_id: str,
                  attempt: int) -> RotationEvent | None: ...
    async def page(
        self, connection_id: str, limit: int, continuation: str | None
    ) -> tuple[list[RotationEvent], str | None]: ...
    async def delete_all(self, connection_id: str) -> None: ...
    # Retention: the entries of attempts started before a time, but ``running`` ones, a batch of one connection's
    # (at most a hundred, newest first) at a time; a connection's newest entry and those of the attempts started up
    # to ``within`` before it; some of a connection's entries deleted (one already gone is done).
    def expired(self, before: datetime) -> AsyncGenerator[tuple[str, list[str]], None]: ...
    async def latest(self, connection_id: str, within: timedelta) -> list[str]: ...
    async def delete(self, connection_id: str, keys: list[str]) -> None: ...


# What an addition whose answer was lost may have made, removed (and audited) by the caller before it is sent again.
Lost = Callable[[], Awaitable[None]]


class GraphSession(Protocol):
    """Microsoft Graph as one connection's credential sees it."""

    async def find(self, app_id: str) -> AppRegistration: ...
    async def add_password(self, object_id: str, display_name: str, end: datetime, lost: Lost) -> NewPassword:
        """addPassword; ``display_name`` is unique to the call. When a try was sent and its answer lost, Graph may
        have applied it and its secret is gone: ``lost`` is awaited (the caller removes the passwords of that name,
        audited) before the next try."""
        ...
    async def remove_password(self, object_id: str, key_id: str) -> None: ...
    async def add_key(self, object_id: str, display_name: str, certificate_der: bytes, proof: str) -> KeyCredential:
        """addKey of a certificate (``AsymmetricX509Cert``, usage ``Verify``); ``proof`` is signed by a key the
        application has already."""
        ...
    async def remove_key(self, object_id: str, key_id: str, proof: str) -> None:
        """removeKey; one already gone is fine."""
        ...
    async def lifetime_policy(self, object_id: str, created_at: datetime | None = None) -> LifetimePolicy | None:
        """The effective app-management policy of the application (its own, else the tenant's default); None when
        the credential may not read it (unknown: no cap)."""
        ...
    async def list_applications(self, page_size: int, continuation: str | None = None, listing: str = "",
                                ) -> tuple[list[dict[str, str]], str | None]:
        """One page of the app registrations the credential can see (``{name, id, appId}``), and the token of the
        next page (None: the last), which names ``listing`` (the list's key: its connection); a token it did not
        hand out, or handed out for another listing, is a 400."""
        ...
    # Federated identity credentials (the federated method; migrate-to-federated).
    async def federated_credentials(self, object_id: str) -> list[FederatedCredential]: ...
    async def add_federated_credential(self, object_id: str, credential: Mapping[str, Any]) -> FederatedCredential:
        """POST /applications/{id}/federatedIdentityCredentials (Graph's 400/409 become problems)."""
        ...
    async def remove_federated_credential(self, object_id: str, credential_id: str) -> None:
        """One already gone is fine."""
        ...


class TokenSource(Protocol):
    """Anything that gives access tokens (an azure-core ``AsyncTokenCredential`` is one)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


class Directory(Protocol):
    """Entra ID and Microsoft Graph with a connection's own credentials."""

    async def probe(self, app: AppSpec, method: Method, tenant_id: str, client_id: str,
                    material: Mapping[str, str]) -> None:
        """Acquire a token for the app's scope; ``CredentialRejected`` (with the AADSTS code) when Entra refuses,
        ``UpstreamError`` when it cannot be reached."""
        ...

    def graph(self, method: Method, tenant_id: str, client_id: str, material: Mapping[str, str], *,
              read_keys: bool | None = None) -> AbstractAsyncContextManager[GraphSession]:
        """Graph with the connection's credential. ``read_keys``: whether ``find`` reads the application's key
        credentials (Graph throttles those reads at 150 a minute per tenant); by default only a certificate's
        session does, as it rolls keys."""
        ...

    def graph_with(self, tokens: TokenSource) -> AbstractAsyncContextManager[GraphSession]: ...

    def paced(self, on_request: Callable[[Any], Awaitable[None]],
              on_response: Callable[[Any], Awaitable[None]]) -> AbstractContextManager[None]:
        """Every Graph request and answer passes through these hooks while the block runs (sweep pacing)."""
        ...


class TokenEndpoint(Protocol):
    """The authority's token endpoint for the OAuth grants of the instance's own app registrations."""

    async def redeem(self, tenant: str, form: Mapping[str, str]) -> TokenResult: ...


class OAuthStateStore(Protocol):
    """Pending OAuth authorizations: single use, expiring."""

    async def put(self, state: str, pending: PendingAuthorization) -> None: ...
    async def take(self, state: str) -> PendingAuthorization | None: ...
    async def purge_expired(self, now: datetime) -> int: ...


class OAuthStateLookup(Protocol):
    """Whether a state is pending, read only (the OAuth callback's first step, ``shared.oauth_callback``): it
    consumes nothing and reads no column of the state (no PKCE verifier)."""

    async def pending(self, state: str) -> bool: ...


class SessionStore(Protocol):
    """Console sessions and pending sign-ins, keyed by (bucket, SHA-256 of the id); never the id itself."""

    async def create(self, session: Session) -> None: ...
    async def get(self, bucket: str, key: str) -> Session | None: ...
    async def touch(self, bucket: str, key: str, at: datetime) -> bool: ...  # False: the session is gone
    async def delete(self, bucket: str, key: str) -> None: ...
    async def put_login(self, pending: PendingLogin) -> None: ...
    async def take_login(self, bucket: str, key: str) -> PendingLogin | None: ...  # single use
    async def purge_expired(self, now: datetime) -> int: ...


class AuditStore(Protocol):
    """The audit log: appended to, read by time range (newest first), purged past its retention."""

    async def append(self, record: AuditRecord) -> None: ...
    async def query(self, start: datetime, end: datetime, *, connection_id: str | None = None,
                    actor: str | None = None, action: str | None = None, limit: int = 100,
                    continuation: str | None = None, apps: Collection[str] | None = None, search: str = "",
                    ) -> tuple[list[AuditRecord], str | None]: ...
    async def purge(self, before: datetime, limit: int = 10_000) -> int: ...


Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
# Seconds on a clock that only moves forward, at the pace of time (time.monotonic): what a worker has spent, which
# a wall clock set back or forward (NTP) does not change.
Monotonic = Callable[[], float]


@dataclass(frozen=True)
class Adapters:
    """Everything the domain reaches outside itself, built once (``shared.wiring``) and handed in."""

    settings: Settings
    connections: ConnectionStore
    vault: SecretStore
    schedule: ScheduleStore
    history: HistoryStore
    directory: Directory
    tokens: TokenEndpoint
    oauth_states: OAuthStateStore
    audit: AuditStore
    outbox: OutboxStore
    health_index: ScheduleStore
    webhook: Webhook
    clock: Clock
    sleep: Sleep
    monotonic: Monotonic = time.monotonic
