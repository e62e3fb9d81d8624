"""Credential health: when each connection's credential expires and whether it still works, checked
continuously; what changes reaches a person (``shared.notify``).

``health.status`` is ``healthy``, ``expiring`` (within ``EXPIRY_WARNING_DAYS`` of its expiry), ``failing``
(Entra ID refuses it), ``expired`` or ``unknown`` (not checked yet). ``credentialExpiresAt`` is the client
secret's ``endDateTime`` (known when the service created it or was told its Key ID, else read from Graph where
the connection may read its own application), the certificate's ``notAfter``, or, for OAuth, when the refresh
token would lapse from 90 days unused.

The health sweep (a timer) reads only the connections whose check is due, through an index whose keys sort by
due time, as the rotation schedule does, checks them with bounded concurrency under the same Graph pacing as
rotation, and keeps OAuth refresh tokens alive by using them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.apps import Method, find_app
from shared.audit import HEALTH_RUNNER, STARTED, RequestContext, acting
from shared.azure.upstream import azure_failure, sentence
from shared.connections import ABANDONED_AFTER, ConnectionService
from shared.due_index import health_key, reindex
from shared.errors import (
    AuditUnavailable,
    ConcurrentChange,
    CredentialRejected,
    NotFound,
    SecretGone,
    ServiceError,
    VersionDisabled,
)
from shared.expiry import REFRESH_TOKEN_LIFETIME, RETRY_UNREACHABLE, next_check, renewal, status_of
from shared.notify import Notifier, health_notices, unchecked_notices
from shared.oauth_tokens import ReauthorizationRequired
from shared.ports import Adapters, DueEntry
from shared.records import (
    EXPIRED,
    EXPIRING,
    FAILING,
    HEALTHY,
    PUT_OFF,
    STATUS_ACTIVE,
    STATUS_DELETING,
    STATUS_INVALID,
    STATUS_REAUTHORIZATION_REQUIRED,
    ConnectionRecord,
    HealthState,
)
from shared.rotation.pacing import paced_fan_out
from shared.views import being_deleted, require_match

log = logging.getLogger(__name__)

CHECK = "connection.check-health"  # the audit action, as POST .../health records it
# Seconds POST .../health may spend sending notifications before it answers: a send starts only when its whole
# timeout (shared.notify.SEND_TIMEOUT_SECONDS, 15 s) fits, so this leaves room for one that hangs, after a few quick.
REQUEST_DELIVERY_BUDGET = 20.0


# How bad a status is (status_of's order): an unchecked credential's known expiry only ever makes it worse.
_SEVERITY = {EXPIRING: 1, FAILING: 2, EXPIRED: 3}


def _unchecked_since(record: ConnectionRecord, now: datetime) -> datetime:
    """Since when a check that could not run ``now`` has not been able to: the first of those in a row, as recorded
    (a record whose check has run since, by this service or by a rotation or an edit that checked its new
    credentials, starts a new row), else now. Counted from the first that failed, not from the last check that ran:
    with a daily check that one is a day old when its next check first fails, whatever the interval."""
    since = record.health.unchecked_since
    last = record.health.checked_at
    return since if since is not None and (last is None or since > last) else now


def _credentials_of(record: ConnectionRecord) -> tuple[str, ...]:
    """What a check checked: a federated connection's credentials change without a secret version."""
    return (record.method, record.tenant_id, record.client_id or "", record.secret_version,
            record.rotation.key_id or "")


@dataclass
class HealthReport:
    due: int = 0
    checked: int = 0
    stale: int = 0
    left_for_next_sweep: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    delivered: int = 0


class HealthChecker:
    def __init__(self, adapters: Adapters, connections: ConnectionService) -> None:
        """``connections``: the lifecycle (its OAuth tokens keep refresh tokens alive)."""
        self.adapters = adapters
        self.connections = connections
        self.notifier = Notifier(adapters)
        settings = adapters.settings
        self.interval = settings.health_check_interval
        self.warning = settings.expiry_warning

    # -- one connection ----------------------------------------------------------------------------------
    async def check(self, record: ConnectionRecord) -> ConnectionRecord:
        """Check one connection now and record its health (and the notification it calls for)."""
        app = find_app(record.app)
        assert app is not None
        now = self.adapters.clock()
        expires = record.health.credential_expires_at
        refused: CredentialRejected | None = None
        unreachable: str | None = None
        try:
            if record.method == Method.OAUTH:
                record = await self.connections.oauth_tokens.refresh_now(app, record)
                expires = self.adapters.clock() + REFRESH_TOKEN_LIFETIME
            else:
                try:
                    material = await self.connections.material_of(record)  # {} for a federated one: nothing stored
                except (SecretGone, VersionDisabled) as gone:  # nothing to sign in with: as good as refused
                    raise CredentialRejected(f"The stored credential cannot be read from Key Vault: {gone.detail}"
                                             ) from None
                await self.adapters.directory.probe(app, Method(record.method), record.tenant_id,
                                                    record.client_id or "", material)
                if expires is None and record.method == Method.CLIENT_SECRET:
                    expires = await self._password_end(record, material)
        except CredentialRejected as error:
            refused = error
            if isinstance(error, ReauthorizationRequired) and error.record is not None:
                record = error.record  # the version refused: a refresh elsewhere may have moved to it meanwhile
        except ServiceError as error:
            unreachable = error.detail
        except Exception as error:
            if not azure_failure(error):
                raise
            unreachable = sentence(error)
        since: datetime | None = None
        if unreachable is not None:
            since = _unchecked_since(record, now)
            health = record.health.evolve(message=f"The credential could not be checked ({unreachable}).",
                                          next_check_at=now + RETRY_UNREACHABLE, unchecked_since=since)
            health = health.evolve(status=self._dated_unchecked(record, expires, now))
            connection_status = record.status
        else:
            renewed = renewal(record, now + self.interval)
            due = next_check(now, self.interval, expires, self.warning, record.health.next_check_at, renewed)
            health = record.health.evolve(
                status=status_of(expires, refused is not None, now, self.warning, renewed),
                checked_at=now, message=refused.detail if refused else None, credential_expires_at=expires,
                next_check_at=due, unchecked_since=None)
            connection_status = (STATUS_REAUTHORIZATION_REQUIRED if isinstance(refused, ReauthorizationRequired)
                                 else STATUS_INVALID if refused else STATUS_ACTIVE)
        # Versions a change superseded whose disable is not confirmed yet (Key Vault reachable or not for Entra).
        forget = await self.connections.disable_superseded(record) if record.superseded else frozenset[str]()
        return await self._save(record, health, connection_status, refused.detail if refused else None,
                                unchecked_since=since, forget=forget)

    async def _password_end(self, record: ConnectionRecord, material: dict[str, str]) -> datetime | None:
        """The client secret's end date, read from Graph where the connection may read its own application."""
        key_id = record.rotation.key_id
        secret = material.get("clientSecret", "")
        try:
            async with self.adapters.directory.graph(Method.CLIENT_SECRET, record.tenant_id, record.client_id or "",
                                                     material) as graph:
                registration = await graph.find(record.client_id or "")
        except ServiceError:
            return None
        matches = [p for p in registration.passwords
                   if (key_id and p.key_id == key_id) or (not key_id and p.hint and secret.startswith(p.hint))]
        return matches[0].end_date_time if len(matches) == 1 else None

    async def _save(self, record: ConnectionRecord, health: HealthState, connection_status: str,
                    message: str | None, unchecked_since: datetime | None = None,
                    forget: frozenset[str] = frozenset()) -> ConnectionRecord:
        """Index the next check first, then write the health with its notification (one transaction), then drop
        the old index entry. A record changed meanwhile is checked again on top of the change. ``unchecked_since``:
        the check could not run, nor could those in a row before it since then: only the health changes (the
        connection's status, ``statusMessage`` and ``lastValidatedAt`` are those of the last check that ran).
        ``forget``: superseded versions now disabled, no longer journaled (a change meanwhile keeps its own)."""
        store = self.adapters.connections
        index = self.adapters.health_index
        now = self.adapters.clock()
        current = record
        for _ in range(3):
            if current.status == STATUS_DELETING:
                return current
            notices, remembered = (health_notices(current, health, now) if unchecked_since is None
                                   else unchecked_notices(current, health, now, unchecked_since))
            key = await index.put(health.next_check_at or now + self.interval, current.app, current.id)
            if unchecked_since is None:
                target = current.evolve(health=remembered.evolve(check_key=key), status=connection_status,
                                        status_message=message, last_validated_at=now)
            else:  # nothing was validated: the connection's status, its explanation and its last validation stay
                target = current.evolve(health=remembered.evolve(check_key=key))
            target = target.superseding(v for v in current.superseded if v not in forget)
            try:
                saved = await store.update(target, notify=notices)
            except ConcurrentChange:
                try:
                    fresh: ConnectionRecord | None = await store.get(record.app, record.id)
                except NotFound:
                    fresh = None
                if fresh is None or fresh.health.check_key != key:  # not its own write, landed with its answer lost
                    await index.remove(key if key != current.health.check_key else None)
                    if fresh is None or _credentials_of(fresh) != _credentials_of(current):
                        return fresh or current  # deleted; or new credentials, whose own check is newer
                    current = fresh
                    health = self._rebased(health, fresh, now, ran=unchecked_since is None)
                    if (unchecked_since is None and health.checked_at is not None
                            and fresh.last_validated_at is not None and fresh.last_validated_at >= health.checked_at):
                        # an outcome written since this check signed in (a revocation's mark): newer news
                        connection_status, message = fresh.status, fresh.status_message
                    continue
                saved = fresh
            if current.health.check_key and current.health.check_key != key:
                await index.remove(current.health.check_key)
            return saved
        return current

    def _dated_unchecked(self, record: ConnectionRecord, expires: datetime | None, now: datetime) -> str:
        """The status of a credential whose check could not run: what its known expiry says still holds without a
        check (expiring, then expired, on time), only ever worse than the status known. No refresh happened now:
        an OAuth connection's last one still counts while it is recent."""
        last = record.health.checked_at
        dated = status_of(expires, False, now, self.warning, renewal(record, last + self.interval if last else None))
        known = record.health.status
        return dated if _SEVERITY.get(dated, 0) > _SEVERITY.get(known, 0) else known

    def _rebased(self, health: HealthState, fresh: ConnectionRecord, now: datetime, *, ran: bool) -> HealthState:
        """A check's outcome, written again over a change that landed after the check read the record (a PATCH of
        the rotation, say): what was notified is the change's, a working credential is expiring or not by what
        renews it now, and an earlier check the change indexed stays."""
        rebased = health.evolve(notified_status=fresh.health.notified_status, notified_at=fresh.health.notified_at)
        if ran and health.status in (HEALTHY, EXPIRING):  # it worked: expiring or not by what renews it now
            renewed = renewal(fresh, health.next_check_at)
            rebased = rebased.evolve(status=status_of(health.credential_expires_at, False, now, self.warning,
                                                      renewed))
        elif not ran:  # it could not run: dated as check() dates it, from the last check
            rebased = rebased.evolve(status=self._dated_unchecked(fresh, health.credential_expires_at, now))
        earlier = fresh.health.next_check_at
        if earlier is not None and health.next_check_at is not None and now < earlier < health.next_check_at:
            rebased = rebased.evolve(next_check_at=earlier)
        return rebased

    async def check_now(self, app_id: str, connection_id: str, if_match: str | None = None) -> ConnectionRecord:
        """Check the connection now (a request's): ``if_match``, only if it is still at that version (412 else)."""
        record = await self.connections.get(app_id, connection_id)
        require_match(record, if_match)
        if record.status == STATUS_DELETING:  # nothing signs in with (or refreshes) what a DELETE is removing
            raise being_deleted()
        checked = await self.check(record)
        await self.notifier.deliver_or_keep(REQUEST_DELIVERY_BUDGET)  # in the request's time; timers deliver the rest
        return checked

    async def _put_off(self, record: ConnectionRecord, entry: DueEntry) -> None:
        """Move a due entry skipped for a lasting reason ``PUT_OFF`` on, under the index's rules (:func:`reindex`):
        the new entry first, then the record pointed at it (ETag-guarded), then the entry it no longer points at
        dropped. A record changed meanwhile (a DELETE sent again, or undone) keeps the entry it points at; one
        deleted meanwhile points at neither."""
        store = self.adapters.connections
        due = self.adapters.clock() + PUT_OFF

        async def point(key: str | None) -> ConnectionRecord:
            try:
                return await store.update(record.evolve(health=record.health.evolve(next_check_at=due, check_key=key)))
            except ConcurrentChange:  # changed meanwhile; or its own write, landed with its answer lost
                try:
                    return await store.get(record.app, record.id)
                except NotFound:
                    return record.evolve(health=record.health.evolve(check_key=None))

        pointed = await reindex(self.adapters.health_index, entry.key, due, record, point, key_of=health_key)
        if pointed.health.next_check_at == due:
            log.info("Health check of %s connection %s put off to %s", record.app, record.id, due)

    # -- the sweep ----------------------------------------------------------------------------------------
    async def sweep(self, *, max_concurrency: int = 8, budget_seconds: float = 240.0, limit: int = 1000,
                    clock: Any = None) -> HealthReport:
        loop = asyncio.get_running_loop()
        monotonic = clock or loop.time
        started = monotonic()
        entries = await self.adapters.health_index.due(self.adapters.clock(), limit=limit)
        report = HealthReport(due=len(entries))

        async def handle(entry: DueEntry) -> None:
            await self._check_entry(entry, report)

        fan = await paced_fan_out(entries, handle, paced=self.adapters.directory.paced,
                                  max_concurrency=max_concurrency, budget_seconds=budget_seconds,
                                  monotonic=monotonic, what="Health sweep", progress_every=100)
        report.left_for_next_sweep = fan.left
        report.delivered = await self.notifier.deliver_or_keep()
        log.info("Health sweep done in %.1f s: %d checked %s, %d stale, %d left for the next sweep",
                 monotonic() - started, report.checked, report.statuses, report.stale, report.left_for_next_sweep)
        return report

    async def _check_entry(self, entry: DueEntry, report: HealthReport) -> None:
        """One due entry; whatever fails in it ends its check, not the sweep: the entry stays due."""
        try:
            await self._check_due(entry, report)
        except Exception:
            log.exception("Health check of %s connection %s failed unexpectedly", entry.app, entry.connection_id)

    async def _check_due(self, entry: DueEntry, report: HealthReport) -> None:
        try:
            record = await self.adapters.connections.get(entry.app, entry.connection_id)
        except NotFound:
            record = None
        if record is None:  # deleted; or a create that stored no record, whose secret goes (once surely abandoned)
            if self.adapters.clock() - entry.due < ABANDONED_AFTER:
                return  # its create (never before the entry's due time) may still be writing it: the entry stays
            with acting(RequestContext(HEALTH_RUNNER)):
                if not await self.connections.remove_abandoned(entry.app, entry.connection_id):
                    return  # its secret was written less than that ago: the entry stays, for a later sweep
        if record is None or record.health.check_key != entry.key:
            await self.adapters.health_index.remove(entry.key)
            report.stale += 1
            return
        if record.status == STATUS_DELETING:  # a DELETE to be sent again: its credential is being removed (an OAuth
            # one is not refreshed, which would write to the record under the DELETE); the entry stays, should the
            # DELETE be undone, but moves on, unless a DELETE is at work on the record (its lease)
            log.info("Health check of %s connection %s skipped: it is being deleted", record.app, record.id)
            if record.rotation.left_marked(self.adapters.clock()):
                await self._put_off(record, entry)
            return
        audit = self.connections.rotator.audit
        with acting(RequestContext(HEALTH_RUNNER)):
            # The check signs in with the connection's credential and records what it found: audited before it
            # runs (fail closed: an entry whose record cannot be written stays due for the next sweep) and after.
            try:
                await audit.record(CHECK, STARTED, app=record.app, connection_id=record.id,
                                   connection_name=record.name)
            except AuditUnavailable:
                log.warning("Health check of %s connection %s put off: the audit log cannot be written",
                            record.app, record.id)
                return
            started = self.adapters.clock()
            try:
                checked = await self.check(record)
            except Exception as error:
                await audit.record(CHECK, "failed", app=record.app, connection_id=record.id,
                                   connection_name=record.name, detail=type(error).__name__)
                raise
            made = checked.health.checked_at is not None and checked.health.checked_at >= started
            # A check that could not be made (Entra, Graph or Key Vault unreachable) says so, not the health it kept.
            await audit.record(CHECK, checked.health.status if made else "not-checked", app=record.app,
                               connection_id=record.id, connection_name=checked.name,
                               detail=None if made else checked.health.message)
        report.checked += 1
        report.statuses[checked.health.status] = report.statuses.get(checked.health.status, 0) + 1

