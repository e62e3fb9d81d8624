"""The records the domain keeps and the stores persist: a connection, its rotation state, a rotation attempt.

Plain frozen dataclasses with no behaviour beyond reading themselves: the stores serialize them (never a
secret: secret material lives in Key Vault only), the domain reads and evolves them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared.json_codec import iso

_Record = TypeVar("_Record")


def new_id() -> str:
    """A random id (a UUID4's hex); ``uuid`` is imported on first use, not by a read that makes none."""
    import uuid

    return uuid.uuid4().hex


def restore(cls: type[_Record], values: dict[str, Any]) -> _Record:
    """``cls(**values)`` for a frozen record class of this module, the same object (fields in the same order, the
    defaults of the fields not given, equal, hashed, frozen and shown alike) without running ``__init__``, which
    sets each field through ``object.__setattr__``: a page of 50 connections read back sets thousands. For the
    stores' reading side; like ``__init__``, it refuses a field the class has not and a required one missing."""
    template, required, factories = _templates.get(cls) or _template(cls)
    record: Any = object.__new__(cls)
    state = record.__dict__
    state.update(template)
    state.update(values)
    if len(state) != len(template) or not required <= values.keys():  # a field it has not adds one
        raise TypeError(f"{cls.__name__} has no field {sorted(values.keys() - template.keys())} or misses "
                        f"{sorted(required - values.keys())}")
    for name, factory in factories:
        if name not in values:
            state[name] = factory()
    return record  # type: ignore[no-any-return]


def _template(cls: type[Any]) -> tuple[dict[str, Any], frozenset[str], tuple[tuple[str, Any], ...]]:
    """Every field of ``cls`` in order with its default (None for a required one or one with a factory), the
    required fields, and the fields made by a factory."""
    if getattr(cls, "__post_init__", None) is not None or "__slots__" in vars(cls) or not all(
            f.init for f in fields(cls)):
        raise TypeError(f"{cls.__name__} is not built by its fields alone")
    template = {f.name: None if f.default is MISSING else f.default for f in fields(cls)}
    required = frozenset(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    factories = tuple((f.name, f.default_factory) for f in fields(cls) if f.default_factory is not MISSING)
    _templates[cls] = template, required, factories
    return _templates[cls]


_templates: dict[type[Any], tuple[dict[str, Any], frozenset[str], tuple[tuple[str, Any], ...]]] = {}


# The journal's steps, in order. "begun": the rotation is claimed and its previous credential noted; "created":
# the new credential exists and is in the vault as a pending version; "tested": a token was acquired with it;
# "finished": it is the current version. Revoking the previous one ends the rotation.
BEGUN, CREATED, TESTED, FINISHED = "begun", "created", "tested", "finished"
# A migration to the federated method's steps (shared.rotation.migration), journaled as a rotation's.
MIGRATION_STEPS = ("migrate-begun", "migrate-added", "migrate-tested", "migrate-switched")

# A connection's status, and its rotation's.
STATUS_ACTIVE = "active"
STATUS_INVALID = "invalid"
STATUS_DELETING = "deleting"
STATUS_REAUTHORIZATION_REQUIRED = "reauthorization-required"
STATUS_SCHEDULED = "scheduled"
STATUS_ROTATING = "rotating"
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"
STATUS_DISABLED = "disabled"
CONNECTION_STATUSES = (STATUS_ACTIVE, STATUS_INVALID, STATUS_DELETING, STATUS_REAUTHORIZATION_REQUIRED)
ROTATION_STATUSES = (STATUS_SCHEDULED, STATUS_ROTATING, STATUS_SUCCEEDED, STATUS_FAILED, STATUS_DISABLED)

# A connection's health.
HEALTHY, EXPIRING, FAILING, EXPIRED, UNKNOWN = "healthy", "expiring", "failing", "expired", "unknown"
HEALTH_STATUSES = (HEALTHY, EXPIRING, FAILING, EXPIRED, UNKNOWN)

# What started a rotation attempt.
TRIGGERS = ("enable", "schedule", "manual", "credential-change", "resume", "migrate-to-federated")


LEFT_AFTER = timedelta(minutes=5)  # see RotationState.left_marked
# How far a sweep (rotation or health) moves the due entry of a connection left marked as being deleted: out of the
# way of the other due entries (read oldest first, they would in time fill every sweep's read), and soon enough that
# one whose DELETE is undone is rotated and checked within the hour.
PUT_OFF = timedelta(hours=1)


@dataclass(frozen=True)
class RotationState:
    """A connection's rotation settings, status and the journal of the rotation under way (if any)."""

    enabled: bool = False
    interval_days: int | None = None
    rotate_at: str | None = None  # "HH:MM", local time in time_zone
    time_zone: str | None = None
    status: str | None = None
    message: str | None = None
    last_rotated_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_at: datetime | None = None
    schedule_key: str | None = None
    failures: int = 0  # failed attempts in a row: rotations, migrations and clean-ups alike (the back-off)
    # When the failed rotations in a row began (its first failure, told by a notice); None once one succeeds.
    # ``failures`` alone cannot tell it: a failed clean-up of an application left behind counts there too.
    failing_since: datetime | None = None
    key_id: str | None = None  # Key ID of the client secret in use
    # A federated connection of a multi-tenant application, in another tenant than the application's own: the tenant
    # whose application object holds ``key_id`` (a federated credential the service added, handed over to it), where
    # its DELETE removes it. None: the connection's own tenant.
    key_tenant_id: str | None = None
    # That credential is one a rotation made (not the one the user gave); None: unknown, in state written before the
    # service recorded it (read as those versions read it: see ``made_in_use``).
    key_made: bool | None = False
    # The service may have created credentials on the application in use (a rotation began since the credentials
    # were given; DELETE removes them). The clean-up of an application left behind is tracked by ``retire_*``.
    managed: bool = False
    # A DELETE's journal: everything else the service created is removed, and the removal of the credential in use
    # (this Key ID), the last one, is sent; once that credential no longer signs in, nothing is left to remove.
    removing_key_id: str | None = None
    # For a federated credential (a federated connection's own): the service's identity (its principal id) that the
    # credential named when its removal was sent. While the service still has that identity, a sign-in there that no
    # federated credential matches means the removal went through.
    removing_identity: str | None = None
    # When Entra ID first refused that credential once its removal was sent: a refusal proves the removal only when
    # it still comes REMOVAL_CONFIRMATION_SECONDS later (a credential just added can be refused by a part of Entra ID
    # it has not reached yet).
    removing_refused_at: datetime | None = None
    # Credentials the service created on the application the connection used before its credentials were
    # changed, still to be removed (with that application's credential, kept in this vault version).
    retire_version: str | None = None
    retire_tenant_id: str | None = None
    retire_client_id: str | None = None
    # That clean-up's journal: everything else it was to remove there is removed, and the removal of the credential
    # it signs in with (this Key ID), the last one, is sent; once that credential no longer signs in, it is done.
    retire_removing_key_id: str | None = None
    # A federated connection's clean-up (it has no secret: ``retire_version`` stays None): the federated credential
    # the service added to the application it left (``retire_tenant_id``, ``retire_client_id``), still to be removed
    # unless another connection of that application relies on it by then.
    retire_federated_id: str | None = None
    # Its journal: the removal of that credential was sent (``retire_removing_key_id``) while it named the service's
    # identity with this principal id, the one the service signs in through there. While the service still has that
    # identity, a sign-in there that no federated credential matches means the removal went through.
    retire_removing_identity: str | None = None
    # When Entra ID first refused the credential whose removal that clean-up sent (``retire_removing_key_id``) as a
    # removal leaves it: as ``removing_refused_at``, the refusal proves the removal only when it still comes
    # REMOVAL_CONFIRMATION_SECONDS later. None again whenever that removal is sent anew.
    retire_removing_refused_at: datetime | None = None
    # The journal of the rotation under way.
    rotation_id: str | None = None
    step: str | None = None
    trigger: str | None = None
    started_at: datetime | None = None
    attempt: int = 0  # attempts of this rotation so far (each has one history entry)
    attempt_started_at: datetime | None = None
    pending_key_id: str | None = None
    pending_version: str | None = None
    pending_expires_at: datetime | None = None  # when the new credential expires
    previous_key_id: str | None = None
    previous_version: str | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    # A migration to the federated method (shared.rotation.migration) also removes the credential the user gave.
    revoke_original: bool = False

    @property
    def cleaning_up(self) -> bool:
        """A clean-up of an application the connection left is pending (``retire_*``)."""
        return self.retire_version is not None or self.retire_federated_id is not None

    @property
    def made_in_use(self) -> bool:
        """Whether the credential in use (``key_id``) is one a rotation made: ``key_made``, or where that is unknown
        (None: state written before it was recorded), ``managed``, as the versions that wrote such state read it."""
        return self.managed if self.key_made is None else self.key_made

    @property
    def in_progress(self) -> bool:
        """A rotation has begun and has not ended (running now, or interrupted and waiting to be resumed)."""
        return self.rotation_id is not None

    def leased(self, now: datetime) -> bool:
        return self.lease_until is not None and self.lease_until > now

    def left_marked(self, now: datetime) -> bool:
        """No one at work on it: unleased for ``LEFT_AFTER`` at least. A DELETE may run on past its lease (a request
        ends within 230 s): a sweep's write to a connection it marked would make its undo or its delete fail."""
        return not self.leased(now - LEFT_AFTER)

    def cleared_journal(self) -> RotationState:
        return replace(
            self, rotation_id=None, step=None, trigger=None, started_at=None, attempt=0, attempt_started_at=None,
            pending_key_id=None, pending_version=None, pending_expires_at=None, previous_key_id=None,
            previous_version=None, lease_owner=None, lease_until=None,
        )

    def left_behind_forgotten(self) -> RotationState:
        """No clean-up of an application left behind pending any more (``retire_*``: done, or another's now)."""
        return replace(self, retire_version=None, retire_tenant_id=None, retire_client_id=None,
                       retire_removing_key_id=None, retire_federated_id=None, retire_removing_identity=None,
                       retire_removing_refused_at=None)

    def clean_up_sent_as(self, other: RotationState) -> RotationState:
        """This state with the journal of the clean-up's last removal as ``other`` holds it: whether it was sent,
        as which identity (a federated credential's), and when Entra ID first refused that credential since."""
        return replace(self, retire_removing_key_id=other.retire_removing_key_id,
                       retire_removing_identity=other.retire_removing_identity,
                       retire_removing_refused_at=other.retire_removing_refused_at)

    def evolve(self, **changes: Any) -> RotationState:
        return replace(self, **changes)


@dataclass(frozen=True)
class HealthState:
    """Whether a connection's credential works and when it expires; when it is checked next; what was notified."""

    status: str = UNKNOWN
    checked_at: datetime | None = None
    message: str | None = None
    credential_expires_at: datetime | None = None
    next_check_at: datetime | None = None
    check_key: str | None = None  # its entry in the health-check index
    notified_status: str | None = None  # the status the last notification was about
    notified_at: datetime | None = None
    # The first of the checks in a row that could not run (Entra, Graph or Key Vault out of reach): what
    # ``health-check-unavailable`` counts its 24 hours from. Stale once a check has run after it (``checked_at``).
    unchecked_since: datetime | None = None

    def evolve(self, **changes: Any) -> HealthState:
        return replace(self, **changes)


@dataclass(frozen=True)
class Notification:
    """A change of a connection's health or rotation that reaches a person: never a secret."""

    # rotation-failed | validation-failed | credential-expiring | credential-expired | health-check-unavailable |
    # recovered (and -reminder)
    event: str
    app: str
    connection_id: str
    name: str
    status: str
    message: str | None
    at: datetime
    id: str = field(default_factory=new_id)  # the idempotency key
    attempts: int = 0
    next_attempt_at: datetime | None = None
    etag: str | None = field(default=None, compare=False, repr=False)  # of its outbox row, as read

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "app": self.app, "connectionId": self.connection_id,
                "name": self.name,
                "status": self.status, "message": self.message,
                "at": iso(self.at)}


@dataclass(frozen=True)
class Actor:
    id: str
    name: str
    type: str  # "user" | "app" | "system"
    role: str | None = None  # the role claim the request was allowed by


@dataclass(frozen=True)
class Authorization:
    """Who consented to an OAuth connection (from the ID token of their sign-in)."""

    oid: str
    upn: str | None
    tenant_id: str | None


@dataclass(frozen=True)
class ConnectionRecord:
    app: str
    id: str
    name: str
    method: str
    tenant_id: str
    client_id: str | None
    created_at: datetime
    updated_at: datetime
    secret_name: str
    secret_version: str
    description: str | None = None
    version: int = 1
    status: str = "active"
    status_message: str | None = None
    last_validated_at: datetime | None = None
    rotation: RotationState = field(default_factory=RotationState)
    health: HealthState = field(default_factory=HealthState)
    created_by: Actor | None = None
    updated_by: Actor | None = None
    authorized_by: Authorization | None = None
    # Versions of the secret that a change superseded and may still be enabled (space-separated), journaled with
    # the change that made another current: disabled after it, and again by the health check until Key Vault has
    # confirmed it (a refused or unanswered disable, a worker gone in between), which then forgets them.
    superseded_versions: str | None = None
    etag: str | None = field(default=None, compare=False)

    def evolve(self, **changes: Any) -> ConnectionRecord:
        return replace(self, **changes)

    @property
    def superseded(self) -> tuple[str, ...]:
        return tuple(self.superseded_versions.split()) if self.superseded_versions else ()

    def superseding(self, versions: Iterable[str]) -> ConnectionRecord:
        """This record with ``versions`` (in order, once each, none empty) as its superseded versions."""
        kept = " ".join(dict.fromkeys(v for v in versions if v))
        return self if kept == (self.superseded_versions or "") else replace(self, superseded_versions=kept or None)


@dataclass(frozen=True)
class RotationEvent:
    """One attempt of one rotation: its own trigger, outcome, message and duration."""

    rotation_id: str
    attempt: int
    connection_id: str
    app: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str  # "running" | "succeeded" | "failed" | "interrupted" | "cancelled"
    trigger: str
    new_key_id: str | None = None
    revoked_key_id: str | None = None
    message: str | None = None

    @property
    def duration_ms(self) -> int | None:
        if self.finished_at is None:
            return None
        return max(0, int((self.finished_at - self.started_at).total_seconds() * 1000))

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.rotation_id,
            "attempt": self.attempt,
            "startedAt": iso(self.started_at),
            "finishedAt": iso(self.finished_at),
            "outcome": self.outcome,
            "trigger": self.trigger,
            "newKeyId": self.new_key_id,
            "revokedKeyId": self.revoked_key_id,
            "message": self.message,
            "durationMs": self.duration_ms,
        }


@dataclass(frozen=True)
class PendingAuthorization:
    """What a state is bound to: the app, the instance client, the PKCE verifier and the requested fields."""

    app: str
    client_id: str
    redirect_uri: str
    verifier: str = field(repr=False)
    created_at: datetime
    expires_at: datetime
    name: str | None = None
    description: str | None = None
    tenant_id: str | None = None
    connection_id: str | None = None
    started_by: Actor | None = None  # who started the sign-in (the callback page and the audit log say so)
    allow_different_user: bool = False  # a re-authorization may be consented by another person than before
    # SHA-256 (hex) of the value of the cookie set in the browser that started the sign-in (the console, by its
    # session cookie): the answer must come back to that browser. None when started with a bearer token.
    browser_binding: str | None = None


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    action: str
    outcome: str
    actor: Actor
    app: str | None = None
    connection_id: str | None = None
    connection_name: str | None = None
    detail: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    id: str = field(default_factory=new_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": iso(self.at),
            "action": self.action,
            "outcome": self.outcome,
            "actor": asdict(self.actor),
            "app": self.app,
            "connectionId": self.connection_id,
            "connectionName": self.connection_name,
            "detail": self.detail,
            "clientIp": self.client_ip,
            "userAgent": self.user_agent,
            "requestId": self.request_id,
            "traceId": self.trace_id,
        }
