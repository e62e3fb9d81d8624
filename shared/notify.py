"""Notifications that reach a person: a rotation that failed, a validation that failed, a credential expiring or
expired, and a recovery; one per change of state, and a reminder every 24 hours while it lasts.

A notification is queued in the outbox **in the same transaction** as the change it tells of, so a crash between
the change and the delivery loses nothing. :meth:`Notifier.deliver` then sends each one: a structured telemetry
event (``notification=true``, for alert rules) and, when ``NOTIFY_WEBHOOK_URL`` is set, a JSON POST signed with
HMAC-SHA256 (``NOTIFY_WEBHOOK_SECRET``), retried with back-off; its ``Idempotency-Key`` lets a receiver drop a
duplicate. Never a secret: the payload is ``{event, app, connectionId, name, status, message, at}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from shared.apps import APPS
from shared.azure.upstream import sentence
from shared.json_codec import iso
from shared.ports import WEBHOOK_TIMEOUT_SECONDS, Adapters, WebhookStatus
from shared.records import (
    EXPIRED,
    EXPIRING,
    FAILING,
    HEALTHY,
    ConnectionRecord,
    HealthState,
    Notification,
)
from shared.settings import KEY_VAULT_REFERENCE

log = logging.getLogger("app_connections.notifications")

EVENTS = {EXPIRING: "credential-expiring", EXPIRED: "credential-expired", FAILING: "validation-failed"}
ROTATION_FAILED = "rotation-failed"
RECOVERED = "recovered"
# A working credential's checks could not run (Entra, Graph or Key Vault out of reach) for UNCHECKED_ALERT_AFTER,
# counted from the first that could not: nobody would know if it stopped working. Remembered as the
# ``notified_status`` "unchecked-{status told}" (it has no health status of its own): "unchecked-healthy", or
# "unchecked-expiring" once an expiry by date was told too.
CHECK_UNAVAILABLE = "health-check-unavailable"
UNCHECKED = "unchecked-"
UNCHECKED_ALERT_AFTER = timedelta(hours=24)
REMINDER_EVERY = timedelta(hours=24)
# A daily check is picked up by an hourly sweep a few minutes earlier or later than the day before: a reminder due
# within this of a day is sent, not put off to the next day's check.
REMINDER_SLACK = timedelta(hours=1)
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
MAX_RETRY_AFTER = timedelta(hours=6)  # the longest a receiver's Retry-After puts a notice's next try off
MAX_ATTEMPTS = 30  # most of a day of tries (19 h on average, 25 h at most), then it is given up (and logged)
MAX_AGE = timedelta(days=2)  # a notice this old is given up too, however few its tries (a receiver's long waits)
DELIVERY_BUDGET_SECONDS = 60.0  # a pass's sends end within this long (a timer's; a request's is shorter)
GIVE_UP_AFTER_FAILURES = 3  # failures in a row that end a pass: the receiver is down or hangs
# A send waits this long for the receiver's answer, never less: a pass starts one only when this much of its
# budget is left. A send cut short may have reached the receiver, and would be sent again by the next pass (a Teams
# or Slack workflow posts it twice: neither reads the Idempotency-Key).
SEND_TIMEOUT_SECONDS = WEBHOOK_TIMEOUT_SECONDS
# A pass takes each notice before it handles it (an ETag-guarded write of its next attempt), so two passes never
# send one notice twice; should the pass die holding it, the notice is due again this long after.
CLAIM = timedelta(minutes=5)
# What a receiver answers a notice it will never take, whatever the retries (the request itself is refused): given
# up at once, so that it holds nothing behind it for a day. (401, 403 and 404 are retried: a receiver or its key
# being set up.)
REFUSED_FOR_GOOD = frozenset({400, 410, 413, 415, 422})
SIGNATURE_HEADER = "X-AppConnections-Signature"
TIMESTAMP_HEADER = "X-AppConnections-Timestamp"


class RefusedForGood(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"the receiver answered {status}")
        self.status = status


def health_notices(record: ConnectionRecord, health: HealthState, now: datetime, *,
                   remind: bool = True) -> tuple[list[Notification], HealthState]:
    """The notifications a connection's (new) ``health`` calls for, and the health state that remembers them: a
    credential that was failing or expired and works again is ``recovered`` (its failure alert is answered), and
    then ``credential-expiring`` when it is within its warning. ``remind``: the daily reminder of a state that
    lasts is due (the health check's; a change written by anything else tells changes only)."""
    notified = health.notified_status
    if health.status == HEALTHY:
        if notified in EVENTS or (notified or "").startswith(UNCHECKED):
            return ([_notice(record, RECOVERED, health, now)],
                    health.evolve(notified_status=HEALTHY, notified_at=now))
        return [], health
    event = EVENTS.get(health.status)
    if event is None:  # unknown: not checked, or could not be
        return [], health
    if notified != health.status:
        works_again = health.status == EXPIRING and (notified in (FAILING, EXPIRED)
                                                      or (notified or "").startswith(UNCHECKED))
        recovered = [_notice(record, RECOVERED, health, now)] if works_again else []
        if health.status == EXPIRING and notified == f"{UNCHECKED}{EXPIRING}":  # its expiry was told while
            # unchecked: the check that runs again is what is new
            return recovered, health.evolve(notified_status=EXPIRING, notified_at=now)
        # A millisecond apart: the outbox (and a receiver, by ``at``) orders them as they happened.
        then = now + timedelta(milliseconds=1) if recovered else now
        return ([*recovered, _notice(record, event, health, then)],
                health.evolve(notified_status=health.status, notified_at=now))
    if remind and health.notified_at is not None and now - health.notified_at >= REMINDER_EVERY - REMINDER_SLACK:
        return [_notice(record, f"{event}-reminder", health, now)], health.evolve(notified_at=now)
    return [], health


def unchecked_notices(record: ConnectionRecord, health: HealthState, now: datetime,
                      since: datetime) -> tuple[list[Notification], HealthState]:
    """The notifications of a check that could not run (``health`` is what is known without it): a credential that
    last worked (healthy or expiring) whose checks have not been able to run since ``since`` (the first of them in a
    row, not the last check that ran), ``UNCHECKED_ALERT_AFTER`` ago or more, is ``health-check-unavailable``, then
    reminded of daily; ``recovered`` when a check runs again and finds it working. An expiry that comes meanwhile
    by date is told as it comes (``credential-expiring`` first, then the unavailability; ``credential-expired``
    ends it). A credential that does not work is told and reminded of as :func:`health_notices` does, with the last
    refusal's message (or its end), not this check's."""
    notified = health.notified_status or ""
    told = notified.startswith(UNCHECKED)  # told already: unchecked still, whatever ``since`` says (a record that
    # has none recorded, written before it was: the first check that cannot run counts from now)
    if health.status not in (HEALTHY, EXPIRING):
        # A credential that does not work (failing, expired) is reminded of daily all the same, with what is known
        # of it (the last refusal; its end), never this check's failure: silence would make the worst connections
        # the quiet ones while checks cannot run (review of the health fixes, 1).
        known = record.status_message if health.status == FAILING else None
        if health.status == EXPIRED and health.credential_expires_at is not None:
            known = f"The credential in use expired at {iso(health.credential_expires_at)}."
        told_now, after = health_notices(record, health.evolve(message=known) if known else health, now)
        return told_now, after.evolve(message=health.message)
    if not told and now - since < UNCHECKED_ALERT_AFTER:
        # Changes only (an expiry by date): a check that could not run reminds of nothing it did not find again.
        return health_notices(record, health, now, remind=False)
    unchecked = f"{UNCHECKED}{health.status}"
    if notified == unchecked:
        if health.notified_at is not None and now - health.notified_at >= REMINDER_EVERY - REMINDER_SLACK:
            return [_notice(record, f"{CHECK_UNAVAILABLE}-reminder", health, now)], health.evolve(notified_at=now)
        return [], health
    if told:  # told already, of another working state: what changed by date only
        return redated_notices(record, health, now)
    notices: list[Notification] = []
    if health.status == EXPIRING and notified != EXPIRING:  # expiring by date: told first
        notices.append(_notice(record, EVENTS[EXPIRING], health, now))
    # A millisecond apart: the outbox (and a receiver, by ``at``) orders them as they happened.
    notices.append(_notice(record, CHECK_UNAVAILABLE, health, now + timedelta(milliseconds=len(notices))))
    return notices, health.evolve(notified_status=unchecked, notified_at=now)


def redated_notices(record: ConnectionRecord, health: HealthState, now: datetime) -> tuple[list[Notification],
                                                                                            HealthState]:
    """The notifications of a health re-dated without a check (a PATCH of the rotation settings): as
    :func:`health_notices`, but a credential whose check could not run stays unchecked, nothing recovered (an
    expiry by date is still told, as :func:`unchecked_notices` would)."""
    notified = health.notified_status or ""
    if not notified.startswith(UNCHECKED) or health.status not in (HEALTHY, EXPIRING):
        return health_notices(record, health, now, remind=False)
    unchecked = f"{UNCHECKED}{health.status}"
    if notified == unchecked:
        return [], health
    if health.status == EXPIRING:
        return [_notice(record, EVENTS[EXPIRING], health, now)], health.evolve(notified_status=unchecked,
                                                                               notified_at=now)
    return [], health.evolve(notified_status=unchecked)


def rotation_failed(record: ConnectionRecord, message: str, now: datetime, next_attempt_in: timedelta, *,
                    first: bool) -> Notification | None:
    """The notification of a failed rotation attempt: the ``first`` failed rotation in a row (whatever failed
    before it: a clean-up of an application left behind counts in the back-off, not here), then a reminder whenever
    the back-off has reached a day (so about daily while it lasts), not one per attempt."""
    if first:
        event = ROTATION_FAILED
    elif next_attempt_in >= REMINDER_EVERY:
        event = f"{ROTATION_FAILED}-reminder"
    else:
        return None
    return Notification(event, record.app, record.id, record.name, record.rotation.status or "failed", message, now)


def _notice(record: ConnectionRecord, event: str, health: HealthState, now: datetime) -> Notification:
    return Notification(event, record.app, record.id, record.name, health.status, health.message, now)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">``: the timestamp is signed too, so a captured request
    cannot be sent again later under a new one (a receiver refuses a stale timestamp), and the body names the
    notification (``id``, the ``Idempotency-Key``), so neither can be swapped."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def retry_delay(attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> timedelta:
    """The wait before a notice's next try after ``attempts`` failed ones: 1 minute, doubling, at most an hour, each
    jittered between half and all of it (``shared.azure.retry.jittered``: notices that failed together do not come
    back together); never less than the receiver's ``retry_after`` (seconds, at most ``MAX_RETRY_AFTER``), with a
    spread of its own on top (up to a tenth of it, at most 6 minutes: notices told the same wait come back apart)."""
    from shared.azure.retry import jittered

    ceiling: timedelta = min(MAX_RETRY, FIRST_RETRY * 2 ** max(0, attempts - 1))
    delay = timedelta(seconds=jittered(ceiling.total_seconds(), rng))
    if retry_after is not None:
        wanted = min(max(retry_after, 0.0), MAX_RETRY_AFTER.total_seconds())
        spread = jittered(min(wanted, MAX_RETRY.total_seconds()) / 10, rng) if wanted > 0 else 0.0
        delay = max(delay, timedelta(seconds=wanted + spread))
    return delay


class Notifier:
    def __init__(self, adapters: Adapters) -> None:
        self.adapters = adapters

    def emit(self, item: Notification) -> None:
        """The telemetry event alert rules query: a structured log record whose custom dimensions are
        ``notification=true``, ``event``, ``app``, ``connectionId``, ``connectionName``, ``status`` and ``detail``
        (``name`` and ``message`` are taken by Python's log records)."""
        log.warning("notification %s %s %s", item.event, item.app, item.connection_id, extra={
            "notification": "true", "event": item.event, "app": item.app, "connectionId": item.connection_id,
            "connectionName": item.name, "status": item.status, "detail": item.message,
            "notificationId": item.id})

    async def deliver_or_keep(self, budget_seconds: float = DELIVERY_BUDGET_SECONDS) -> int:
        """:meth:`deliver`, after the work that queued them (a sweep, a request): a failure to deliver now (the
        outbox cannot be read) keeps them queued for the next pass, and fails nothing; how many were delivered."""
        try:
            return await self.deliver(budget_seconds=budget_seconds)
        except Exception as error:
            log.warning("Notifications not delivered now (%s); they stay queued", sentence(error))
            return 0

    async def deliver(self, limit: int = 100, budget_seconds: float = DELIVERY_BUDGET_SECONDS,
                      monotonic: Callable[[], float] = time.monotonic) -> int:
        """Send what the outbox holds and is due; how many were delivered (or given up). One pass's sends end
        within ``budget_seconds``: it starts a webhook send only while the send's whole timeout
        (``SEND_TIMEOUT_SECONDS``) still fits, and never cuts one short (the receiver may have taken it: cut, it
        would be sent again); and it stops after ``GIVE_UP_AFTER_FAILURES`` failures in a row (a receiver that is
        down or hangs). The rest stays queued for the next pass, which a timer or a request makes: one whose send
        did not start is no failure (a new one is marked as told, its alert record out, and is due at once).

        A connection's notices reach the receiver in the order they happened: one is sent only when no older one of
        its connection waits (to be tried again later, or in another pass's hands), else it waits behind it. A
        new notice's alert record goes out when a pass first reads it all the same, however long its send waits:
        when more notices to try again are queued than a pass reads, older ones of its connection may be unread,
        and new notices wait."""
        now = self.adapters.clock()
        started = monotonic()
        done = failed_in_a_row = 0
        outbox = self.adapters.outbox
        queued = await outbox.pending(tuple(APPS), limit)
        crowded = sum(1 for item in queued if item.attempts) >= limit
        needs = SEND_TIMEOUT_SECONDS if self.adapters.settings.notify_webhook_url else 0.0  # to start a send
        held: set[str] = set()  # connections with an older notice this pass does not deliver
        for seen in queued:
            if seen.next_attempt_at is not None and seen.next_attempt_at > now:
                held.add(seen.connection_id)  # not due (backing off, or another pass's): what follows waits
                continue
            left = budget_seconds - (monotonic() - started)
            stopping = left <= 0 or left < needs or failed_in_a_row >= GIVE_UP_AFTER_FAILURES
            waits = stopping or seen.connection_id in held or (crowded and not seen.attempts)
            if waits and seen.attempts != 0:
                held.add(seen.connection_id)
                continue  # untouched: a later pass sends it
            item = await outbox.claim(seen, now + CLAIM)
            if item is None:
                held.add(seen.connection_id)
                continue  # another pass took it (or delivered it) since this one read it
            if waits:  # its alert record goes out now all the same, once: the send waits
                self.emit(item)
                await outbox.retry_later(replace(item, attempts=1, next_attempt_at=now))
                held.add(item.connection_id)
                continue
            if item.attempts == 0:
                self.emit(item)
            try:  # its own timeout, which the pass's budget holds whole (whatever the adapter's does)
                sent, wait = await asyncio.wait_for(self._send(item), SEND_TIMEOUT_SECONDS)
            except TimeoutError:
                log.info("Notification %s not answered within %.0f s; it is retried", item.id, SEND_TIMEOUT_SECONDS)
                sent, wait = False, None
            except RefusedForGood as refusal:  # the same answer every time: not tried again for a day
                log.error("Notification %s (%s of %s) given up: the receiver refuses it (%d)", item.id, item.event,
                          item.connection_id, refusal.status)
                await self.adapters.outbox.delivered(item)
                done += 1
                continue
            if sent:
                await self.adapters.outbox.delivered(item)
                done += 1
                failed_in_a_row = 0
                continue
            failed_in_a_row += 1
            if wait is not None:  # the receiver asked to be left alone: this pass sends it nothing more
                failed_in_a_row = GIVE_UP_AFTER_FAILURES
            held.add(item.connection_id)
            attempts = item.attempts + 1
            if attempts >= MAX_ATTEMPTS or now - item.at >= MAX_AGE:
                log.error("Notification %s (%s of %s) given up after %d attempts (%s old)", item.id, item.event,
                          item.connection_id, attempts, now - item.at)
                await self.adapters.outbox.delivered(item)
                done += 1
                continue
            await self.adapters.outbox.retry_later(replace(item, attempts=attempts,
                                                           next_attempt_at=now + retry_delay(attempts, wait)))
        return done

    async def _send(self, item: Notification) -> tuple[bool, float | None]:
        """Whether ``item`` was delivered, and the receiver's wait (seconds) when it asked for one."""
        settings = self.adapters.settings
        if not settings.notify_webhook_url:
            return True, None  # the telemetry event is the notification
        if settings.notify_webhook_url.startswith(KEY_VAULT_REFERENCE):  # retried as a failed delivery (about a day)
            log.error("NOTIFY_WEBHOOK_URL is a Key Vault reference that does not resolve (the secret is missing or "
                      "the identity may not read it): notification %s waits for it", item.id)
            return False, None
        if not settings.notify_webhook_secret:  # never unsigned: retried as a failed delivery (about a day)
            log.error("NOTIFY_WEBHOOK_URL is set but NOTIFY_WEBHOOK_SECRET is not (or its Key Vault reference does "
                      "not resolve): notification %s is not sent unsigned", item.id)
            return False, None
        body = json.dumps(item.payload(), separators=(",", ":")).encode()
        timestamp = str(int(self.adapters.clock().timestamp()))
        headers = {"Content-Type": "application/json", "Idempotency-Key": item.id, TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: signature(settings.notify_webhook_secret, timestamp, body)}
        try:
            status = await self.adapters.webhook.post(settings.notify_webhook_url, body, headers)
        except Exception as error:
            log.info("Notification %s not delivered (%s); it is retried", item.id, type(error).__name__)
            return False, None
        if 200 <= status < 300:
            return True, None
        if status in REFUSED_FOR_GOOD:
            raise RefusedForGood(status)
        log.info("Notification %s not delivered (the receiver answered %d); it is retried", item.id, status)
        return False, status.retry_after if isinstance(status, WebhookStatus) else None
