"""Credential health against in-memory fakes, with an injected clock: healthy, expiring, expired, failing and
recovered, one notification per change and a reminder a day while it lasts, a signed webhook, the outbox that
survives a crash, and a sweep that reads only what is due."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared import wiring
from shared.errors import UpstreamError
from shared.health import HealthChecker
from shared.notify import Notifier
from shared.records import EXPIRING, HEALTHY, ConnectionRecord
from tests.fakes import TENANT, build_fakes
from tests.lifecycle_harness import APP, Harness

SECRET = "webhook-signing-key"
FORTNIGHTLY = {"rotationInterval": 14, "rotateAt": "03:00", "timeZone": "UTC"}  # a secret lives 2 x 14 + 3 days


def _harness(**env: str) -> Harness:
    return Harness(fakes=build_fakes({"NOTIFY_WEBHOOK_URL": "https://hooks.example/notify",
                                      "NOTIFY_WEBHOOK_SECRET": SECRET, **env}))


def _checker(h: Harness) -> HealthChecker:
    built = wiring.services(h.fakes.adapters)
    return HealthChecker(built.adapters, built.connections)


async def _connection(h: Harness, days: int, name: str = "c1") -> ConnectionRecord:
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=days))
    body = {"name": name, "method": "client-secret", "credentials": {
        "tenantId": TENANT, "clientId": app.client_id, "clientSecret": password.secret,
        "clientSecretKeyId": password.key_id}}
    record: ConnectionRecord = await h.api.create(APP, body)
    return record


def _events(h: Harness) -> list[str]:
    return [json.loads(body)["event"] for _, body, _ in h.fakes.webhook.received]


async def _health_over_days(h: Harness, connection_id: str, days: int) -> set[str]:
    """The health statuses a connection goes through over ``days`` of sweeps (rotation, health, delivery), every
    six hours."""
    statuses = set()
    for _ in range(days * 4):
        h.fakes.clock.advance(timedelta(hours=6))
        await h.sweep()
        await _checker(h).sweep()
        await Notifier(h.fakes.adapters).deliver()
        now = await h.record(connection_id)
        assert now is not None
        statuses.add(now.health.status)
    return statuses


async def _first_expiring(h: Harness, connection_id: str, days: int) -> datetime | None:
    """When the hourly health sweep (and it alone) first finds the connection expiring, over ``days``."""
    for _ in range(days * 24):
        h.fakes.clock.advance(timedelta(hours=1))
        await _checker(h).sweep()
        now = await h.record(connection_id)
        assert now is not None
        if now.health.status == EXPIRING:
            return h.fakes.clock.now
    return None


async def _sweep_after(h: Harness, delta: timedelta) -> None:
    h.fakes.clock.advance(delta)
    await _checker(h).sweep()


async def test_a_connection_walks_through_healthy_expiring_expired_and_recovery() -> None:
    h = _harness()
    record = await _connection(h, days=60)
    assert record.health.status == "healthy"
    assert record.health.credential_expires_at == h.fakes.clock.now + timedelta(days=60)
    await _sweep_after(h, timedelta(days=31))  # 29 days left: within the 30-day warning
    now = await h.record(record.id)
    assert now is not None
    assert now.health.status == "expiring"
    assert _events(h) == ["credential-expiring"]
    await _sweep_after(h, timedelta(hours=12))  # not due yet: nothing checked, nothing sent
    assert _events(h) == ["credential-expiring"]
    await _sweep_after(h, timedelta(hours=12, minutes=1))  # a day later, still expiring: one reminder
    assert _events(h) == ["credential-expiring", "credential-expiring-reminder"]
    await _sweep_after(h, timedelta(days=29))
    expired = await h.record(record.id)
    assert expired is not None
    assert expired.health.status == "expired"
    assert expired.status == "invalid"
    assert _events(h)[-1] == "credential-expired"
    fresh = h.fakes.world.add(record.client_id or "", "new", end=h.fakes.clock.now + timedelta(days=365))
    updated = await h.api.update(APP, record.id, {"credentials": h.credentials(record.client_id or "", fresh,
                                                                             key_id=True)})
    assert updated.health.status == "healthy"
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h)[-1] == "recovered"
    await _sweep_after(h, timedelta(days=1, minutes=1))
    assert _events(h)[-1] == "recovered", "nothing more while it stays healthy"


async def test_a_refused_credential_is_failing_and_notified_once() -> None:
    h = _harness()
    record = await _connection(h, days=365)
    app = h.fakes.world.apps[record.client_id or ""]
    app.passwords.clear()  # someone removed the secret on the application
    checked = await _checker(h).check_now(APP, record.id)
    assert checked.health.status == "failing"
    assert "AADSTS7000215" in (checked.health.message or "")
    assert checked.status == "invalid"
    await _checker(h).check_now(APP, record.id)
    assert _events(h) == ["validation-failed"]


async def test_a_receiver_s_retry_after_is_the_least_a_notice_waits_and_notices_come_back_spread() -> None:
    """(Review FC 5.) The outbox's back-off was a fixed doubling: notices that failed together came back together,
    and a receiver's ``Retry-After: 3600`` was tried again after a minute."""
    import random

    from shared.notify import retry_delay
    from shared.ports import WebhookStatus

    rng = random.Random(7)
    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.world.apps[record.client_id or ""].passwords.clear()
    h.fakes.webhook.answer = WebhookStatus(503, 3600.0)  # as HttpWebhook reads a 429's or 503's Retry-After
    await _checker(h).check_now(APP, record.id)
    [queued] = h.fakes.connections.outbox
    assert queued.attempts == 1 and queued.next_attempt_at is not None
    assert queued.next_attempt_at >= h.fakes.clock.now + timedelta(hours=1)
    assert timedelta(hours=6) <= retry_delay(1, 1e12) <= timedelta(hours=6, minutes=6)  # not taken at its word
    told_alike = {retry_delay(3, 600.0, rng) for _ in range(50)}  # one wait told to many: back apart (review Z2)
    assert len(told_alike) > 40 and all(timedelta(minutes=10) < d <= timedelta(minutes=11) for d in told_alike)

    delays = [retry_delay(3, rng=rng) for _ in range(200)]
    assert len(set(delays)) > 100  # spread, not one instant for all
    assert all(timedelta(minutes=2) <= delay <= timedelta(minutes=4) for delay in delays)


async def test_a_receiver_that_asks_for_a_wait_is_sent_nothing_more_that_pass_and_old_notices_are_given_up() -> None:
    """A receiver's 503 with a wait holds the rest of the pass (it sent another connection's notice at once); a
    notice two days old is given up whatever its count of tries (a receiver's long waits kept one for weeks: review
    Z2)."""
    from shared.notify import MAX_AGE, Notifier
    from shared.ports import WebhookStatus
    from shared.records import Notification

    h = _harness()
    h.fakes.webhook.answer = WebhookStatus(503, 600.0)
    posts = 0
    original = h.fakes.webhook.post

    async def counted(url: str, body: bytes, headers: Any) -> int:
        nonlocal posts
        posts += 1
        return await original(url, body, headers)

    h.fakes.webhook.post = counted  # type: ignore[method-assign]
    h.fakes.connections.outbox.extend(Notification("validation-failed", APP, f"c{n}", f"c{n}", "failing", "x",
                                                   h.fakes.clock.now) for n in range(3))
    await Notifier(h.fakes.adapters).deliver()
    assert posts == 1
    old = Notification("validation-failed", APP, "old", "old", "failing", "x", h.fakes.clock.now - MAX_AGE)
    h.fakes.connections.outbox[:] = [old]
    h.fakes.webhook.answer = WebhookStatus(503, None)
    await Notifier(h.fakes.adapters).deliver()
    assert h.fakes.connections.outbox == []  # given up, not queued again


async def test_the_webhook_is_signed_carries_no_secret_and_is_retried_until_it_is_taken() -> None:
    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.world.apps[record.client_id or ""].passwords.clear()
    h.fakes.webhook.answer = 503
    await _checker(h).check_now(APP, record.id)
    assert h.fakes.webhook.received == []
    queued = h.fakes.connections.outbox
    assert len(queued) == 1
    assert queued[0].attempts == 1
    # a minute's back-off, jittered between half and all of it (review FC 5)
    assert h.fakes.clock.now + timedelta(seconds=30) <= queued[0].next_attempt_at <= h.fakes.clock.now + timedelta(
        minutes=1)
    await Notifier(h.fakes.adapters).deliver()  # not due again yet
    assert h.fakes.webhook.received == []
    h.fakes.webhook.answer = 202
    h.fakes.clock.advance(timedelta(minutes=2))
    await Notifier(h.fakes.adapters).deliver()
    [(url, body, headers)] = h.fakes.webhook.received
    assert url == "https://hooks.example/notify"
    timestamp = headers["X-AppConnections-Timestamp"]
    assert int(timestamp) == int(h.fakes.clock.now.timestamp())
    signed = timestamp.encode() + b"." + body  # the timestamp is signed with the body: no replay under a new one
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert headers["X-AppConnections-Signature"] == expected
    unsigned_time = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-AppConnections-Signature"] != unsigned_time
    assert headers["Idempotency-Key"] == queued[0].id
    payload = json.loads(body)
    assert set(payload) == {"id", "event", "app", "connectionId", "name", "status", "message", "at"}
    assert payload["id"] == queued[0].id
    assert (payload["event"], payload["connectionId"], payload["status"]) == ("validation-failed", record.id,
                                                                              "failing")
    for version in h.fakes.vault.secrets[record.secret_name]:
        assert version.material["clientSecret"] not in body.decode()
    assert h.fakes.connections.outbox == []


async def test_a_crash_between_the_change_and_the_delivery_still_delivers() -> None:
    h = _harness()
    record = await _connection(h, days=10)  # expiring at once
    assert record.health.status == "expiring"
    checker = _checker(h)
    checker.notifier.deliver = _crash  # type: ignore[method-assign]  # the worker dies before it delivers
    h.fakes.clock.advance(timedelta(days=1, minutes=1))
    with pytest.raises(SystemExit):
        await checker.sweep()
    assert h.fakes.webhook.received == []
    assert [n.event for n in h.fakes.connections.outbox] == ["credential-expiring"]  # queued with the change
    await Notifier(h.fakes.adapters).deliver()  # the next worker
    assert _events(h) == ["credential-expiring"]
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring"], "delivered once"


async def _crash(**_: object) -> int:
    raise SystemExit("the worker died")


async def test_a_rotation_only_throttled_pages_nobody_at_first_and_a_lasting_one_is_reminded_daily() -> None:
    """Key Vault (or Graph) throttling a rotation through its retries leaves the credential in use working: no
    ``rotation-failed`` on its first occurrence; the back-off's daily reminder still tells one that lasts, and a
    real failure after it is told as the first."""
    from shared.errors import UpstreamThrottled

    h = _harness()
    record = await h.create()
    await h.due()
    h.fakes.world.fail_next("vault.write", UpstreamThrottled("Key Vault is throttling the service (429)."), times=500)
    await h.sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == []
    failing = await h.record(record.id)
    assert failing is not None and failing.rotation.status == "failed" and failing.rotation.failing_since is None
    for _ in range(12):  # back-off: 10 min, 20 min, ... then a day
        failing = await h.record(record.id)
        assert failing is not None
        h.fakes.clock.now = (failing.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
        await h.sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) and set(_events(h)) == {"rotation-failed-reminder"}, _events(h)
    h.fakes.world.clear_faults()
    h.fakes.world.fail_next("graph.add", times=500)
    failing = await h.record(record.id)
    assert failing is not None
    h.fakes.clock.now = (failing.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
    await h.sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h)[-1] == "rotation-failed", _events(h)


async def test_a_failed_rotation_is_notified_once_then_daily_while_it_keeps_failing() -> None:
    h = _harness()
    record = await h.create()
    await h.due()
    h.fakes.world.fail_next("graph.add", times=500)
    await h.sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["rotation-failed"]
    assert json.loads(h.fakes.webhook.received[0][1])["connectionId"] == record.id
    for _ in range(12):  # back-off: 10 min, 20 min, ... then a day
        failing = await h.record(record.id)
        assert failing is not None
        h.fakes.clock.now = (failing.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
        await h.sweep()
    await Notifier(h.fakes.adapters).deliver()
    events = _events(h)
    assert events[0] == "rotation-failed"
    assert set(events[1:]) == {"rotation-failed-reminder"}
    assert 1 <= len(events[1:]) <= 4, events


async def test_an_unreachable_entra_changes_nothing_and_checks_again_sooner() -> None:
    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.world.fail_next("probe", times=5)
    checked = await _checker(h).check_now(APP, record.id)
    assert checked.health.status == "healthy"
    assert "could not be checked" in (checked.health.message or "")
    assert checked.health.next_check_at == h.fakes.clock.now + timedelta(hours=1)
    assert _events(h) == []


async def test_a_sweep_reads_only_the_connections_that_are_due() -> None:
    h = _harness()
    for index in range(40):
        await _connection(h, days=365, name="first") if index == 0 else await h.create(f"c{index}", rotation=False)
        h.fakes.clock.advance(timedelta(minutes=30))  # checks fall due half an hour apart
    h.fakes.world.calls.clear()
    h.fakes.clock.now = min(r.health.next_check_at for r in h.fakes.connections.records.values()  # type: ignore
                            ) + timedelta(hours=2, minutes=1)
    report = await _checker(h).sweep()
    assert report.due == report.checked == 5
    assert h.fakes.world.calls.count("store.get") == 5
    assert h.fakes.world.calls.count("store.update") == 5


async def test_an_oauth_connection_is_kept_alive_by_its_check() -> None:
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness()
    oauth = await reauthorize_oauth(h)
    assert oauth.health.credential_expires_at == h.fakes.clock.now + timedelta(days=90)
    h.fakes.clock.advance(timedelta(days=60))
    used = set(h.fakes.tokens.refresh_tokens)
    checked = await _checker(h).check_now(oauth.app, oauth.id)
    assert checked.health.status == "healthy"
    assert checked.health.credential_expires_at == h.fakes.clock.now + timedelta(days=90)
    assert set(h.fakes.tokens.refresh_tokens) != used  # the refresh token was used, and rotated


async def test_a_webhook_without_its_signing_key_is_not_sent_unsigned() -> None:
    h = Harness(fakes=build_fakes({"NOTIFY_WEBHOOK_URL": "https://hooks.example/notify"}))
    record = await _connection(h, days=365)
    h.fakes.world.apps[record.client_id or ""].passwords.clear()
    await _checker(h).check_now(APP, record.id)
    assert h.fakes.webhook.received == []
    assert [n.attempts for n in h.fakes.connections.outbox] == [1]  # kept, and retried once the key is set


async def test_a_connection_whose_stored_credential_is_gone_from_the_vault_is_failing_and_notified() -> None:
    for gone in ("deleted", "disabled"):
        h = _harness()
        record = await _connection(h, days=365)
        if gone == "deleted":
            h.fakes.vault.deleted.add(record.secret_name)
        else:
            for version in h.fakes.vault.secrets[record.secret_name]:
                version.enabled = False
        checked = await _checker(h).check_now(APP, record.id)
        assert checked.health.status == "failing", gone
        assert "cannot be read from Key Vault" in (checked.health.message or "")
        assert _events(h) == ["validation-failed"]


async def test_an_oauth_connection_whose_refresh_token_is_gone_from_the_vault_needs_a_new_sign_in() -> None:
    """(Review N.) An OAuth connection whose Key Vault secret was deleted or disabled was taken as "could not be
    checked": retried every hour, reminded daily as unchecked, never failing, for up to 90 days."""
    from tests.lifecycle_harness import reauthorize_oauth

    for gone in ("deleted", "disabled"):
        h = _harness()
        oauth = await reauthorize_oauth(h)
        if gone == "deleted":
            h.fakes.vault.deleted.add(oauth.secret_name)
        else:
            for version in h.fakes.vault.secrets[oauth.secret_name]:
                version.enabled = False
        checked = await _checker(h).check_now(oauth.app, oauth.id)
        assert checked.health.status == "failing", (gone, checked.health.message)
        assert checked.status == "reauthorization-required" and "authorize it again" in (checked.health.message or "")
        assert _events(h) == ["validation-failed"]


async def test_a_connection_being_deleted_is_neither_checked_nor_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review N.) A connection left marked as being deleted (its DELETE to be sent again) was checked at every
    sweep: signed in with the credential being removed, and for OAuth a new refresh token written to Key Vault and
    to the record each time (its ETag then failing the DELETE's own write)."""
    from shared.errors import ServiceError
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness()
    oauth = await reauthorize_oauth(h)
    key = (oauth.app, oauth.id)
    h.fakes.connections.records[key] = h.fakes.connections.records[key].evolve(status="deleting")
    versions = len(h.fakes.vault.secrets[oauth.secret_name])
    calls = len(h.fakes.world.calls)
    checked = []
    for _ in range(3):
        h.fakes.clock.advance(timedelta(days=1, minutes=1))
        checked.append((await _checker(h).sweep()).checked)
    assert checked == [0, 0, 0] and len(h.fakes.vault.secrets[oauth.secret_name]) == versions
    marked = h.fakes.connections.records[key]  # still indexed, should the DELETE be undone: one entry, moved on
    assert [k for k in h.fakes.health_index.keys if oauth.id in k] == [marked.health.check_key]
    assert marked.health.next_check_at == h.fakes.clock.now + timedelta(hours=1)
    assert not [c for c in h.fakes.world.calls[calls:] if c.startswith(("probe", "token", "graph"))]
    with pytest.raises(ServiceError) as refused:
        await _checker(h).check_now(oauth.app, oauth.id)
    assert refused.value.status == 409 and "being deleted" in refused.value.detail


async def test_connections_left_being_deleted_do_not_keep_the_other_due_checks_from_being_read() -> None:
    """(Review sweeps 6.) A sweep reads what is due oldest first, at most ``limit`` (1000): the entries of
    connections left marked as being deleted (their DELETE to be sent again) were skipped without moving, so once
    there were ``limit`` of them no other due check was read again. Skipped, they now move an hour on, each kept
    once, pointed at by its record; a connection a DELETE is at work on (its lease) is not written."""
    h = _harness()
    stuck = [await _connection(h, days=365, name=f"s{n}") for n in range(3)]
    h.fakes.clock.advance(timedelta(minutes=1))
    victim = await _connection(h, days=365, name="victim")
    for record in stuck:  # three DELETEs that stopped half way (their 502 says: send it again)
        key = (record.app, record.id)
        h.fakes.connections.records[key] = h.fakes.connections.records[key].evolve(status="deleting")
    h.fakes.clock.advance(timedelta(days=1, minutes=5))  # everything due
    for _ in range(3):
        await _checker(h).sweep(limit=3)
        h.fakes.clock.advance(timedelta(minutes=5))
    checked = await h.record(victim.id)
    assert checked is not None and checked.health.checked_at is not None
    assert checked.health.checked_at > victim.health.checked_at + timedelta(days=1), "the victim was never read"
    for record in stuck:
        marked = h.fakes.connections.records[(record.app, record.id)]
        assert marked.status == "deleting" and marked.health.checked_at == record.health.checked_at  # not checked
        assert [k for k in h.fakes.health_index.keys if record.id in k] == [marked.health.check_key]
    # A DELETE at work on one (its lease held): its record is left alone, its entry stays where it is.
    key = (stuck[0].app, stuck[0].id)
    held = h.fakes.connections.records[key]
    held = held.evolve(rotation=held.rotation.evolve(lease_owner="delete:x",
                                                     lease_until=h.fakes.clock.now + timedelta(hours=2)))
    h.fakes.connections.records[key] = held
    h.fakes.clock.advance(timedelta(hours=1, minutes=5))
    await _checker(h).sweep(limit=3)
    assert h.fakes.connections.records[key] == held and held.health.check_key in h.fakes.health_index.keys


async def _left_marked_and_due() -> tuple[Harness, ConnectionRecord]:
    """A connection left marked as being deleted (its DELETE to be sent again), its health check due."""
    h = _harness()
    record = await _connection(h, days=365)
    key = (record.app, record.id)
    h.fakes.connections.records[key] = h.fakes.connections.records[key].evolve(status="deleting")
    h.fakes.clock.advance(timedelta(days=1, minutes=5))
    return h, record


@pytest.mark.parametrize("meets", ["a DELETE sent again", "its own write, its answer lost"])
async def test_an_entry_put_off_whose_write_meets_a_change_or_loses_its_answer_is_kept_once(meets: str) -> None:
    """(Review sweeps 6.) Moving a skipped entry is the index's usual sequence: whichever way its record's write
    goes, the connection keeps exactly one entry, the one its record points at."""
    from shared.errors import ConcurrentChange

    h, record = await _left_marked_and_due()
    key = (record.app, record.id)
    update = h.fakes.connections.update

    async def meeting(target, *args, **kwargs):  # type: ignore[no-untyped-def]
        h.fakes.connections.update = update  # type: ignore[method-assign]
        if meets == "a DELETE sent again":
            current = h.fakes.connections.records[key]
            await update(current.evolve(rotation=current.rotation.evolve(
                lease_owner="delete:y", lease_until=h.fakes.clock.now + timedelta(minutes=2))))
            return await update(target, *args, **kwargs)
        await update(target, *args, **kwargs)
        raise ConcurrentChange("its retry met its own write")

    h.fakes.connections.update = meeting  # type: ignore[method-assign]
    await _checker(h).sweep()
    after = h.fakes.connections.records[key]
    assert [k for k in h.fakes.health_index.keys if record.id in k] == [after.health.check_key]
    moved = after.health.check_key != record.health.check_key
    assert moved == (meets == "its own write, its answer lost")


async def test_an_entry_put_off_while_its_connection_is_deleted_leaves_no_entry_behind() -> None:
    """The put-off follows the index's rules (``due_index.reindex``), as the rotation schedule's does: a connection
    deleted while its entry moves points at neither entry, and both go (none is left for a sweep to find stale)."""
    from shared.errors import ConcurrentChange

    h, record = await _left_marked_and_due()
    key = (record.app, record.id)
    update = h.fakes.connections.update

    async def deleted_meanwhile(target, *args, **kwargs):  # type: ignore[no-untyped-def]
        h.fakes.connections.update = update  # type: ignore[method-assign]
        del h.fakes.connections.records[key]  # the DELETE sent again finished first
        raise ConcurrentChange("the record is gone")

    h.fakes.connections.update = deleted_meanwhile  # type: ignore[method-assign]
    await _checker(h).sweep()
    assert key not in h.fakes.connections.records
    assert [k for k in h.fakes.health_index.keys if record.id in k] == []


async def test_an_unchecked_credential_still_turns_expiring_then_expired_on_its_known_date() -> None:
    h = _harness()
    record = await _connection(h, days=40)
    expires = record.health.credential_expires_at
    assert expires is not None
    h.fakes.world.fail_next("probe", times=10_000)  # Entra unreachable from now on: nothing can be checked
    seen: list[tuple[str, timedelta]] = []
    for _ in range(45 * 24):
        await _sweep_after(h, timedelta(hours=1))
        now = await h.record(record.id)
        assert now is not None
        if not seen or seen[-1][0] != now.health.status:
            seen.append((now.health.status, h.fakes.clock.now - expires))
    assert [status for status, _ in seen] == ["healthy", "expiring", "expired"]
    assert -timedelta(days=30, hours=1) <= seen[1][1] <= -timedelta(days=30) + timedelta(hours=1)
    assert timedelta(0) <= seen[2][1] <= timedelta(hours=1)
    # Unchecked for a day: its unavailability is told, once (then daily reminders); the expiry by date as it comes.
    assert [e for e in _events(h) if not e.endswith("-reminder")] == [
        "health-check-unavailable", "credential-expiring", "credential-expired"]


@pytest.mark.parametrize("interval_hours", ["24", "720"])
async def test_the_warning_and_the_expiry_are_noticed_when_they_happen_not_an_interval_late(
        interval_hours: str) -> None:
    h = _harness(HEALTH_CHECK_INTERVAL_HOURS=interval_hours)
    record = await _connection(h, days=31)
    expires = record.health.credential_expires_at
    assert expires is not None and record.health.status == "healthy"
    timeline: list[tuple[str, timedelta]] = []
    for _ in range(33 * 24):  # hourly sweeps
        await _sweep_after(h, timedelta(hours=1))
        timeline += [(event, h.fakes.clock.now - expires) for event in _events(h)[len(timeline):]]
    timeline = [(event, at) for event, at in timeline if not event.endswith("-reminder")]  # daily, as designed
    assert [event for event, _ in timeline] == ["credential-expiring", "credential-expired"]
    warned, expired = timeline[0][1], timeline[1][1]
    assert -timedelta(days=30) <= warned <= -timedelta(days=30) + timedelta(hours=1)  # the hour it began
    assert timedelta(0) <= expired <= timedelta(hours=1)


async def test_a_receiver_that_is_down_ends_a_delivery_pass_and_every_alert_record_still_goes_out_once(
        caplog: pytest.LogCaptureFixture) -> None:
    h = _harness()
    for n in range(12):
        await _connection(h, days=365, name=f"c{n}")
        h.fakes.vault.deleted.add((await h.fakes.connections.get_by_name(APP, f"c{n}")).secret_name)
    h.fakes.webhook.answer = 503  # the receiver is down
    with caplog.at_level("WARNING", logger="shared.notify"):
        await _sweep_after(h, timedelta(days=1, minutes=1))  # twelve connections failing: twelve notices
    posts = [c for c in h.fakes.world.calls if c == "webhook.post"]
    assert len(posts) == 3  # three failures in a row end the pass; the rest waits, untouched by the receiver
    alerts = [r for r in caplog.records if getattr(r, "notification", None) == "true"]
    assert len(alerts) == 12  # but every alert record went out, once
    h.fakes.webhook.answer = 202
    for _ in range(3):
        await Notifier(h.fakes.adapters).deliver()
        h.fakes.clock.advance(timedelta(minutes=5))
    assert sorted(_events(h)) == ["validation-failed"] * 12
    with caplog.at_level("WARNING", logger="shared.notify"):
        alerts_after = [r for r in caplog.records if getattr(r, "notification", None) == "true"]
    assert len(alerts_after) == 12  # none twice


async def test_a_delivery_pass_starts_a_send_only_while_its_whole_timeout_fits_in_the_budget() -> None:
    from shared.notify import SEND_TIMEOUT_SECONDS

    h = _harness()
    for n in range(5):
        await _connection(h, days=365, name=f"c{n}")
        h.fakes.vault.deleted.add((await h.fakes.connections.get_by_name(APP, f"c{n}")).secret_name)
    for n in range(5):  # each check queues a notice
        record = await h.fakes.connections.get_by_name(APP, f"c{n}")
        await _checker(h).check(record)
    ticks = iter(range(100))
    sent = await Notifier(h.fakes.adapters).deliver(budget_seconds=SEND_TIMEOUT_SECONDS + 2.5,
                                                    monotonic=lambda: float(next(ticks)))
    assert sent == 2 and len(_events(h)) == 2  # started at 0, sends at 1 and 2, none whose timeout ends past it
    left = [item for item in h.fakes.connections.outbox]
    assert len(left) == 3 and all(item.next_attempt_at == h.fakes.clock.now for item in left)  # due, no back-off
    await Notifier(h.fakes.adapters).deliver()
    assert len(_events(h)) == 5


async def test_a_send_the_receiver_still_answers_at_the_end_of_a_pass_is_not_cut_short_and_sent_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review sweeps 4.) A send started near the end of a pass was cut after what was left of it (at least a
    second), though the receiver had taken it: the next pass sent it again (a Teams or Slack workflow, which does
    not read the Idempotency-Key, posts it twice). A send now starts only when its whole timeout fits."""
    import asyncio

    from shared import notify

    monkeypatch.setattr(notify, "SEND_TIMEOUT_SECONDS", 1.8, raising=False)  # (15 s in Azure)
    h = _harness()
    for n in range(2):  # two failing connections: two notices queued
        await _connection(h, days=365, name=f"c{n}")
        h.fakes.vault.deleted.add((await h.fakes.connections.get_by_name(APP, f"c{n}")).secret_name)
        await _checker(h).check(await h.fakes.connections.get_by_name(APP, f"c{n}"))
    received: list[str] = []

    async def slow_receiver(url: str, body: bytes, headers: object) -> int:
        received.append(json.loads(body)["id"])  # taken as soon as it arrives
        await asyncio.sleep(1.2)  # ... and answered a little later (a workflow answering 202 after 1.2 s)
        return 202

    h.fakes.webhook.post = slow_receiver  # type: ignore[method-assign]
    assert await Notifier(h.fakes.adapters).deliver(budget_seconds=2.0) == 1  # the second one would not fit
    [waiting] = h.fakes.connections.outbox
    assert waiting.attempts == 1 and waiting.next_attempt_at == h.fakes.clock.now  # no failure: due at once
    assert await Notifier(h.fakes.adapters).deliver(budget_seconds=2.0) == 1
    assert len(received) == 2 and len(set(received)) == 2 and not h.fakes.connections.outbox


async def test_a_failed_read_of_one_connection_ends_its_check_not_the_sweep() -> None:
    h = _harness()
    for n in range(4):
        await _connection(h, days=365, name=f"c{n}")
        h.fakes.vault.deleted.add((await h.fakes.connections.get_by_name(APP, f"c{n}")).secret_name)
    h.fakes.world.fail_next("store.get")  # Table Storage fails one read (a 503 its retries did not fix)
    h.fakes.clock.advance(timedelta(days=1, minutes=1))
    report = await _checker(h).sweep()
    assert (report.due, report.checked) == (4, 3)
    assert sorted(_events(h)) == ["validation-failed"] * 3  # the others were checked and notified
    await _sweep_after(h, timedelta(hours=1))  # the one left is still due, and checked by the next sweep
    assert sorted(_events(h)) == ["validation-failed"] * 4


async def test_a_rotation_of_an_expiring_credential_makes_it_healthy_at_once_and_says_it_recovered() -> None:
    from tests.lifecycle_harness import ROTATION

    h = _harness()
    record = await _connection(h, days=10)
    assert record.health.status == "expiring"
    await _sweep_after(h, timedelta(days=1, minutes=1))
    assert _events(h) == ["credential-expiring"]
    rotated = await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert rotated.rotation.status == "succeeded"
    assert rotated.health.status == "healthy" and rotated.health.checked_at == h.fakes.clock.now
    assert rotated.health.credential_expires_at is not None
    assert rotated.health.credential_expires_at - h.fakes.clock.now > timedelta(days=30)
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring", "recovered"]  # queued with the rotation's own write
    await _sweep_after(h, timedelta(days=1, minutes=1))
    assert _events(h) == ["credential-expiring", "recovered"]  # once


async def test_a_connection_is_checked_every_interval_when_the_sweeps_pick_it_up_a_little_late() -> None:
    h = _harness()
    record = await _connection(h, days=365)
    due = record.health.next_check_at
    assert due is not None
    checks = []
    due_entries = h.fakes.health_index.due

    async def then_a_while(*args, **kwargs):  # type: ignore[no-untyped-def]  # the checks before it take a while
        entries = await due_entries(*args, **kwargs)
        h.fakes.clock.advance(timedelta(seconds=5))
        return entries

    h.fakes.health_index.due = then_a_while  # type: ignore[method-assign]
    h.fakes.clock.now = due.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for _ in range(72):  # three days of hourly sweeps, each a few seconds after the hour
        h.fakes.clock.advance(timedelta(hours=1))
        moment = h.fakes.clock.now
        h.fakes.clock.advance(timedelta(seconds=7))
        await _checker(h).sweep()
        now = await h.record(record.id)
        assert now is not None
        if now.health.checked_at is not None and (not checks or now.health.checked_at != checks[-1]):
            checks.append(now.health.checked_at)
        h.fakes.clock.now = moment
    gaps = {later - earlier for earlier, later in itertools.pairwise(checks)}
    assert gaps == {timedelta(hours=24)}, gaps  # not 25 hours


async def test_two_delivery_passes_at_once_send_a_notice_once() -> None:
    import asyncio

    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.world.apps[record.client_id or ""].passwords.clear()
    h.fakes.webhook.answer = 503
    await _checker(h).check_now(APP, record.id)  # queued, its first send failed
    h.fakes.webhook.answer = 202
    h.fakes.clock.advance(timedelta(minutes=2))
    stale = await h.fakes.connections.pending(("azure-key-vault",))  # a pass's copy, read now
    release = asyncio.Event()
    post = h.fakes.webhook.post

    async def slow(url: str, body: bytes, headers: dict[str, str]) -> int:
        await release.wait()  # the receiver takes its time: the other pass runs meanwhile
        return await post(url, body, headers)

    h.fakes.webhook.post = slow  # type: ignore[method-assign]
    first = asyncio.create_task(Notifier(h.fakes.adapters).deliver())
    await asyncio.sleep(0)
    # the notice is taken: not due for another pass (which would wait on the receiver, too, if it sent it)
    assert await asyncio.wait_for(Notifier(h.fakes.adapters).deliver(), timeout=5) == 0
    release.set()
    assert await first == 1
    assert len(h.fakes.webhook.received) == 1
    assert await h.fakes.connections.claim(stale[0], h.fakes.clock.now) is None  # a copy read before: refused
    assert h.fakes.connections.outbox == []


async def test_notices_wait_while_the_webhook_url_s_key_vault_reference_does_not_resolve(caplog) -> None:
    h = _harness(NOTIFY_WEBHOOK_URL="@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/notify-webhook-url/)")
    record = await _connection(h, days=365)
    h.fakes.world.apps[record.client_id or ""].passwords.clear()
    await _checker(h).check_now(APP, record.id)
    assert h.fakes.webhook.received == []
    [queued] = h.fakes.connections.outbox  # kept, not dropped as if no webhook were configured
    assert queued.attempts == 1
    assert "does not resolve" in caplog.text


async def test_a_check_whose_write_landed_with_its_answer_lost_keeps_the_index_entry_its_record_points_at() -> None:
    """Found by a review: a check whose write landed with its answer lost removed the index entry it had put (the
    one the stored record now points at) before reading the record back; when that read failed too, the
    connection was never checked again. The record is read back first."""
    from shared.errors import UpstreamError
    from shared.health import HealthChecker
    from tests.lifecycle_harness import fails_once, own_etag

    h = Harness()
    record = await h.create(rotation=False)
    checker = HealthChecker(h.fakes.adapters, h.api)
    h.fakes.clock.advance(timedelta(days=2))  # its check is due
    fails_once(h, "update", applied=True, error=own_etag())
    fails_once(h, "get", 2, error=UpstreamError("Table Storage failed (injected)."))  # 1: the check's read
    await checker.sweep()
    stored = await h.record(record.id)
    assert stored is not None and stored.health.checked_at == h.fakes.clock.now
    assert stored.health.check_key in h.fakes.health_index.keys


async def test_the_health_runner_audits_each_check_and_the_refresh_token_it_stores_before_it_runs() -> None:
    """Found by a review: the health sweep signed in with each connection's credential, changed its status and, for
    an OAuth connection, stored the refresh token Entra rotated to in Key Vault, and recorded none of it. Each
    check is now audited as the health runner, before (fail closed) and after, and so is the token stored."""
    from shared.errors import UpstreamError
    from tests.lifecycle_harness import reauthorize_oauth

    h = Harness()
    record = await h.create(rotation=False)
    oauth = await reauthorize_oauth(h)
    checker = HealthChecker(h.fakes.adapters, h.api)
    seen = len(h.fakes.audit.records)
    h.fakes.clock.advance(timedelta(days=2))
    await checker.sweep()
    records = h.fakes.audit.records[seen:]
    checks = [(r.connection_id, r.outcome) for r in records if r.action == "connection.check-health"]
    assert sorted(checks) == sorted([(record.id, "started"), (record.id, "healthy"), (oauth.id, "started"),
                                     (oauth.id, "healthy")])
    assert {r.actor.name for r in records} == {"health runner"}
    stored = [r.outcome for r in records if r.action == "connection.store-refresh-token"]
    assert stored == ["started", "succeeded"]
    assert (await h.record(oauth.id) or oauth).secret_version != oauth.secret_version
    # The audit log down: nothing is checked (the entries stay due), and nothing changes.
    h.fakes.clock.advance(timedelta(days=2))
    before = {r.id: r for r in h.fakes.connections.records.values()}
    h.fakes.world.fail_next("audit.append", UpstreamError("Table Storage failed (injected)."), times=10)
    report = await checker.sweep()
    assert report.checked == 0 and {r.id: r for r in h.fakes.connections.records.values()} == before


@pytest.fixture
def with_the_real_directory(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Certificate connections whose certificate ends 30 days after the fakes' clock starts (2026-01-05): expired on
    this machine's clock, which the real Directory (shared.azure.directory) reads; it refuses such a certificate
    itself, before any request (the fakes' Directory answers Entra's AADSTS700027 instead)."""
    import dataclasses
    import functools

    from shared.azure.clients import AzureClients
    from shared.azure.directory import AzureDirectory
    from tests import fakes

    monkeypatch.setattr(fakes, "make_certificate", functools.partial(fakes.make_certificate, days=30))

    def real(h: Harness) -> object:
        return wiring.services(dataclasses.replace(
            h.fakes.adapters, directory=AzureDirectory(AzureClients(h.fakes.adapters.settings))))

    return real


async def test_a_stored_certificate_that_expired_makes_the_connection_invalid_as_an_expired_secret_does(
        with_the_real_directory) -> None:  # type: ignore[no-untyped-def]
    """(Review E.) The real Directory's refusal of an expired certificate was a 400 about the request's
    /credentials/certificateBody: the health check took it for "Entra could not be reached" (the connection stayed
    active, checked again every hour for ever) and POST .../validate answered it, the connection left active."""
    from shared.errors import CredentialRejected

    h = Harness(method="certificate")
    record = await h.create("expired-cert", rotation=False)
    services = with_the_real_directory(h)
    checked = await HealthChecker(services.adapters, services.connections).check(record)
    assert checked.status == "invalid" and "could not be checked" not in (checked.health.message or "")
    assert "expired" in (checked.status_message or "")
    fresh = await h.create("expired-cert-2", rotation=False)
    with pytest.raises(CredentialRejected):
        await services.connections.validate(APP, fresh.id)
    stored = await h.record(fresh.id)
    assert stored is not None and stored.status == "invalid"


async def test_a_backlog_of_undeliverable_notices_does_not_withhold_the_alert_record_of_a_new_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """(Review I.) A pass read the 100 oldest due notices: while the receiver was down and a backlog of notices
    already tried was due again (a storm of failures), a new notice was never read, and its alert record (what the
    alert rules mail) was withheld for as long as the backlog lasted: days. Never-tried notices are read first."""
    from shared.records import Notification

    h = _harness()
    h.fakes.webhook.answer = 503  # the receiver is down
    h.fakes.connections.outbox.extend(  # a storm: 150 connections refused at once (a consent withdrawn)
        Notification("validation-failed", APP, f"c{n}", f"c{n}", "failing", "AADSTS7000215", h.fakes.clock.now)
        for n in range(150))
    for _ in range(12 * 3):  # three hours of passes, one each 5 minutes
        h.fakes.clock.advance(timedelta(minutes=5))
        await Notifier(h.fakes.adapters).deliver()
    new = Notification("credential-expired", APP, "prod", "prod", "expired", None, h.fakes.clock.now)
    h.fakes.connections.outbox.append(new)
    caplog.clear()
    with caplog.at_level("WARNING", logger="shared.notify"):
        h.fakes.clock.advance(timedelta(minutes=5))
        await Notifier(h.fakes.adapters).deliver()
    assert [r for r in caplog.records if getattr(r, "notificationId", None) == new.id]


async def test_a_credential_rotated_on_schedule_is_not_reported_expiring() -> None:
    """(Review I.) A secret rotated every 14 days lives 2 x 14 + 3 days: with the 30-day warning it was 'expiring' a
    day after every rotation, 13 days before the schedule replaced it: an alert mail, daily reminders and a
    'recovered' every cycle, for a connection that needs nobody. What the service renews in time is not expiring."""
    h = _harness()
    body = {"name": "rotated", "method": "client-secret", "credentials": h.new_credential(
        h.fakes.world.application().client_id), "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY}
    record = await h.api.create(APP, body)
    statuses = await _health_over_days(h, record.id, 45)
    assert len([e for e in h.fakes.history.of(record.id) if e.outcome == "succeeded"]) >= 3
    assert statuses == {"healthy"} and _events(h) == []


async def test_a_credential_whose_rotation_fails_or_is_off_is_warned_of_as_it_nears_its_end() -> None:
    h = _harness()
    record = await _connection(h, days=20, name="manual")  # rotation off: its end is the user's to act on
    assert record.health.status == "expiring"
    h2 = _harness()
    body = {"name": "failing", "method": "client-secret", "credentials": h2.new_credential(
        h2.fakes.world.application().client_id), "isAutoRotationEnabled": True,
        "rotation": FORTNIGHTLY}
    rotated = await h2.api.create(APP, body)
    h2.fakes.world.fail_next("graph.add", times=10_000)  # every later rotation fails: nothing will replace it
    for _ in range(20 * 4):
        h2.fakes.clock.advance(timedelta(hours=6))
        await h2.sweep()
        await _checker(h2).sweep()
    now = await h2.record(rotated.id)
    assert now is not None and now.rotation.failures > 0 and now.health.status == "expiring"


async def test_an_oauth_connection_kept_alive_by_its_checks_is_not_expiring_with_a_long_warning() -> None:
    """(Review I.) Each check uses the refresh token, so its end is always 90 days away: with EXPIRY_WARNING_DAYS of
    90 or more, every OAuth connection was 'expiring' after every check, for ever."""
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness(EXPIRY_WARNING_DAYS="90")
    oauth = await reauthorize_oauth(h)
    h.fakes.clock.advance(timedelta(days=1, minutes=1))
    checked = await _checker(h).check_now(oauth.app, oauth.id)
    assert checked.health.status == "healthy", (checked.health.status, _events(h))


async def test_a_failing_credential_that_works_again_within_its_warning_says_it_recovered() -> None:
    """(Review I.) Failing, then accepted again with 20 days left, it went failing -> expiring with a
    'credential-expiring' only: the failure's alert (which does not resolve itself) was never answered."""
    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=20))
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.credentials(app.client_id, password, key_id=True)})
    assert record.health.status == "expiring"
    del h.fakes.world.apps[app.client_id].passwords[password.key_id]  # refused
    assert (await _checker(h).check_now(APP, record.id)).health.status == "failing"
    h.fakes.world.apps[app.client_id].passwords[password.key_id] = password  # accepted again
    works = await _checker(h).check_now(APP, record.id)
    assert works.health.status == "expiring" and works.status == "active"
    await Notifier(h.fakes.adapters).deliver()
    events = _events(h)
    assert events[events.index("validation-failed") + 1:] == ["recovered", "credential-expiring"], events


async def test_a_failing_credential_gets_a_reminder_every_day_whatever_minute_the_sweep_reaches_it() -> None:
    """(Review I.) A reminder needed 24 hours since the last notice, stamped with the minute the sweep reached the
    check: a sweep a few minutes sooner into its run than the day before found 23 h 55 min, and skipped that day."""
    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=365))
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.credentials(app.client_id, password, key_id=True)})
    del h.fakes.world.apps[app.client_id].passwords[password.key_id]  # refused from now on
    for late in (timedelta(minutes=10), timedelta(minutes=5), timedelta(minutes=9), timedelta(minutes=2)):
        current = await h.record(record.id)
        assert current is not None and current.health.next_check_at is not None
        h.fakes.clock.now = current.health.next_check_at + late  # the sweep reaches this entry `late` into its run
        await _checker(h).sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["validation-failed"] + ["validation-failed-reminder"] * 3, _events(h)


async def test_re_authorizing_a_failing_oauth_connection_makes_it_healthy_and_says_it_recovered() -> None:
    """(Review I.) Signing in again made the status active but left the health 'failing', with Entra's refusal as
    its message, and queued no 'recovered', until the next daily check: a PATCH of credentials, a rotation and a
    migration each set the health of the credential that just worked."""
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness()
    oauth = await reauthorize_oauth(h)
    h.fakes.tokens.refresh_tokens.clear()  # consent revoked: the refresh token no longer works
    failing = await _checker(h).check_now(oauth.app, oauth.id)
    assert failing.status == "reauthorization-required" and failing.health.status == "failing"
    again = await reauthorize_oauth(h)
    assert again.id == oauth.id and again.status == "active"
    await Notifier(h.fakes.adapters).deliver()
    assert (again.health.status, again.health.message) == ("healthy", None)
    assert _events(h) == ["validation-failed", "recovered"]
    assert again.health.check_key == failing.health.check_key  # its next check stays where it was


async def test_a_connection_created_within_its_warning_is_notified_at_the_next_sweep_not_a_day_later() -> None:
    """(Review I.) Created expiring, its first check (the one that notifies) was a whole interval later."""
    h = _harness()
    record = await _connection(h, days=20)
    assert record.health.status == "expiring" and record.health.next_check_at == h.fakes.clock.now
    await _sweep_after(h, timedelta(hours=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring"]


async def test_a_check_that_could_not_be_made_is_audited_as_not_checked_not_as_the_health_it_kept() -> None:
    """(Review I.) An unreachable Entra was audited with the stored status ("healthy"), as if checked."""
    h = Harness()
    record = await h.create(rotation=False)
    checker = HealthChecker(h.fakes.adapters, h.api)
    seen = len(h.fakes.audit.records)
    h.fakes.clock.advance(timedelta(days=2))
    h.fakes.world.fail_next("probe", times=5)
    await checker.sweep()
    [after] = [r for r in h.fakes.audit.records[seen:]
               if r.action == "connection.check-health" and r.outcome != "started"]
    assert (after.connection_id, after.outcome) == (record.id, "not-checked")
    assert "could not be checked" in (after.detail or "")


def test_recovered_is_queued_before_the_credential_expiring_it_precedes() -> None:
    """(Review J.) Both had the same time: the outbox (ordered by time, then a random id) and a receiver sorting by
    ``at`` got them either way round about half the time."""
    from datetime import UTC, datetime

    from shared.notify import health_notices
    from shared.records import FAILING, HealthState
    from shared.store.tables import outbox_key

    now = datetime(2027, 1, 1, 3, 0, 12, 345000, tzinfo=UTC)
    record = ConnectionRecord(app=APP, id="c1", name="prod", method="client-secret", tenant_id="t", client_id="c",
                              created_at=now, updated_at=now, secret_name="s", secret_version="v1")
    health = HealthState(status=EXPIRING, notified_status=FAILING, notified_at=now - timedelta(days=1),
                         credential_expires_at=now + timedelta(days=20))
    for _ in range(20):
        notices, _ = health_notices(record, health, now)
        assert [n.event for n in sorted(notices, key=outbox_key)] == ["recovered", "credential-expiring"]
        assert notices[0].at < notices[1].at


@pytest.mark.parametrize("gap", [timedelta(minutes=10), timedelta(seconds=10)],
                         ids=["the failure due again", "the failure still backing off"])
async def test_a_failure_the_receiver_refused_reaches_it_before_the_recovery_that_followed(gap: timedelta) -> None:
    """(Review J.) Reading new notices first sent 'recovered' before the 'validation-failed' the receiver had
    refused: the channel ended on 'failed' for a connection that works. (Oldest first alone did the same whenever
    the failure was still backing off.) A connection's notices now wait behind an older one of it."""
    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=365))
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.credentials(app.client_id, password, key_id=True)})
    h.fakes.webhook.answer = 503  # the receiver is down
    del h.fakes.world.apps[app.client_id].passwords[password.key_id]  # refused
    assert (await _checker(h).check_now(APP, record.id)).health.status == "failing"  # sent once: refused
    h.fakes.clock.advance(gap)
    h.fakes.world.apps[app.client_id].passwords[password.key_id] = password  # accepted again
    h.fakes.webhook.answer = 202  # the receiver is back
    assert (await _checker(h).check_now(APP, record.id)).health.status == "healthy"
    for _ in range(3):
        await Notifier(h.fakes.adapters).deliver()
        h.fakes.clock.advance(timedelta(minutes=2))
    assert _events(h) == ["validation-failed", "recovered"]




async def _moved_off_an_application_that_refuses_its_clean_up(h: Harness) -> ConnectionRecord:
    """A connection rotated fortnightly, rotated once (the service manages its application), then given the
    credentials of another application while the first refuses its clean-up (which keeps failing)."""
    first = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "rotated", "method": "client-secret",
                                      "credentials": h.new_credential(first.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()  # its first rotation: the service manages the application now
    managed = await h.record(record.id)
    assert managed is not None and managed.rotation.managed
    h.fakes.world.apps[first.client_id].may_manage_itself = False  # the old application refuses its clean-up
    _, credentials = h.new_application()
    await h.api.update(APP, record.id, {"credentials": credentials})
    return record


async def test_a_rotated_credential_whose_previous_application_refuses_its_clean_up_is_not_reported_expiring(
) -> None:
    """(Review J.) The renewal counted ``rotation.failures``, which a failing clean-up of the application a change
    left counts too: a rotation that succeeded every cycle was 'expiring', then 'recovered', each cycle."""
    h = _harness()
    record = await _moved_off_an_application_that_refuses_its_clean_up(h)
    statuses = await _health_over_days(h, record.id, 45)
    now = await h.record(record.id)
    assert now is not None and now.rotation.retire_version is not None  # the clean-up still fails
    assert len([e for e in h.fakes.history.of(record.id) if e.outcome == "succeeded"]) >= 3  # rotation works
    assert statuses == {HEALTHY}, (statuses, _events(h))


async def test_a_rotation_that_fails_after_failed_clean_ups_of_an_application_left_behind_is_notified() -> None:
    """(Session 18.) The notice of a rotation's first failure was sent when ``failures`` was 1: clean-ups of the
    application a change left, failing before it, count there too, so the first failed rotation went untold."""
    h = _harness()
    record = await _moved_off_an_application_that_refuses_its_clean_up(h)
    h.fakes.world.fail_next("graph.add", times=500)  # and the next rotation fails
    await _health_over_days(h, record.id, 20)
    failing = await h.record(record.id)
    assert failing is not None and failing.rotation.status == "failed"
    assert failing.rotation.retire_version is not None  # the clean-up still fails too
    told = [e for e in _events(h) if e.startswith("rotation-failed")]
    assert told[:1] == ["rotation-failed"] and set(told[1:]) <= {"rotation-failed-reminder"}, _events(h)


async def test_a_rotation_turned_off_and_on_again_tells_its_next_failure_as_a_first() -> None:
    h = _harness()
    record = await h.create()
    await h.due()
    h.fakes.world.fail_next("graph.add", times=500)
    await h.sweep()
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.failing_since == h.fakes.clock.now
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    off = await h.record(record.id)
    assert off is not None and off.rotation.failing_since is None
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": True})
    await h.due()
    await h.sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["rotation-failed", "rotation-failed"]


async def test_a_stuck_rotation_is_warned_of_when_its_renewal_stops_counting() -> None:
    """(Review J.) A renewal a day overdue no longer counts, but no check came at that moment: with a weekly check
    and the rotation sweep stopped, the credential was warned of a week late."""
    from shared.expiry import RENEWAL_OVERDUE

    h = _harness(HEALTH_CHECK_INTERVAL_HOURS="168")
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "stuck", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    due = record.rotation.next_at
    assert record.rotation.status == "succeeded" and due is not None  # rotated at once; next in 14 days
    warned = await _first_expiring(h, record.id, days=40)  # the rotation sweep has stopped
    assert warned is not None and warned <= due + RENEWAL_OVERDUE + timedelta(hours=2), (due, warned)


async def test_changing_the_credentials_and_turning_rotation_off_at_once_warns_of_a_credential_near_its_end(
) -> None:
    """(Review J.) New credentials with 20 days left and rotation turned off in one PATCH were 'healthy' (the renewal
    was taken from the record before the change) until the next check."""
    h = _harness()
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()
    short = h.fakes.world.add(app.client_id, "short", end=h.fakes.clock.now + timedelta(days=20))
    updated = await h.api.update(APP, record.id, {"credentials": h.credentials(app.client_id, short, key_id=True),
                                                  "isAutoRotationEnabled": False})
    assert not updated.rotation.enabled
    assert updated.health.status == EXPIRING, updated.health


async def test_an_oauth_connection_whose_check_could_not_reach_entra_once_is_not_expiring_with_a_long_warning(
) -> None:
    """(Review J.) With a warning of 90 days, one check that could not reach Entra made an OAuth connection
    'expiring' (its last refresh no longer counted), and the next 'recovered'."""
    from shared.errors import UpstreamError
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness(EXPIRY_WARNING_DAYS="90")
    oauth = await reauthorize_oauth(h)
    h.fakes.clock.advance(timedelta(days=1, minutes=1))
    checker = _checker(h)
    original = checker.connections.oauth_tokens.refresh_now

    async def unreachable(app, record):  # type: ignore[no-untyped-def]
        raise UpstreamError("Entra ID could not be reached.")

    checker.connections.oauth_tokens.refresh_now = unreachable  # type: ignore[method-assign]
    blip = await checker.check_now(oauth.app, oauth.id)
    checker.connections.oauth_tokens.refresh_now = original  # type: ignore[method-assign]
    assert blip.health.status == HEALTHY, (blip.health, _events(h))


async def test_a_failing_rotation_s_retry_under_way_does_not_flap_expiring_recovered_expiring() -> None:
    """(Review K.) A retry under way of a failed rotation ('rotating', its failures still counted) was taken for a
    renewal: a check during it said healthy ('recovered'), the next one 'credential-expiring' again."""
    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=20))
    h.fakes.world.fail_next("graph.add", times=1000)  # every rotation attempt fails (Graph refuses the add)
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.credentials(app.client_id, password, key_id=True),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.status == "failed"
    checker = _checker(h)
    assert (await checker.check_now(APP, record.id)).health.status == EXPIRING
    await h.due()  # the retry is due
    seen: list[str] = []

    async def check_meanwhile(name: str, current) -> None:  # type: ignore[no-untyped-def]
        if name == "before-add-password" and not seen:
            seen.append((await checker.check_now(APP, record.id)).health.status)

    await h.sweep(check_meanwhile)
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "failed" and after.rotation.failures >= 2
    h.fakes.clock.advance(timedelta(minutes=5))
    await checker.check_now(APP, record.id)
    await Notifier(h.fakes.adapters).deliver()
    assert seen == [EXPIRING], (seen, _events(h))
    assert "recovered" not in _events(h), _events(h)


async def test_created_expiring_with_a_first_rotation_that_fails_is_warned_at_the_next_sweep() -> None:
    """(Review K.) Created within its warning with rotation on, it was healthy (the rotation the request starts
    renews it) and checked a day later; when that rotation failed, nothing renewed it, unwarned all day."""
    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=20))
    h.fakes.world.fail_next("graph.add", times=1000)  # the rotation cannot add a secret
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.credentials(app.client_id, password, key_id=True),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    now = await h.record(record.id)
    assert now is not None and now.rotation.status == "failed"
    h.fakes.clock.advance(timedelta(hours=1))
    await _checker(h).sweep()
    after = await h.record(record.id)
    assert after is not None and after.health.status == EXPIRING, (after.health, after.rotation.status)


async def test_a_backlog_the_receiver_refuses_does_not_hold_other_connections_notices_for_days() -> None:
    """(Review K.) New notices wait while notices to try again fill a pass's read (a connection's order is kept):
    a backlog the receiver refuses for good (400) held every other connection's notices for a day each. A notice
    refused for good is given up at once. limit=2 stands for the default 100."""
    import json

    from shared.records import Notification

    h = _harness()
    f = h.fakes
    refused = {"a"}
    sent: list[str] = []

    async def post(url, body, headers):  # type: ignore[no-untyped-def]
        d = json.loads(body)
        if d["connectionId"] in refused:
            return 400  # this receiver refuses this connection's notices (a payload it cannot take)
        sent.append(d["connectionId"])
        return 202

    f.webhook.post = post  # type: ignore[method-assign]
    notifier = Notifier(f.adapters)
    for _ in range(2):
        f.connections.outbox.append(Notification("credential-expiring", APP, "a", "a", "expiring", None,
                                                 f.clock.now))
        f.clock.advance(timedelta(seconds=1))
        await notifier.deliver(limit=2)
    f.connections.outbox.append(Notification("credential-expiring", APP, "b", "b", "expiring", None, f.clock.now))
    waited = timedelta(0)
    while "b" not in sent and waited < timedelta(days=3):
        f.clock.advance(timedelta(minutes=10))
        waited += timedelta(minutes=10)
        await notifier.deliver(limit=2)
    assert waited <= timedelta(hours=2), waited


async def test_turning_rotation_off_warns_of_a_credential_near_its_end_at_once_and_on_again_recovers() -> None:
    """(Review K, left alone in session 16.) A PATCH that only turned rotation off left a credential 20 days from
    its end 'healthy' (its renewal was counted) until its next check, up to a check interval later; turning it on
    again left it 'expiring' alike."""
    from tests.lifecycle_harness import ROTATION

    h = _harness()
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.clock.advance(timedelta(days=12))  # the secret the rotation made lives 31 days: 19 are left
    await h.sweep()
    now = await h.record(record.id)
    assert now is not None and now.health.status == HEALTHY and now.rotation.enabled
    off = await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    assert off.health.status == EXPIRING, off.health
    assert off.health.next_check_at == now.health.next_check_at  # the next check stays where it was indexed
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring"]
    on = await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert on.health.status == HEALTHY, on.health
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring", "recovered"]


async def test_turning_rotation_off_leaves_a_failing_or_unchecked_health_as_it_is() -> None:
    h = _harness()
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    stored = await h.record(record.id)
    assert stored is not None
    failing = stored.evolve(health=stored.health.evolve(status="failing", message="AADSTS7000215",
                                                        notified_status="failing", notified_at=h.fakes.clock.now))
    await h.fakes.connections.update(failing)
    off = await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    assert (off.health.status, off.health.message) == ("failing", "AADSTS7000215")
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == []


async def test_a_rescheduled_rotation_is_checked_when_its_renewal_would_be_overdue_not_a_week_later() -> None:
    """With weekly checks, a rotation rescheduled to come in two days and then not coming (the rotation sweep has
    stopped) was warned of at the next weekly check; the check now comes when the renewal is a day overdue."""
    from shared.expiry import RENEWAL_OVERDUE

    h = _harness(HEALTH_CHECK_INTERVAL_HOURS="168")
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.clock.advance(timedelta(days=1))
    sooner = await h.api.update(APP, record.id, {"rotation": {**FORTNIGHTLY, "rotationInterval": 3}})
    due = sooner.rotation.next_at
    assert sooner.health.status == HEALTHY and due is not None and due < h.fakes.clock.now + timedelta(days=3)
    assert sooner.health.next_check_at == due + RENEWAL_OVERDUE
    assert sooner.health.check_key != record.health.check_key
    assert [e.key for e in await h.fakes.health_index.due(due + timedelta(days=7), limit=10)] == [
        sooner.health.check_key]  # one entry: the old one is gone
    warned = await _first_expiring(h, record.id, days=8)  # the rotation sweep has stopped
    assert warned is not None and warned <= due + RENEWAL_OVERDUE + timedelta(hours=1), (due, warned)


async def test_a_send_that_hangs_is_cut_at_its_own_timeout_and_the_pass_ends_within_its_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Left alone in session 16.) POST .../health delivers within its budget before it answers, but a send that hung
    was waited for up to the webhook's own timeout past it. (Review sweeps 4.) Cutting it at the pass's end sent
    again what the receiver may have taken: a send now starts only when its whole timeout fits in the pass, which
    then ends within its budget; one that hangs is cut at its own timeout, and tried again later."""
    import asyncio
    import time

    from shared import notify

    monkeypatch.setattr(notify, "SEND_TIMEOUT_SECONDS", 0.2, raising=False)  # (15 s in Azure)
    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.vault.deleted.add(record.secret_name)
    await _checker(h).check(record)  # queues a notice

    async def hangs(url: str, body: bytes, headers: object) -> int:
        await asyncio.sleep(30)
        return 202

    h.fakes.webhook.post = hangs  # type: ignore[method-assign]
    started = time.monotonic()
    sent = await Notifier(h.fakes.adapters).deliver(budget_seconds=1.0)
    assert sent == 0 and time.monotonic() - started < 1.0
    [queued] = h.fakes.connections.outbox
    assert queued.attempts == 1 and queued.next_attempt_at is not None  # a failed try: tried again later
    assert queued.next_attempt_at > h.fakes.clock.now


@pytest.mark.parametrize("interval_hours", [24, 48])
async def test_a_check_that_cannot_run_for_a_day_is_notified_then_reminded_daily_then_recovered(
        interval_hours: int) -> None:
    """(Left alone in session 16.) When Entra, Graph or Key Vault stayed out of reach for a connection, its check was
    retried hourly and audited 'not-checked', but nobody was told that its health was no longer known. (Review
    sweeps 2.) The day is counted from the first check that could not run, whatever the interval: it was counted
    from the last check that ran, already a day old (or two) when the daily check first failed, so the first
    failure paged at once."""
    h = _harness(HEALTH_CHECK_INTERVAL_HOURS=str(interval_hours))
    record = await _connection(h, days=365)
    await _sweep_after(h, timedelta(hours=interval_hours - 1))  # not due yet: not checked
    h.fakes.world.fail_next("probe", times=10**6)  # Entra out of reach for this service, from now on
    await _sweep_after(h, timedelta(hours=1))  # its check is due, and cannot run
    first = await h.record(record.id)
    assert first is not None and "could not be checked" in (first.health.message or "")
    for _ in range(23):  # retried hourly: 23 h 23 min after the first that could not run
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == []  # less than a day unchecked: retried hourly, nobody paged
    await _sweep_after(h, timedelta(hours=1, minutes=1))  # 24 h 24 min
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["health-check-unavailable"]
    now = await h.record(record.id)
    assert now is not None and now.health.status == HEALTHY and "could not be checked" in (now.health.message or "")
    for _ in range(24):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["health-check-unavailable", "health-check-unavailable-reminder"]
    h.fakes.world.clear_faults()
    await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["health-check-unavailable", "health-check-unavailable-reminder", "recovered"]
    recovered = await h.record(record.id)
    assert recovered is not None and recovered.health.unchecked_since is None


@pytest.mark.parametrize("interval_hours", [24, 48])
async def test_a_check_that_cannot_run_once_at_its_due_time_and_runs_at_its_retry_tells_nothing(
        interval_hours: int) -> None:
    """(Review sweeps 2.) With the default daily check, one transient failure at the check sent
    'health-check-unavailable' at once, and 'recovered' an hour later."""
    h = _harness(HEALTH_CHECK_INTERVAL_HOURS=str(interval_hours))
    record = await _connection(h, days=365)
    for hour in range(1, interval_hours + 4):  # hourly sweeps, each followed by its delivery
        if hour == interval_hours:
            h.fakes.world.fail_next("probe", times=1)  # one transient failure, at the check that is due
        await _sweep_after(h, timedelta(hours=1))
        await Notifier(h.fakes.adapters).deliver()
        if hour == interval_hours:
            failed = await h.record(record.id)
            assert failed is not None and "could not be checked" in (failed.health.message or "")
    after = await h.record(record.id)
    assert after is not None and after.health.message is None and after.health.checked_at is not None
    assert after.health.checked_at > record.health.checked_at + timedelta(hours=interval_hours)  # the retry ran
    assert _events(h) == []


async def test_a_check_that_runs_between_two_that_cannot_starts_the_day_of_not_checking_again() -> None:
    """(Review sweeps 2.) The first check that could not run is recorded; a check that ran after it (here, that of
    new credentials a PATCH gave) ends that run of failures, though it did not clear the record."""
    h = _harness()
    record = await _connection(h, days=365)
    await _sweep_after(h, timedelta(hours=23))
    h.fakes.world.fail_next("probe", times=10**6)
    for _ in range(20):  # 20 hours unchecked
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    h.fakes.world.clear_faults()
    fresh = h.fakes.world.add(record.client_id or "", "new", end=h.fakes.clock.now + timedelta(days=365))
    changed = await h.api.update(APP, record.id, {"credentials": h.credentials(record.client_id or "", fresh,
                                                                               key_id=True)})
    assert changed.health.checked_at == h.fakes.clock.now
    h.fakes.world.fail_next("probe", times=10**6)
    for _ in range(10):  # 30 hours since the first that could not run, 10 since the check that ran
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert "health-check-unavailable" not in _events(h), _events(h)


async def test_a_check_that_cannot_run_keeps_an_invalid_connection_s_explanation_and_reminds_with_it() -> None:
    """(Review sweeps 3.) A check that could not reach Entra wiped an invalid connection's statusMessage (the
    refusal's AADSTS explanation), moved its lastValidatedAt though nothing was validated, and sent a
    'validation-failed-reminder' whose message said the check could not be made. Its daily reminder comes all the
    same (review of that fix, 1), with the refusal's message."""
    h = _harness()
    record = await _connection(h, days=300)
    del h.fakes.world.apps[record.client_id or ""].passwords[record.rotation.key_id or ""]  # the owner revokes it
    await _sweep_after(h, timedelta(hours=25))
    await Notifier(h.fakes.adapters).deliver()
    refused = await h.record(record.id)
    assert refused is not None and refused.status == "invalid" and "AADSTS" in (refused.status_message or "")
    assert _events(h) == ["validation-failed"]
    h.fakes.world.fail_next("probe", times=10)  # Entra out of reach at its next check, a day later, and its retries
    await _sweep_after(h, timedelta(hours=25))
    for _ in range(4):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    after = await h.record(record.id)
    assert after is not None and "could not be checked" in (after.health.message or "")
    assert (after.status, after.status_message, after.last_validated_at) == (
        "invalid", refused.status_message, refused.last_validated_at)
    assert after.health.status == "failing"
    assert _events(h) == ["validation-failed", "validation-failed-reminder"]  # a day on, as ever
    reminder = json.loads(h.fakes.webhook.received[-1][1])
    assert reminder["message"] == refused.status_message  # the refusal's, not the check's
    h.fakes.world.clear_faults()
    await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["validation-failed", "validation-failed-reminder"]  # reminded already today


async def test_an_unavailability_told_before_its_first_failure_was_recorded_is_not_taken_for_a_recovery() -> None:
    """(Review sweeps 2.) A record told 'health-check-unavailable' before the first check that could not run was
    recorded (written by the version before) counts its day from its next failure: it must not read as checked."""
    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.world.fail_next("probe", times=10**6)
    for _ in range(50):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["health-check-unavailable"]
    key = (record.app, record.id)
    stored = h.fakes.connections.records[key]
    h.fakes.connections.records[key] = stored.evolve(health=stored.health.evolve(unchecked_since=None))
    for _ in range(3):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["health-check-unavailable"]


async def test_an_expiry_that_comes_while_unchecked_is_told_and_an_expired_credential_is_not_unavailable() -> None:
    h = _harness()
    await _connection(h, days=31)
    h.fakes.world.fail_next("probe", times=10**6)
    await _sweep_after(h, timedelta(days=1, hours=1))  # within its warning by date; its check cannot run
    for _ in range(24):  # unchecked for a day
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring", "health-check-unavailable"]  # no reminder from a check not made
    await _sweep_after(h, timedelta(days=31))  # expired by date: that is what is told, not unavailability
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h)[-1] == "credential-expired"


async def test_a_check_that_read_the_connection_before_a_patch_of_its_rotation_keeps_what_the_patch_dated() -> None:
    """(Review E, session 17.) A check whose write met a PATCH that turned rotation off wrote, on top of it, the
    status worked out from the rotation before (healthy) and the notification memory before: the credential was
    'healthy' with 19 days left and nothing renewing it, and its 'credential-expiring' was sent twice."""
    h = _harness()
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.clock.advance(timedelta(days=12))
    await h.sweep()
    read_by_the_check = await h.record(record.id)
    assert read_by_the_check is not None
    off = await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    assert off.health.status == EXPIRING
    checked = await _checker(h).check(read_by_the_check)  # its write meets the PATCH's
    assert (checked.health.status, checked.rotation.enabled) == (EXPIRING, False)
    await Notifier(h.fakes.adapters).deliver()
    for _ in range(4 * 3):
        h.fakes.clock.advance(timedelta(hours=6))
        await _checker(h).sweep()
    await Notifier(h.fakes.adapters).deliver()
    assert [e for e in _events(h) if not e.endswith("-reminder")] == ["credential-expiring"], _events(h)


@pytest.mark.parametrize("patch", [{"isAutoRotationEnabled": False},
                                   {"rotation": {**FORTNIGHTLY, "rotateAt": "05:00"}}])
async def test_a_patch_of_the_rotation_while_unchecked_recovers_nothing(patch: dict[str, object]) -> None:
    """(Review H.) Re-dating after a PATCH of the rotation settings sent 'recovered' for a credential whose check
    still could not run, and the next unchecked sweep 'health-check-unavailable' again."""
    h = _harness()
    app = h.fakes.world.application()
    record = await h.api.create(APP, {"name": "c1", "method": "client-secret",
                                      "credentials": h.new_credential(app.client_id),
                                      "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    h.fakes.world.fail_next("probe", times=10**6)
    for _ in range(50):  # its daily check cannot run, nor can its retries for a day
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await h.api.update(APP, record.id, patch)
    for _ in range(3):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert "recovered" not in _events(h) and _events(h).count("health-check-unavailable") == 1, _events(h)


async def test_a_check_that_read_a_federated_connection_before_it_moved_application_is_not_written_over_it() -> None:
    """(Review H.) A federated connection stores no secret version: a check that read it on its first application
    wrote that application's refusal over a PATCH that moved it to a second one, which works (invalid, failing,
    a severity-1 alert)."""
    from tests.shared.test_federated import federated_body

    h = _harness()
    first = h.fakes.world.application()
    h.fakes.world.add_federated(first.client_id)
    record = await h.api.create(APP, federated_body(first.client_id))
    h.fakes.clock.advance(timedelta(hours=3))
    read_by_the_check = await h.record(record.id)
    assert read_by_the_check is not None
    second = h.fakes.world.application()
    h.fakes.world.add_federated(second.client_id)
    first.federated.clear()  # the first application no longer trusts the service
    await h.api.update(APP, record.id, {"credentials": {"tenantId": TENANT, "clientId": second.client_id}})
    await _checker(h).check(read_by_the_check)
    await Notifier(h.fakes.adapters).deliver()
    after = await h.record(record.id)
    assert after is not None and (after.status, after.health.status) == ("active", HEALTHY)
    assert _events(h) == []


async def test_an_expiry_told_while_unchecked_is_not_told_again_when_checks_work_again() -> None:
    """(Review M.) 'credential-expiring' told while a check could not run was told again, after 'recovered', when
    checks worked again."""
    h = _harness()
    await _connection(h, days=33)
    h.fakes.world.fail_next("probe", times=10**6)
    for _ in range(3 * 24):  # its daily check cannot run for a day, then within the warning by date
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    h.fakes.world.clear_faults()
    await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    told = [e for e in _events(h) if not e.endswith("-reminder")]
    assert told == ["health-check-unavailable", "credential-expiring", "recovered"], _events(h)


async def test_new_credentials_that_expire_soon_are_checked_when_they_expire_not_at_the_old_check() -> None:
    """(Review P.) A PATCH of credentials kept the old credential's next check: a new secret expiring two hours
    later was told expired 23 hours later, not at its expiry."""
    h = _harness()
    record = await _connection(h, days=365)
    short = h.fakes.world.add(record.client_id or "", "short", end=h.fakes.clock.now + timedelta(hours=2))
    changed = await h.api.update(APP, record.id, {"credentials": h.credentials(record.client_id or "", short,
                                                                               key_id=True)})
    assert changed.health.next_check_at is not None
    assert changed.health.next_check_at <= h.fakes.clock.now + timedelta(hours=2)
    assert changed.health.check_key != record.health.check_key and h.unscheduled() == []
    assert [e.key for e in await h.fakes.health_index.due(h.fakes.clock.now + timedelta(days=2), limit=10)] == [
        changed.health.check_key]  # the old entry is gone
    for _ in range(3):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
    await Notifier(h.fakes.adapters).deliver()
    assert "credential-expired" in _events(h)


async def test_only_the_daily_check_reminds_a_change_tells_changes_only() -> None:
    """(Review P.) A PATCH 23.5 hours after 'credential-expiring' sent its reminder (the docs: at the daily
    check), and the daily check then sent none."""
    h = _harness()
    record = await _connection(h, days=20)
    await _sweep_after(h, timedelta(hours=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring"]
    h.fakes.clock.advance(timedelta(hours=23, minutes=30))
    await h.api.update(APP, record.id, {"rotation": {"rotationInterval": 10, "rotateAt": "03:00"}})
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring"]
    await _sweep_after(h, timedelta(hours=1))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["credential-expiring", "credential-expiring-reminder"]


async def test_a_check_that_could_not_run_written_over_a_rename_keeps_what_is_known_and_tells_nothing_twice() -> None:
    """(Review P.) Rebased over a rename that landed meanwhile, a check that could not run counted the next hourly
    try as an OAuth refresh (none happened): the connection turned healthy, and the unavailability was told again."""
    from shared.errors import UpstreamError
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness(EXPIRY_WARNING_DAYS="90")
    oauth = await reauthorize_oauth(h)
    checker = _checker(h)

    async def unreachable(app, record):  # type: ignore[no-untyped-def]
        raise UpstreamError("Entra ID could not be reached.")

    checker.connections.oauth_tokens.refresh_now = unreachable  # type: ignore[method-assign]
    for _ in range(5):  # its last refresh no longer counts two days on: expiring (a 90-day warning)
        h.fakes.clock.advance(timedelta(hours=12))
        current = await h.record(oauth.id)
        assert current is not None
        await checker.check(current)
    before = await h.record(oauth.id)
    assert before is not None and before.health.status == EXPIRING, before.health
    update = h.fakes.connections.update
    renamed: list[object] = []

    async def rename_first(target, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not renamed:
            renamed.append(target)
            h.fakes.connections.update = update  # type: ignore[method-assign]
            await h.api.update("azure-key-vault", oauth.id, {"name": "renamed"})  # lands first
        return await update(target, *args, **kwargs)

    h.fakes.connections.update = rename_first  # type: ignore[method-assign]
    h.fakes.clock.advance(timedelta(hours=1))
    after = await checker.check(before)
    h.fakes.connections.update = update  # type: ignore[method-assign]
    await Notifier(h.fakes.adapters).deliver()
    assert renamed and (after.name, after.health.status) == ("renamed", EXPIRING), after.health
    assert _events(h).count("health-check-unavailable") == 1, _events(h)


async def test_a_refusal_found_by_a_check_is_kept_when_its_write_meets_a_rename_and_time_has_passed() -> None:
    """(Review Q.) Whether the check ran was told by comparing its time with the time of its write, equal only on a
    clock that stands still: a refusal the check found, written over a rename a second later, became 'healthy'."""
    h = _harness()
    record = await _connection(h, days=365)
    h.fakes.vault.deleted.add(record.secret_name)  # nothing to sign in with: the check finds it refused
    h.fakes.clock.advance(timedelta(hours=2))  # (checked now: its next check is not the one indexed at creation)
    vault_get = h.fakes.vault.get

    async def slow_get(*args, **kwargs):  # type: ignore[no-untyped-def]  # the check's calls take a while
        h.fakes.clock.advance(timedelta(seconds=1))
        return await vault_get(*args, **kwargs)

    h.fakes.vault.get = slow_get  # type: ignore[method-assign]
    update = h.fakes.connections.update
    renamed: list[object] = []

    async def rename_first(target, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not renamed:
            renamed.append(target)
            h.fakes.connections.update = update  # type: ignore[method-assign]
            await h.api.update(APP, record.id, {"name": "renamed"})  # lands first
        return await update(target, *args, **kwargs)

    h.fakes.connections.update = rename_first  # type: ignore[method-assign]
    checked = await _checker(h).check(record)
    assert renamed and (checked.name, checked.status, checked.health.status) == ("renamed", "invalid", "failing")


async def test_two_refreshes_elsewhere_in_a_row_are_a_conflict_not_a_new_sign_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review P.) Two other instances each stored a rotated refresh token right before this one read its version
    (each disabling the one read): the second refusal was answered "authorize it again" though the connection was
    fine. Only a current version the vault refuses needs a new sign-in; one superseded meanwhile is a 409."""
    from shared.apps import find_app
    from shared.errors import ConcurrentChange, VersionDisabled
    from tests import fakes
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness()
    oauth = await reauthorize_oauth(h)
    connections = h.services().connections
    original = fakes.FakeVault.get
    raced = []
    token = h.fakes.vault.version(oauth.secret_name, oauth.secret_version).material["refreshToken"]

    async def superseded_first(self: Any, name: str, version: str) -> dict[str, str]:
        if len(raced) < 2:  # another instance refreshed just before: what this one read is disabled
            current = await h.record(oauth.id)
            assert current is not None
            raced.append(await connections.switch_secret(current, {"refreshToken": token}, None, {}))
            raise VersionDisabled(f"Key Vault refused to read a disabled version of {name}.")
        return await original(self, name, version)

    monkeypatch.setattr(fakes.FakeVault, "get", superseded_first)
    app = find_app(oauth.app)
    assert app is not None
    with pytest.raises(ConcurrentChange):
        await connections.oauth_tokens.refresh_now(app, oauth)
    after = await h.record(oauth.id)
    assert after is not None and after.status == "active" and len(raced) == 2
    refreshed = await connections.oauth_tokens.refresh_now(app, after)  # tried again: it works
    assert refreshed.id == oauth.id


async def test_the_app_registrations_of_a_connection_being_deleted_are_not_read() -> None:
    """(Review P.) GET …/clients signed in with (and for OAuth refreshed) the credential a DELETE was removing."""
    from shared.errors import ServiceError

    h = _harness()
    record = await h.create()
    key = (record.app, record.id)
    h.fakes.connections.records[key] = h.fakes.connections.records[key].evolve(status="deleting")
    calls = len(h.fakes.world.calls)
    with pytest.raises(ServiceError) as refused:
        await h.api.clients_visible(record.id)
    assert refused.value.status == 409
    assert not [c for c in h.fakes.world.calls[calls:] if c.startswith(("probe", "graph", "token", "vault"))]


@pytest.mark.parametrize("how", ["check", "validate"])
async def test_a_refusal_of_the_version_a_refresh_elsewhere_moved_to_is_recorded_against_it(
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """(Review Q.) Read at v1, superseded by a refresh elsewhere (v2), and v2 refused too (gone from the vault): the
    outcome was recorded against v1, which the guarded write took for a newer validation's, so the connection stayed
    active and healthy while the answer said "authorize it again"."""
    from shared.apps import find_app
    from shared.errors import SecretGone, ServiceError, VersionDisabled
    from tests import fakes
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness()
    oauth = await reauthorize_oauth(h)
    connections = h.services().connections
    token = h.fakes.vault.version(oauth.secret_name, oauth.secret_version).material["refreshToken"]
    reads: list[str] = []

    async def superseded_then_gone(self: Any, name: str, version: str) -> dict[str, str]:
        reads.append(version)
        if len(reads) == 1:
            current = await h.record(oauth.id)
            assert current is not None
            await connections.switch_secret(current, {"refreshToken": token}, None, {})
            raise VersionDisabled(f"Key Vault refused to read a disabled version of {name}.")
        raise SecretGone(f"The secret {name} was deleted.")

    monkeypatch.setattr(fakes.FakeVault, "get", superseded_then_gone)
    if how == "check":
        await _checker(h).check(oauth)
    else:
        app = find_app(oauth.app)
        assert app is not None
        with pytest.raises(ServiceError) as refused:
            await connections.validate(oauth.app, oauth.id)
        assert refused.value.status == 400
    after = await h.record(oauth.id)
    assert after is not None and len(reads) == 2
    assert after.status == "reauthorization-required"
    if how == "check":
        assert after.health.status == "failing"


async def test_a_refresh_token_refused_while_a_delete_marks_the_connection_is_answered_as_being_deleted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review Q.) A DELETE marked the connection and disabled its version while a refresh read it: the answer is
    the one every request on a connection being deleted gets (send the DELETE again), not a generic conflict."""
    from shared.apps import find_app
    from shared.errors import ServiceError, VersionDisabled
    from tests import fakes
    from tests.lifecycle_harness import reauthorize_oauth

    h = _harness()
    oauth = await reauthorize_oauth(h)
    key = (oauth.app, oauth.id)

    async def deleting(self: Any, name: str, version: str) -> dict[str, str]:
        h.fakes.connections.records[key] = h.fakes.connections.records[key].evolve(status="deleting")
        raise VersionDisabled(f"Key Vault refused to read a disabled version of {name}.")

    monkeypatch.setattr(fakes.FakeVault, "get", deleting)
    app = find_app(oauth.app)
    assert app is not None
    with pytest.raises(ServiceError) as refused:
        await h.services().connections.oauth_tokens.refresh_now(app, oauth)
    assert refused.value.status == 409 and refused.value.extensions["connectionStatus"] == "deleting"


async def test_a_failing_or_expired_connection_is_reminded_of_daily_while_its_checks_cannot_run() -> None:
    """(Review of the health fixes, 1.) Keeping a failing connection's message while checks could not run also
    silenced it: no reminder and no unavailability alert (that is for working ones) for the whole outage, while
    healthy ones were told. It is reminded of daily, with the last refusal (an expired one with its end), never the
    failed check's message."""
    h = _harness()
    record = await _connection(h, days=300)
    del h.fakes.world.apps[record.client_id or ""].passwords[record.rotation.key_id or ""]  # its owner revoked it
    await _sweep_after(h, timedelta(hours=25))
    await Notifier(h.fakes.adapters).deliver()
    assert _events(h) == ["validation-failed"]
    refusal = (await h.record(record.id)).status_message  # type: ignore[union-attr]
    h.fakes.world.fail_next("probe", times=10_000)  # Entra ID or Key Vault out of reach for days
    for _ in range(3 * 24):
        await _sweep_after(h, timedelta(hours=1, minutes=1))
        await Notifier(h.fakes.adapters).deliver()
    reminders = [json.loads(body) for _, body, _ in h.fakes.webhook.received][1:]
    assert [r["event"] for r in reminders] == ["validation-failed-reminder"] * 3
    assert {r["message"] for r in reminders} == {refusal} and "AADSTS" in (refusal or "")

    h = _harness()
    record = await _connection(h, days=2)
    h.fakes.world.fail_next("probe", times=10_000)
    for _ in range(5 * 24):  # it expires by date on the second day
        await _sweep_after(h, timedelta(hours=1, minutes=1))
        await Notifier(h.fakes.adapters).deliver()
    told = [json.loads(body) for _, body, _ in h.fakes.webhook.received]
    assert "credential-expired" in [t["event"] for t in told]
    expired_reminders = [t for t in told if t["event"] == "credential-expired-reminder"]
    assert len(expired_reminders) >= 2 and all("expired at" in t["message"] for t in expired_reminders)


# -- superseded secret versions ----------------------------------------------------------------------------------
def _enabled(h: Harness, name: str) -> list[str]:
    return [v.version for v in h.fakes.vault.secrets.get(name, []) if v.enabled]


@pytest.mark.parametrize("failure", ["refused", "worker-gone"])
async def test_a_refresh_token_version_whose_disable_failed_is_disabled_by_the_next_check(failure: str) -> None:
    """Entra does not revoke a refresh token when it issues the next one: a superseded version still holds a
    token that works for up to 90 days. A refresh journals the version it supersedes in its own write; when Key
    Vault refuses its disable, or the worker goes before it, the next health check disables it and forgets it.
    Each refresh token's version expires when the token would lapse unused."""
    from shared.apps import APPS
    from tests.lifecycle_harness import Crash
    from tests.shared.test_oauth import _signed_in

    h = _harness()
    connections = wiring.services(h.fakes.adapters).connections
    created = (await _signed_in(h.fakes, {"name": "kv", "tenantId": TENANT})).record
    kv = created.app
    h.fakes.clock.advance(timedelta(hours=2))
    if failure == "refused":
        h.fakes.vault.refused_disables = 1
        refreshed = await connections.oauth_tokens.refresh_now(APPS[kv], created)
    else:
        h.fakes.world.fail_next("vault.disable", Crash("the worker is recycled"))
        with pytest.raises(Crash):
            await connections.oauth_tokens.refresh_now(APPS[kv], created)
        refreshed = await h.fakes.connections.get(kv, created.id)
    assert refreshed.secret_version != created.secret_version
    assert refreshed.superseded == (created.secret_version,)  # journaled with the switch
    assert _enabled(h, created.secret_name) == [created.secret_version, refreshed.secret_version]
    stored = h.fakes.vault.version(created.secret_name, refreshed.secret_version)
    assert stored.expires_on == h.fakes.clock.now + timedelta(days=90)

    checked = await _checker(h).check(refreshed)  # (which refreshes once more: its superseded version too)
    assert _enabled(h, created.secret_name) == [checked.secret_version] and checked.superseded == ()


async def test_an_owner_secret_a_credentials_change_failed_to_disable_is_disabled_by_the_next_check() -> None:
    """A secret the owner gave stays on their application (the service revokes only what it made): its version
    superseded by a change of credentials holds a live credential. Journaled with the change, it stays journaled
    through the rotations that follow, and the next health check disables it."""
    h = _harness()
    record = await _connection(h, days=400)
    app = record.client_id or ""
    first = record.secret_version
    h.fakes.world.fail_next("vault.disable", UpstreamError("Key Vault: 429"))  # throttled: no disable, no listing
    given = h.fakes.world.add(app, "given again")
    changed = await h.api.update(APP, record.id, {
        "credentials": {"tenantId": TENANT, "clientId": app, "clientSecret": given.secret,
                        "clientSecretKeyId": given.key_id},
        "isAutoRotationEnabled": True, "rotation": FORTNIGHTLY})
    # (turned on with the change, rotation replaced the given secret at once, and journaled that version too)
    assert changed.superseded[0] == first and first in _enabled(h, record.secret_name)
    h.fakes.clock.advance(timedelta(days=15))
    await h.sweep()
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.status == "succeeded"
    assert rotated.superseded == (*changed.superseded, changed.secret_version)  # and the one it superseded
    checked = await _checker(h).check(rotated)
    assert first not in _enabled(h, record.secret_name) and checked.superseded == ()
    assert rotated.secret_version in _enabled(h, record.secret_name)


async def test_the_check_never_disables_the_version_in_use_and_forgets_what_it_could_not_confirm_only() -> None:
    h = _harness()
    record = await _connection(h, days=400)
    other = await h.fakes.vault.write(record.secret_name, {"clientSecret": "older"}, {})
    journaled = await h.fakes.connections.update(record.superseding(
        [record.secret_version, other.version, "gone-version"]))
    h.fakes.vault.refused_disables = 1  # Key Vault refuses the first disable it is asked (``other``)
    checked = await _checker(h).check(journaled)
    assert record.secret_version in _enabled(h, record.secret_name) and checked.status == "active"
    assert checked.superseded == (other.version,)  # refused: kept for the next check; the others forgotten
    final = await _checker(h).check(checked)
    assert final.superseded == () and _enabled(h, record.secret_name) == [record.secret_version]


# -- the secret of a create that stored no record -----------------------------------------------------------------
def _live_secrets(h: Harness) -> dict[str, list[str]]:
    return {name: _enabled(h, name) for name in h.fakes.vault.secrets
            if name not in h.fakes.vault.deleted and _enabled(h, name)}


@pytest.mark.parametrize("how", ["worker-gone", "write-failed-and-unreadable"])
async def test_the_secret_of_a_create_that_stored_no_record_is_removed_by_the_sweep_that_finds_its_entry(
        how: str) -> None:
    """A create indexes its first check, writes its secret, then its record. Should the record never be written
    (the worker gone in between; or its write failed and could not be read back), the secret holds a live
    credential that no connection names: the sweep that finds the entry with no record disables and deletes it,
    audited before, once its newest version is older than any create (an hour)."""
    from tests.lifecycle_harness import Crash

    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given")
    body = {"name": "c1", "method": "client-secret", "credentials": {
        "tenantId": TENANT, "clientId": app.client_id, "clientSecret": password.secret}}
    if how == "worker-gone":
        h.fakes.world.fail_next("store.insert", Crash("the worker is recycled"))
        with pytest.raises(Crash):
            await h.api.create(APP, body)
    else:
        h.fakes.world.fail_next("store.insert", UpstreamError("Table Storage: 503"))
        h.fakes.world.fail_next("store.get", UpstreamError("Table Storage: 503"))
        with pytest.raises(UpstreamError):
            await h.api.create(APP, body)
    assert not h.fakes.connections.records
    [name] = _live_secrets(h)
    seen = len(h.fakes.audit.records)
    h.fakes.clock.advance(timedelta(days=1, minutes=1))  # its first check is due: a create may still be under way
    assert (await _checker(h).sweep()).stale == 0 and list(_live_secrets(h)) == [name]
    h.fakes.clock.advance(timedelta(hours=1))  # due an hour ago: no create is
    report = await _checker(h).sweep()
    assert _live_secrets(h) == {} and name in h.fakes.vault.deleted and report.stale == 1
    assert await h.fakes.health_index.due(h.fakes.clock.now, limit=10) == []
    removal = [(r.action, r.outcome, r.actor.name) for r in h.fakes.audit.records[seen:]]
    assert removal == [("connection.remove-abandoned-secret", "started", "health runner"),
                       ("connection.remove-abandoned-secret", "succeeded", "health runner")]
    assert password.secret not in repr(h.fakes.audit.records[seen:])


async def test_a_sweep_leaves_the_secret_of_a_create_still_under_way() -> None:
    """A credential created within its expiry warning is due for a check at once: a sweep can find its entry while
    the create has not written its record yet. Its secret stays (younger than an hour), and so does its entry; the
    create completes and the connection works."""
    h = _harness()
    app = h.fakes.world.application()
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=3))
    body = {"name": "c1", "method": "client-secret", "credentials": {
        "tenantId": TENANT, "clientId": app.client_id, "clientSecret": password.secret,
        "clientSecretKeyId": password.key_id}}
    insert = h.fakes.connections.insert
    reports = []

    async def sweep_first(record: ConnectionRecord) -> ConnectionRecord:  # a sweep runs between secret and record
        reports.append(await _checker(h).sweep())
        return await insert(record)

    h.fakes.connections.insert = sweep_first  # type: ignore[method-assign]
    record = await h.api.create(APP, body)
    assert reports[0].due == 1 and reports[0].stale == 0
    assert _enabled(h, record.secret_name) == [record.secret_version]
    assert await h.api.material_of(record) == {"clientSecret": password.secret}
    h.fakes.connections.insert = insert  # type: ignore[method-assign]
    checked = await _checker(h).sweep()
    assert checked.checked == 1 and _enabled(h, record.secret_name) == [record.secret_version]


async def test_the_harness_holds_every_enabled_live_version_to_account() -> None:
    """I5 (tests/lifecycle_harness.py) can fail: a version that holds a working credential, enabled and named by
    nothing, is reported; once journaled as superseded, it is not."""
    h = _harness()
    record = await _connection(h, days=400)
    live = h.fakes.vault.version(record.secret_name, record.secret_version).material
    loose = await h.fakes.vault.write(record.secret_name, live, {"connectionId": record.id})
    assert [v for v in h.check() if v.startswith("I5")] == [
        f"I5: {record.secret_name}/{loose.version} of {record.id} is enabled, live and untracked"]
    h.violations.clear()
    await h.fakes.connections.update(record.superseding([loose.version]))
    assert h.check() == []


async def test_a_sweep_between_the_create_s_index_entry_and_its_secret_leaves_the_connection_checked() -> None:
    """(Review of session 29, 1.) A create indexes its first check before it writes the secret: a credential
    created within its warning is due at once, and a sweep may read the entry before the secret exists (no record,
    nothing enabled). The entry stays while it is younger than any create: the connection is checked and its
    expiry noticed."""
    h = _harness()
    app = h.fakes.world.application()
    reports: list[Any] = []
    password = h.fakes.world.add(app.client_id, "given", end=h.fakes.clock.now + timedelta(days=3))
    body = {"name": "c1", "method": "client-secret", "credentials": {
        "tenantId": TENANT, "clientId": app.client_id, "clientSecret": password.secret,
        "clientSecretKeyId": password.key_id}}
    write = h.fakes.vault.write

    async def sweep_first(*args: Any, **kwargs: Any) -> Any:  # the sweep runs between entry and secret
        if not reports:
            reports.append(await _checker(h).sweep())
        return await write(*args, **kwargs)

    h.fakes.vault.write = sweep_first  # type: ignore[method-assign]
    record = await h.api.create(APP, body)
    h.fakes.vault.write = write  # type: ignore[method-assign]
    assert reports and reports[0].due == 1
    checked = 0
    for _ in range(5 * 4):  # five days of six-hourly health sweeps: the credential expires on day 3
        h.fakes.clock.advance(timedelta(hours=6))
        checked += (await _checker(h).sweep()).checked
    after = await h.record(record.id)
    assert after is not None and h.check() == []
    # The invariant of shared/due_index.py: a connection is never left without its entry; and it is checked.
    assert checked > 0 and after.health.status == "expired", (
        f"stale={reports[0].stale}, entry kept={record.health.check_key in h.fakes.health_index.keys}, "
        f"checks over 5 days={checked}, status={after.health.status} (credential ended 2 days ago)")


async def test_a_version_a_rotation_superseded_and_key_vault_refused_to_disable_is_disabled_by_the_next_check() -> None:
    """(Review of session 29, 2.) A rotation journals the version it supersedes with its switch, as a change of
    credentials does: here the owner's secret, kept on the application because another connection signs in with
    it, is live, and Key Vault refuses the revocation's one disable of its version; the next check disables it."""
    from tests.lifecycle_harness import ROTATION
    from tests.shared.rotation.test_sharing import _two_given_one_credential

    h = Harness(method="client-secret")
    first, second, given = await _two_given_one_credential(h)
    h.fakes.vault.refused_disables = 1  # the rotation's one disable of the version it superseded
    rotated = await h.api.update("azure-app-configuration", second.id,
                                 {"isAutoRotationEnabled": True, "rotation": ROTATION})
    assert rotated.rotation.status == "succeeded"
    assert h.fakes.world.credential(first.client_id or "", given) is not None  # live: the first signs in with it
    old = second.secret_version
    checker = _checker(h)
    for _ in range(3):
        h.fakes.clock.advance(timedelta(days=1, minutes=1))
        await checker.sweep()
    now = await h.record(second.id)
    assert now is not None
    enabled = [v.version for v in h.fakes.vault.secrets[second.secret_name] if v.enabled]
    assert old not in enabled, (
        f"version {old} (the owner's live secret) is still enabled after 3 health checks; "
        f"journal={now.superseded}, current={now.secret_version}")


async def test_the_harness_holds_every_connection_to_an_entry_of_the_health_index() -> None:
    """I6 (tests/lifecycle_harness.py) can fail: a connection whose health check points at no entry of the index
    is one the health sweep never comes to."""
    h = _harness()
    record = await _connection(h, days=400)
    assert h.check() == []
    await h.fakes.health_index.remove(record.health.check_key)
    assert h.check() == [f"I6: the health check of {record.id} points at no index entry "
                         f"({record.health.check_key!r})"]
