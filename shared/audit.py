"""The audit log: who did what to which connection, and what came of it; never a secret.

Every request that changes state or touches a credential, every action of the rotation runner (actor
``system``) and every credential change made on an application through Graph is recorded **before** it runs:
when the record cannot be written the action does not run (:class:`AuditUnavailable`, 503: fail closed), but for
a console sign-out, which ends the session all the same (``shared.functions.console_auth``). Its outcome is a
second record. Records go to the audit store (Table Storage, keyed by time) and, as structured log
records with ``audit=true``, to Log Analytics.

Who is acting is the request's context (:func:`acting`): the HTTP functions set it from the caller's token, the
timers set the system actor.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from shared.azure.upstream import sentence
from shared.errors import AuditUnavailable, FieldError, InvalidRequest, ServiceError, escaped
from shared.fields import page_size
from shared.records import Actor, AuditRecord
from shared.redaction import redact

if TYPE_CHECKING:
    from shared.ports import AuditStore, Clock, HistoryStore

PURGE_BATCH = 10_000  # records one store call deletes at most
PURGE_BUDGET_SECONDS = 240.0  # a run of the retention timer deletes for this long at most (each of its purges)

log = logging.getLogger("app_connections.audit")
log.setLevel(logging.INFO)  # every record reaches the exporter, whatever the root logger's level

MAX_DETAIL = 500
MAX_USER_AGENT = 256
STARTED = "started"
PURGE = "audit.purge"
HISTORY_PURGE = "history.purge"
# The rotation history's retention keeps a connection's newest entry and those of the attempts started up to this
# long before it: its last attempt's, which its rotation state may refer to, stamped by the clock of the instance
# that claimed it, which may be this far behind another's (as the rotation's LEASE_MARGIN allows).
HISTORY_KEPT_LATEST = timedelta(minutes=5)
_Made = TypeVar("_Made")


SYSTEM = Actor("system", "rotation runner", "system")
HEALTH_RUNNER = Actor("system", "health runner", "system")


@dataclass(frozen=True)
class RequestContext:
    actor: Actor
    roles: frozenset[str] = frozenset()  # the caller's app roles (what a handler may show them)
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None


_CONTEXT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("audit_context", default=None)


@contextlib.contextmanager
def acting(context: RequestContext) -> Iterator[RequestContext]:
    token = _CONTEXT.set(context)
    try:
        yield context
    finally:
        _CONTEXT.reset(token)


def current() -> RequestContext:
    return _CONTEXT.get() or RequestContext(SYSTEM)


def acting_actor() -> Actor:
    """Who is acting (the request's caller, or the system), without the role they act by."""
    actor = current().actor
    return Actor(actor.id, actor.name, actor.type)


def search_key(start: datetime | None, end: datetime | None, connection_id: str | None, actor: str | None,
               action: str | None, apps: Collection[str] | None) -> str:
    """A short digest of an audit search's filters as asked (``from`` and ``to`` as given, not their defaults, which
    move with the clock from one page to the next; the apps searched): what its continuation tokens carry."""
    import hashlib
    import json

    asked = [start.isoformat() if start else None, end.isoformat() if end else None, connection_id, actor, action,
             sorted(apps) if apps is not None else None]
    return hashlib.sha256(json.dumps(asked).encode("utf-8", "surrogatepass")).hexdigest()[:16]


class AuditLog:
    def __init__(self, store: AuditStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def record(self, action: str, outcome: str, *, app: str | None = None, connection_id: str | None = None,
                     connection_name: str | None = None, detail: str | None = None) -> AuditRecord:
        """Write one record. Before an action (outcome ``started``) this fails closed: it raises
        :class:`AuditUnavailable` when the record cannot be written, and the action must not run. The record of an
        outcome is written as well as can be: the action has happened, and the structured log keeps it."""
        context = current()
        actor = context.actor
        entry = AuditRecord(
            at=self._clock(), action=_text(action), outcome=_text(outcome),
            actor=Actor(_text(actor.id), _text(actor.name), _text(actor.type), _optional(actor.role)),
            app=_optional(app), connection_id=_optional(connection_id), connection_name=_optional(connection_name),
            detail=_text(redact(detail)[:MAX_DETAIL]) if detail else None, client_ip=_optional(context.client_ip),
            user_agent=escaped(redact(context.user_agent), MAX_USER_AGENT) if context.user_agent else None,
            request_id=_optional(context.request_id), trace_id=_optional(context.trace_id),
        )
        try:
            await self._store.append(entry)
        except Exception as error:
            if not isinstance(error, ServiceError):
                from azure.core.exceptions import AzureError

                if not isinstance(error, AzureError | OSError | TimeoutError):
                    raise
            log.warning("The audit log could not be written (%s): %s %s", sentence(error), action, outcome,
                        extra={"audit": True, **{f"audit_{k}": v for k, v in _flat(entry).items()}})
            if outcome == STARTED:
                raise AuditUnavailable("The audit log could not be written; nothing was done.") from None
            return entry
        log.info("audit %s %s by %s", action, outcome, context.actor.id,
                 extra={"audit": True, **{f"audit_{k}": v for k, v in _flat(entry).items()}})
        return entry

    async def search(self, start: datetime | None, end: datetime | None, *, connection_id: str | None = None,
                     actor: str | None = None, action: str | None = None, limit: int | None = None,
                     continuation: str | None = None, retention_days: int | None = None,
                     apps: Collection[str] | None = None) -> tuple[list[AuditRecord], str | None]:
        """Records between ``start`` (default: 30 days before ``end``) and ``end`` (default: now), newest first;
        ``apps``: of those apps only (None: every record, those of no app too).

        ``retention_days``: no record is older (they are purged daily) nor newer than now, so the days searched
        are cut to those: a search over centuries reads a year's partitions at most, not one per day asked for.

        A page's continuation token names its search (:func:`search_key`): one handed to a search with other
        filters is refused (400 on ``/continuationToken``), not taken as a cursor into another search's records."""
        search = search_key(start, end, connection_id, actor, action, apps)  # as asked: the defaults move with now
        now = self._clock()
        end = end or now
        start = start or end - timedelta(days=30)
        if start > end:
            raise InvalidRequest("from must not be after to.", errors=[FieldError("/from", "is after to")])
        size = page_size(limit)
        if retention_days is not None:
            start = max(start, now - timedelta(days=retention_days + 1))
            end = min(end, now + timedelta(days=1))
            if start > end:
                return [], None
        return await self._store.query(start, end, connection_id=connection_id, actor=actor, action=action,
                                       limit=size, continuation=continuation, apps=apps, search=search)

    async def purge_expired(self, retention_days: int, budget_seconds: float = PURGE_BUDGET_SECONDS,
                            monotonic: Callable[[], float] = time.monotonic) -> int:
        """Delete the records older than the retention (whole days), a batch of ``PURGE_BATCH`` after another
        until none is left or ``budget_seconds`` have passed (the next day's run goes on); how many.

        The purge is itself recorded (``audit.purge``): before it, with the retention and the cut-off (fail closed:
        no record, nothing deleted), and after it, with how many records it deleted (``failed`` and the kind of
        error when it stopped on one)."""
        before = self._cutoff(retention_days)
        what = f"retention {retention_days} days: records before {before:%Y-%m-%dT%H:%M:%SZ}"
        await self.record(PURGE, STARTED, detail=what)
        started = monotonic()
        deleted = 0
        try:
            while True:
                batch = await self._store.purge(before, limit=PURGE_BATCH)
                deleted += batch
                if batch < PURGE_BATCH:
                    break
                if monotonic() - started >= budget_seconds:
                    log.warning("Audit retention: %d records older than %d days deleted, and more are left for the "
                                "next run (this one's %.0f s are up)", deleted, retention_days, budget_seconds)
                    await self.record(PURGE, "succeeded",
                                      detail=f"{what}: {deleted} deleted, more left for the next run")
                    return deleted
        except Exception as error:
            await self.record(PURGE, "failed", detail=f"{what}: {deleted} deleted, then {sentence(error)}")
            raise
        log.info("Audit retention: %d records older than %d days deleted", deleted, retention_days)
        await self.record(PURGE, "succeeded", detail=f"{what}: {deleted} deleted")
        return deleted

    def _cutoff(self, retention_days: int) -> datetime:
        """The start (UTC) of the day ``retention_days`` ago: what is older goes."""
        day = (self._clock() - timedelta(days=retention_days)).astimezone(UTC)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    async def purge_expired_history(self, history: HistoryStore, retention_days: int,
                                    budget_seconds: float = PURGE_BUDGET_SECONDS,
                                    monotonic: Callable[[], float] = time.monotonic) -> int:
        """Delete the rotation history's entries of attempts started before the records' cut-off
        (:meth:`purge_expired`'s), a hundred of a connection's at a time, until none is left or ``budget_seconds``
        have passed (the next day's run goes on); how many. Progress is logged every ``PURGE_BATCH`` entries.

        Some stay, however old: ``running`` ones, and a connection's latest (:data:`HISTORY_KEPT_LATEST`). Its
        rotation state refers to one entry at most, its last attempt's (``attempt_started_at``, ``rotation_id``,
        ``attempt``), while that attempt has no outcome: running, stopped and not yet resumed, handed to the sweep,
        or in the journal of a DELETE's clean-up (``shared.rotation.journal.interrupted_attempt``). The attempt or
        DELETE that closes it reads that entry (``Journaled._close_interrupted``), and would write it again without
        its message were it gone. Such a state can outlive a short retention (a day at least): a rotation whose
        resumption keeps failing, a connection a DELETE left marked until the next one.

        Recorded as the records' purge is (``history.purge``): before it, with the retention and the cut-off (fail
        closed), and after it, with how many entries it deleted (``failed`` and the kind of error when it stopped
        on one)."""
        before = self._cutoff(retention_days)
        what = f"retention {retention_days} days: entries of attempts started before {before:%Y-%m-%dT%H:%M:%SZ}"
        await self.record(HISTORY_PURGE, STARTED, detail=what)
        started = monotonic()
        deleted = 0
        checked: set[str] = set()  # the connections whose latest entries are left out already
        try:
            async with contextlib.aclosing(history.expired(before)) as batches:
                async for connection_id, keys in batches:
                    if connection_id not in checked:  # its first batch, which holds its newest expired entries
                        checked.add(connection_id)
                        latest = set(await history.latest(connection_id, HISTORY_KEPT_LATEST))
                        keys = [key for key in keys if key not in latest]
                    if keys:
                        await history.delete(connection_id, keys)
                    if (deleted + len(keys)) // PURGE_BATCH > deleted // PURGE_BATCH:
                        log.info("Rotation history retention: %d entries deleted so far", deleted + len(keys))
                    deleted += len(keys)
                    if monotonic() - started >= budget_seconds:
                        log.warning("Rotation history retention: %d entries older than %d days deleted, and more "
                                    "may be left for the next run (this one's %.0f s are up)", deleted,
                                    retention_days, budget_seconds)
                        await self.record(HISTORY_PURGE, "succeeded",
                                          detail=f"{what}: {deleted} deleted, more may be left for the next "
                                                 "run")
                        return deleted
        except Exception as error:
            await self.record(HISTORY_PURGE, "failed", detail=f"{what}: {deleted} deleted, then {sentence(error)}")
            raise
        log.info("Rotation history retention: %d entries older than %d days deleted", deleted, retention_days)
        await self.record(HISTORY_PURGE, "succeeded", detail=f"{what}: {deleted} deleted")
        return deleted

    async def credential_change(self, action: str, outcome: str, *, app: str, connection_id: str,
                                object_id: str, key_id: str | None = None, detail: str = "") -> None:
        """A credential added to or removed from an application through Graph (fail closed)."""
        text = f"application {object_id}" + (f", keyId {key_id}" if key_id else "") + (f": {detail}" if detail else "")
        await self.record(action, outcome, app=app, connection_id=connection_id, detail=text)

    async def credential_changed(self, action: str, change: Callable[[], Awaitable[_Made]], *, app: str,
                                 connection_id: str, object_id: str, key_id: str | None = None, detail: str = "",
                                 key_id_of: Callable[[_Made], str] | None = None) -> _Made:
        """Make a credential ``change`` to an application through Graph, recorded before it runs (fail closed: no
        record, no change) and after, however it ends: ``succeeded`` (with the Key ID, or ``key_id_of`` what the
        change made), or ``failed`` with the kind of error, never its text (nothing changed, or Graph's answer was
        lost: whoever made the change finds the credential again by its Key ID or name)."""
        await self.credential_change(action, STARTED, app=app, connection_id=connection_id, object_id=object_id,
                                     key_id=key_id, detail=detail)
        try:
            made = await change()
        except Exception as error:
            try:  # the change's own error is what the caller must see, whatever becomes of this record
                await self.credential_change(action, "failed", app=app, connection_id=connection_id,
                                             object_id=object_id, key_id=key_id,
                                             detail=f"{detail}: {type(error).__name__}".lstrip(": "))  # its kind only
            except Exception as unrecorded:
                log.warning("The audit log could not be written (%s): %s failed", sentence(unrecorded), action)
            raise
        await self.credential_change(action, "succeeded", app=app, connection_id=connection_id, object_id=object_id,
                                     key_id=key_id_of(made) if key_id_of is not None else key_id)
        return made


def _flat(entry: AuditRecord) -> dict[str, Any]:
    data = entry.as_dict()
    actor = data.pop("actor")
    return {**data, "actorId": actor["id"], "actorName": actor["name"], "actorType": actor["type"],
            "actorRole": actor["role"]}


def _text(value: str) -> str:
    """``value`` as Table Storage and the log can hold it: a lone surrogate (not Unicode text; a record holding one
    could be written but its day's partition no longer read) escaped as Python writes it (``\\ud800``), any
    other character as it is (a person's name keeps its accents)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _optional(value: str | None) -> str | None:
    return None if value is None else _text(value)
