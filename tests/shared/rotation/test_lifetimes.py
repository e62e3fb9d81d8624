"""Lifetimes the tenant allows: a rotated credential ends within its app-management policy's maxLifetime; an
interval that cannot fit is refused naming the limit; Graph's refusal is retried once within the limit, else the
rotation fails saying what to change; a tenant that forbids client secrets is told to use a certificate or the
federated method."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.azure.graph import lifetime_policy_of, parse_duration
from shared.errors import CredentialLifetimeRefused, RotationIntervalTooLong, RotationRefused
from shared.functions.http import problem_response
from shared.ports import LifetimePolicy
from shared.records import ConnectionRecord
from shared.rotation.certificates import CertificateRoll
from shared.rotation.lifetimes import MARGIN, require_interval_fits
from shared.rotation.protocol import backoff, next_rotation
from shared.rotation.rolls import PasswordRoll
from shared.rotation.schedule import RotationSchedule, parse_hhmm
from tests.lifecycle_harness import Harness

DAYS = timedelta(days=1)


async def rotated(h: Harness, interval: int = 30) -> ConnectionRecord:
    record = await h.create(rotation=False)
    saved: ConnectionRecord = await h.api.update("azure-client-secrets", record.id, {
        "isAutoRotationEnabled": True,
        "rotation": {"rotationInterval": interval, "rotateAt": "03:00", "timeZone": "UTC"}})
    return saved


def pending_end(h: Harness, record: ConnectionRecord) -> datetime | None:
    return h.fakes.vault.version(record.secret_name, record.secret_version).expires_on


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_the_new_credential_ends_within_the_applications_policy(method: str) -> None:
    h = Harness(method=method)
    policy = LifetimePolicy("application", password_max_lifetime=40 * DAYS, key_max_lifetime=40 * DAYS)
    h.fakes.world.tenant_policy = policy
    record = await rotated(h, interval=30)  # 2 x 30 + 3 days wanted; 40 allowed
    assert record.rotation.status == "succeeded", record.rotation.message
    assert pending_end(h, record) == h.fakes.clock.now + 40 * DAYS - MARGIN
    # The next rotation comes before the capped credential's grace period begins.
    assert record.rotation.next_at is not None
    assert record.rotation.next_at <= h.fakes.clock.now + 37 * DAYS
    assert h.check() == []


async def test_without_a_policy_or_when_it_cannot_be_read_the_credential_lives_two_intervals_and_the_grace() -> None:
    h = Harness()
    record = await rotated(h, interval=30)
    assert pending_end(h, record) == h.fakes.clock.now + 63 * DAYS
    h2 = Harness()
    h2.fakes.world.tenant_policy_forbidden = True
    record2 = await rotated(h2, interval=10)
    assert pending_end(h2, record2) == h2.fakes.clock.now + 23 * DAYS


async def test_a_refusal_by_a_policy_the_credential_cannot_read_is_retried_once_with_the_least_lifetime() -> None:
    h = Harness()
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_max_lifetime=20 * DAYS)
    h.fakes.world.tenant_policy_forbidden = True  # enforced by Graph, invisible to the connection
    record = await rotated(h, interval=14)  # 31 days asked and refused; 17 (interval + grace) fits
    assert record.rotation.status == "succeeded", record.rotation.message
    assert pending_end(h, record) == h.fakes.clock.now + 17 * DAYS
    assert h.check() == []


async def test_a_refusal_that_the_retry_cannot_fix_fails_naming_graphs_code_and_keeps_the_credential() -> None:
    h = Harness()
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_max_lifetime=10 * DAYS)
    h.fakes.world.tenant_policy_forbidden = True
    created = await h.create(rotation=False)
    before = h.current_secret(created)
    saved = await h.api.update("azure-client-secrets", created.id, {
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 14, "rotateAt": "03:00", "timeZone": "UTC"}})
    assert saved.rotation.status == "failed"
    message = saved.rotation.message or ""
    assert "CredentialInvalidLifetimeAsPerAppPolicy" in message and "could not be read" in message
    assert h.current_secret(saved) == before
    assert not saved.rotation.in_progress
    assert h.check() == []


async def test_a_tenant_that_forbids_client_secrets_is_told_to_use_a_certificate_or_federated() -> None:
    h = Harness()
    created = await h.create(rotation=False)
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_addition_restricted=True)
    # Enabling rotation is refused at once, as the policy is readable...
    with pytest.raises(CredentialLifetimeRefused) as refused:
        await h.api.update("azure-client-secrets", created.id, {
            "isAutoRotationEnabled": True,
            "rotation": {"rotationInterval": 14, "rotateAt": "03:00", "timeZone": "UTC"}})
    for words in ("passwordAddition", "certificate method", "federated method"):
        assert words in refused.value.detail
    # ... and a rotation that meets the restriction later fails with the same advice, having added nothing.
    h.fakes.world.tenant_policy = None
    saved = await h.api.update("azure-client-secrets", created.id, {
        "isAutoRotationEnabled": True, "rotation": {"rotationInterval": 14, "rotateAt": "03:00", "timeZone": "UTC"}})
    assert saved.rotation.status == "succeeded"
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_addition_restricted=True)
    await h.due()
    h.fakes.world.calls.clear()
    await h.sweep()
    after = await h.record(created.id)
    assert after is not None and after.rotation.status == "failed"
    message = after.rotation.message or ""
    assert "passwordAddition" in message and "certificate method" in message and "federated method" in message
    assert "graph.add" not in h.fakes.world.calls  # refused before anything was added
    assert h.check() == []


def test_an_interval_that_cannot_fit_is_refused_with_a_problem_naming_the_limit() -> None:
    policy = LifetimePolicy("tenant", password_max_lifetime=30 * DAYS, key_max_lifetime=90 * DAYS)
    require_interval_fits(PasswordRoll(), policy, 26)  # 26 + 3 days of grace < 30 days less the margin
    require_interval_fits(CertificateRoll(), policy, 80)
    require_interval_fits(PasswordRoll(), None, 365)  # unreadable: nothing refused
    with pytest.raises(RotationIntervalTooLong) as refused:
        require_interval_fits(PasswordRoll(), policy, 27)
    problem = json.loads(problem_response(refused.value, "/x").get_body())
    assert problem["status"] == 400
    assert problem["type"].endswith("rotation-interval-exceeds-policy")
    assert problem["maxRotationInterval"] == 26 and problem["maxLifetimeDays"] == 30
    assert problem["restrictionType"] == "passwordLifetime"
    assert problem["errors"][0]["pointer"] == "/rotation/rotationInterval"
    assert "30 days" in problem["detail"] and "at most 26 days" in problem["detail"]
    with pytest.raises(CredentialLifetimeRefused, match="certificate method"):
        require_interval_fits(PasswordRoll(), LifetimePolicy("tenant", password_addition_restricted=True), 7)


def test_graphs_durations_and_restrictions_are_read_as_the_policy_means_them() -> None:
    assert parse_duration("P90D") == 90 * DAYS
    assert parse_duration("P1Y") == 365 * DAYS
    assert parse_duration("P2M") == 56 * DAYS  # a month counts 28 days: never longer than meant
    assert parse_duration("P4DT12H") == timedelta(days=4, hours=12)
    assert parse_duration("PT") is None and parse_duration("90 days") is None and parse_duration(None) is None
    created = datetime(2024, 6, 1, tzinfo=UTC)
    restrictions = {
        "passwordCredentials": [
            {"restrictionType": "passwordLifetime", "maxLifetime": "P180D"},
            {"restrictionType": "passwordLifetime", "maxLifetime": "P30D", "state": "disabled"},
            {"restrictionType": "passwordLifetime", "maxLifetime": "P10D",
             "restrictForAppsCreatedAfterDateTime": "2025-01-01T00:00:00Z"},
            {"restrictionType": "passwordAddition", "restrictForAppsCreatedAfterDateTime": "2020-01-01T00:00:00Z"},
        ],
        "keyCredentials": [{"restrictionType": "asymmetricKeyLifetime", "maxLifetime": "P1Y"}],
    }
    policy = lifetime_policy_of(restrictions, "tenant", created)
    assert policy == LifetimePolicy("tenant", password_max_lifetime=180 * DAYS, key_max_lifetime=365 * DAYS,
                                    password_addition_restricted=True)
    newer = lifetime_policy_of(restrictions, "tenant", datetime(2025, 6, 1, tzinfo=UTC))
    assert newer.password_max_lifetime == 10 * DAYS
    # (Review P.) A duration past what a date can hold bounds nothing (it raised OverflowError), and a date Graph
    # wrote without its offset is UTC (compared with an aware one, it raised TypeError): never a 500.
    assert parse_duration("P9999999999D") is None
    odd = {"passwordCredentials": [{"restrictionType": "passwordLifetime", "maxLifetime": "P20D",
                                    "restrictForAppsCreatedAfterDateTime": "2025-01-01T00:00:00"}]}
    assert lifetime_policy_of(odd, "tenant", datetime(2025, 6, 1, tzinfo=UTC)).password_max_lifetime == 20 * DAYS
    assert lifetime_policy_of(odd, "tenant", created).password_max_lifetime is None


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_create_and_patch_refuse_an_interval_the_policy_cannot_fit_and_change_nothing(method: str) -> None:
    h = Harness(method=method)
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_max_lifetime=30 * DAYS,
                                                 key_max_lifetime=30 * DAYS)
    _, credentials = h.new_application()
    with pytest.raises(RotationIntervalTooLong) as refused:
        await h.api.create("azure-client-secrets", {
            "name": "too-long", "method": method, "credentials": credentials, "isAutoRotationEnabled": True,
            "rotation": {"rotationInterval": 28, "rotateAt": "03:00", "timeZone": "UTC"}})
    assert refused.value.extensions["maxRotationInterval"] == 26
    assert not h.fakes.connections.records  # nothing stored
    record = await rotated(h, interval=20)
    assert record.rotation.status == "succeeded", record.rotation.message
    with pytest.raises(RotationIntervalTooLong):
        await h.api.update("azure-client-secrets", record.id, {
            "rotation": {"rotationInterval": 60, "rotateAt": "03:00", "timeZone": "UTC"}})
    after = await h.record(record.id)
    assert after is not None and after.rotation.interval_days == 20
    assert h.check() == []


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_policy_that_fits_no_interval_fails_the_rotation_before_anything_is_added_and_backs_off(
        method: str) -> None:
    """(Review sweeps 1.) A policy tightened after rotation was enabled: each rotation succeeded with a credential
    capped at the policy's limit, whose next rotation was then due at once (3 days before it ends), so every sweep
    rotated the connection again, every 5 minutes, for ever. One that leaves a new credential less than ``MIN_ROOM``
    (2 hours; here 150 minutes less the hour's margin) fails instead, before adding anything, with the error
    configuring such an interval gives; it is recorded, the owner is told, and it backs off as failures do."""
    h = Harness(method=method)
    record = await rotated(h, interval=30)
    before = h.current_secret(record)
    created = len(h.fakes.world.created)
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_max_lifetime=timedelta(minutes=150),
                                                 key_max_lifetime=timedelta(minutes=150))
    await h.due()
    h.fakes.world.calls.clear()
    told = len(h.fakes.connections.outbox)
    await h.sweep()
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.status == "failed"
    message = failed.rotation.message or ""
    assert "app-management policy" in message and "at most 0 days" in message, message
    assert "graph.add" not in h.fakes.world.calls and len(h.fakes.world.created) == created  # nothing added
    assert h.current_secret(failed) == before and not failed.rotation.in_progress
    assert failed.rotation.next_at == h.fakes.clock.now + backoff(1)
    assert [n.event for n in h.fakes.connections.outbox[told:]] == ["rotation-failed"]
    # Six sweeps, five minutes apart: tried again only as the back-off says (5, then 10 minutes), never added.
    for _ in range(6):
        h.fakes.clock.advance(timedelta(minutes=5))
        await h.sweep()
    after = await h.record(record.id)
    assert after is not None and after.rotation.failures == 3 and len(h.fakes.world.created) == created
    # Asked for now, it answers the same refusal, naming the policy's limit.
    h.fakes.clock.advance(DAYS)
    with pytest.raises(RotationRefused) as refused:
        await h.api.rotate("azure-client-secrets", record.id)
    assert refused.value.extensions["maxRotationInterval"] == 0
    assert len(h.fakes.world.created) == created and h.check() == []


async def test_a_policy_that_still_fits_a_shorter_interval_rotates_before_the_grace_period_not_at_once() -> None:
    """A cap of 5 days under a 30-day interval: no 400 at rotation time; the capped credential is rotated 3 days
    before it ends, as the schedule's grace rule says (and the floor leaves that alone)."""
    h = Harness()
    record = await rotated(h, interval=30)
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_max_lifetime=5 * DAYS)
    await h.due()
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.status == "succeeded", done.rotation.message
    assert done.rotation.next_at == h.fakes.clock.now + 2 * DAYS - MARGIN
    assert h.check() == []


async def test_a_credential_that_ends_inside_its_grace_period_all_the_same_is_not_rotated_again_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review sweeps 1, and the review of its fix.) A policy of 3 days fits no interval, but refusing it would let
    the credential in use run out: each rotation makes a credential capped at it, tested before the one in use is
    revoked, and the schedule's floor keeps the sweep from rotating it again at every run: one rotation in the
    next half hour of sweeps, and the next not before a day."""
    del monkeypatch
    h = Harness()
    record = await rotated(h, interval=30)
    h.fakes.world.tenant_policy = LifetimePolicy("tenant", password_max_lifetime=3 * DAYS)
    await h.due()
    created = len(h.fakes.world.created)
    rotated_at = h.fakes.clock.now
    for _ in range(6):
        await h.sweep()
        h.fakes.clock.advance(timedelta(minutes=5))
    done = await h.record(record.id)
    assert done is not None and done.rotation.status == "succeeded", done.rotation.message
    assert len(h.fakes.world.created) == created + 1
    assert done.rotation.next_at == rotated_at + DAYS
    assert h.check() == []


def test_the_next_rotation_is_never_due_sooner_after_a_rotation_than_half_the_credentials_life_within_an_hour_and_a_day(
) -> None:
    """(Review sweeps 1.) Whatever path leaves a credential that ends inside its own grace period, the next rotation
    is not due at once: not sooner than half its life from the rotation (never past its end), at most a day; a due
    time the schedule or the grace rule gives later than that is left alone."""
    schedule = RotationSchedule(30, parse_hhmm("03:00"), "UTC")
    since = datetime(2025, 3, 1, 3, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert next_rotation(schedule, since, since + 3 * DAYS - hour) == since + DAYS  # a 3-day policy's secret
    assert next_rotation(schedule, since, since + 30 * hour) == since + 15 * hour
    assert next_rotation(schedule, since, since + hour) == since + hour / 2  # before it ends (review of the fix)
    assert next_rotation(schedule, since, since - DAYS) == since  # already ended: due now, not after
    assert next_rotation(schedule, since, since + 4 * DAYS) == since + DAYS  # the grace rule's own: a day
    assert next_rotation(schedule, since, since + 20 * DAYS) == since + 17 * DAYS
    assert next_rotation(schedule, since, since + 63 * DAYS) == since + 30 * DAYS  # the schedule's
    assert next_rotation(schedule, since, None) == since + 30 * DAYS
    daily = RotationSchedule(1, parse_hhmm("03:00"), "UTC")
    late = since + 5 * hour  # made 5 h after its due time: the next still comes at 03:00 the next day
    assert next_rotation(daily, late, late + 5 * DAYS) == since + DAYS
