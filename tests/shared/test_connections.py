"""The lifecycle's rules, against in-memory fakes: deleting removes what the service created, Key IDs belong to
their secret, superseded versions are disabled, ``rotate`` answers what happened, one history entry per attempt."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from datetime import timedelta
from typing import Any

import pytest

from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    CredentialsLeftLive,
    InvalidRequest,
    NotFound,
    RotationFailed,
    RotationInProgress,
    RotationRefused,
    SecretGone,
    ServiceError,
    UpstreamError,
    UpstreamForbidden,
)
from shared.records import ConnectionRecord
from shared.rotation.protocol import connection_marker
from tests.fakes import FakeVault, Password, build_fakes
from tests.lifecycle_harness import (
    APP,
    ROTATION,
    Harness,
    delete_once_the_refusal_holds,
    fails_once,
    overtaken_at,
    own_etag,
)


async def stops_and_says_to_send_it_again(h: Harness, connection_id: str, force: bool = False) -> None:
    """A DELETE that Azure stops once the connection is marked: a 502 that says to send the DELETE again."""
    with pytest.raises(ServiceError) as stopped:
        await h.api.delete(APP, connection_id, force=force)
    assert stopped.value.status == 502 and "send the DELETE again" in stopped.value.detail


async def test_delete_removes_every_secret_the_service_created_and_lists_them() -> None:
    h = Harness()
    record = await h.create()
    created = record.rotation.key_id
    assert created is not None
    assert created in h.fakes.world.apps[record.client_id or ""].passwords
    deleted = await h.api.delete(APP, record.id)
    assert deleted.removed_key_ids == [created]
    assert deleted.key_ids_left_live == []
    assert created not in h.fakes.world.apps[record.client_id or ""].passwords
    assert await h.record(record.id) is None
    assert record.secret_name in h.fakes.vault.deleted
    assert not any(v.enabled for v in h.fakes.vault.secrets[record.secret_name])
    assert h.check() == []


async def test_delete_answers_409_and_keeps_everything_when_graph_refuses_and_force_deletes_anyway() -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.status == 409
    assert refused.value.extensions["keyIds"] == [record.rotation.key_id]
    kept = await h.record(record.id)
    assert kept is not None
    assert kept.status == "active"
    assert kept.rotation == record.rotation
    forced = await h.api.delete(APP, record.id, force=True)
    assert forced.removed_key_ids == []
    assert forced.key_ids_left_live == [record.rotation.key_id]  # a rotation made it: the service's to list
    assert forced.applications_not_read == [record.client_id]
    assert await h.record(record.id) is None


@pytest.mark.parametrize("given", ["at create", "by a change"])
async def test_a_delete_never_lists_the_credential_the_user_gave_as_one_to_remove(given: str) -> None:
    """Found by a review: a rotation that failed before adding anything leaves the user's secret in use, and the
    application unreadable (its permission withdrawn). The DELETE listed that secret's Key ID among those the
    service created, which the docs tell the user to remove: their own secret, which other systems may use."""
    h = Harness()
    if given == "at create":
        h.fakes.world.fail_next("graph.add")
        record = await h.create()
    else:
        record = await h.create()
        h.fakes.world.fail_next("graph.add")
        await h.api.update(APP, record.id, {"credentials": h.new_credential(record.client_id or "")})
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.status == "failed" and not failed.rotation.key_made
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["keyIds"] == []
    assert refused.value.extensions["applicationsNotRead"] == [record.client_id]
    forced = await h.api.delete(APP, record.id, force=True)
    assert forced.key_ids_left_live == [] and forced.applications_not_read == [record.client_id]
    assert failed.rotation.key_id in h.fakes.world.apps[record.client_id or ""].passwords  # and it still works


async def test_a_change_whose_superseded_version_cannot_be_disabled_is_made_and_the_next_change_disables_it(
) -> None:
    """Found by a review: Key Vault refusing to disable the superseded version (after its retries) answered 502 for
    a change already saved (I3). The change stands; the next change of the secret disables every older version."""
    h = Harness()
    record = await h.create(rotation=False)
    _, credentials = h.new_application()
    h.fakes.world.fail_next("vault.disable")
    changed = await h.api.update(APP, record.id, {"credentials": credentials})
    assert changed.client_id == credentials["clientId"] and changed.secret_version != record.secret_version
    assert h.fakes.vault.version(record.secret_name, record.secret_version).enabled  # left enabled for now
    again = await h.api.update(APP, record.id, {"credentials": h.new_credential(changed.client_id or "")})
    versions = h.fakes.vault.secrets[record.secret_name]
    assert [v.version for v in versions if v.enabled] == [again.secret_version]
    assert h.check() == []


async def test_a_change_whose_write_fails_and_whose_new_version_cannot_be_disabled_journals_that_version() -> None:
    """Found by the random sequences: a change of credentials whose record write failed (and did not land) undoes
    the version it wrote by disabling it; Key Vault refusing that too left a version holding a live credential
    enabled, with nothing tracking it (I5). It is now journaled as superseded on the connection as it is, the
    change still answers its failure and changes nothing else (I3), and the health check disables it."""
    from shared.health import HealthChecker
    from tests.lifecycle_harness import user_operations

    h = Harness()
    record = await h.create(rotation=False)
    h.fakes.world.fail_next("store.update")
    h.fakes.world.fail_next("vault.disable")
    h.faults_armed = True  # (a 502 while Azure fails is the answer I3 expects)
    outcome = await user_operations(h, record.id)["patch-credentials"]()
    assert outcome.status == 502
    after = await h.record(record.id)
    assert after is not None and after.secret_version == record.secret_version
    [unwritten] = [v.version for v in h.fakes.vault.secrets[record.secret_name] if v.version != record.secret_version]
    assert after.superseded == (unwritten,)
    assert h.fakes.vault.version(record.secret_name, unwritten).enabled  # until its health check
    assert h.check() == []
    checked = await HealthChecker(h.fakes.adapters, h.api).check(after)
    assert not h.fakes.vault.version(record.secret_name, unwritten).enabled
    assert checked.superseded == () and h.check() == []


@pytest.mark.parametrize("fails", ["vault.disable", "vault.delete", "store.delete"])
async def test_a_delete_that_azure_stops_past_its_removals_says_to_send_it_again_and_the_next_one_finishes(
        fails: str) -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next(fails)
    await stops_and_says_to_send_it_again(h, record.id)
    marked = await h.record(record.id)
    assert marked is not None and marked.status == "deleting"
    await h.api.delete(APP, record.id)
    assert await h.record(record.id) is None
    assert h.check() == []


@pytest.mark.parametrize("fails", ["schedule.remove"])
async def test_a_deleted_connection_stays_deleted_when_its_indexes_cannot_be_cleared(fails: str) -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next(fails)
    deleted = await h.api.delete(APP, record.id)
    assert deleted.record.id == record.id and await h.record(record.id) is None


@pytest.mark.parametrize("fails", ["vault.delete", "store.delete"])
async def test_a_plain_delete_after_a_forced_one_that_stopped_does_not_drop_what_that_one_left_live(
        fails: str) -> None:
    """Found by a review: a forced DELETE that left the service's secret live (its application unreadable), then
    stopped in Key Vault or Table Storage (502, its lists lost with it). The next plain DELETE took the disabled
    secret for the sign of an earlier DELETE past its removals, and answered 200 with nothing listed."""
    h = Harness()
    record = await h.create()
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    h.fakes.world.fail_next(fails)
    await stops_and_says_to_send_it_again(h, record.id, force=True)
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["applicationsNotRead"] == [record.client_id]
    forced = await h.api.delete(APP, record.id, force=True)
    assert forced.key_ids_left_live == [record.rotation.key_id]
    assert forced.applications_not_read == [record.client_id]
    assert await h.record(record.id) is None


async def test_a_clean_up_whose_vault_version_cannot_be_disabled_is_forgotten_once_its_removals_are_done() -> None:
    """Found by a review: the clean-up of the application left removed the service's secrets there (the one it
    signs in with among them), then Key Vault refused to disable that version: the clean-up stayed journaled with
    a revoked credential, and every sweep and plain DELETE failed for good."""
    h = Harness()
    record = await h.create()
    old = h.fakes.world.apps[record.client_id or ""]
    _, credentials = h.new_application()
    h.fakes.world.fail_next("vault.disable")
    changed = await h.api.update(APP, record.id, {"credentials": credentials})
    assert changed.rotation.retire_version is None
    assert not [p for p in old.passwords.values() if p.created_by_service]
    assert h.check() == []
    await h.api.delete(APP, record.id)
    assert await h.record(record.id) is None


async def test_a_delete_that_forgets_a_dead_rotation_s_journal_closes_its_attempt() -> None:
    """Found by a review (the stateful test): a worker died in a rotation; a DELETE that journals its removals done
    forgets that rotation, then stops in Key Vault: the attempt's history said "running" for good (I4)."""
    h = Harness()
    record = await h.create()
    await h.due()
    task, woken = await h.held_up_at("before-add-password", lambda checkpoint: h.sweep(checkpoint))
    h.fakes.world.fail_next("vault.disable")
    with pytest.raises(ServiceError) as stopped:
        await h.api.delete(APP, record.id)
    assert stopped.value.status == 502
    marked = await h.record(record.id)
    assert marked is not None and marked.rotation.rotation_id is None
    assert "running" not in [event.outcome for event in h.fakes.history.of(record.id)]
    woken.set()
    await task
    assert h.check() == []
    await h.api.delete(APP, record.id)
    assert await h.record(record.id) is None


async def test_a_forced_delete_that_failed_halfway_lists_exactly_what_it_left_live_and_audits_it() -> None:
    h = Harness()
    record = await h.create()
    client_id = record.client_id or ""
    leftover = h.fakes.world.add(client_id, connection_marker(record.id) + "interrupted", by_service=True)
    world = h.fakes.world
    watching = world.on_revoke

    def refuse_the_next(client: str, password: object) -> None:  # the first removal goes through, then 403s
        if watching is not None:
            watching(client, password)  # type: ignore[arg-type]
        world.fail_next("graph.remove", UpstreamForbidden("Graph refused (injected)"))

    world.on_revoke = refuse_the_next
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["keyIds"] == [record.rotation.key_id]  # the leftover was removed before
    assert leftover.key_id not in world.apps[client_id].passwords
    world.on_revoke = watching
    world.fail_next("graph.remove", UpstreamForbidden("Graph refused (injected)"))
    forced = await h.api.delete(APP, record.id, force=True)
    assert (forced.removed_key_ids, forced.key_ids_left_live) == ([], [record.rotation.key_id])
    [noted] = [r for r in h.fakes.audit.records if r.outcome == "credentials-left-live"]
    assert noted.detail == f"Left live by ?force=true: Key IDs {record.rotation.key_id}."


async def test_a_connection_the_service_never_changed_is_deleted_without_graph() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    calls = len(h.fakes.world.calls)
    deleted = await h.api.delete(APP, record.id)
    assert deleted.removed_key_ids == []
    assert not [c for c in h.fakes.world.calls[calls:] if c.startswith("graph")]


async def test_client_secret_key_id_must_be_the_key_id_of_the_given_secret() -> None:
    h = Harness()
    client_id, given = h.new_app()
    other = h.fakes.world.add(client_id, "another secret")
    body = {"name": "c", "method": "client-secret", "isAutoRotationEnabled": True, "rotation": ROTATION,
            "credentials": {**h.credentials(client_id, given), "clientSecretKeyId": other.key_id}}
    with pytest.raises(InvalidRequest) as refused:
        await h.api.create(APP, body)
    assert refused.value.errors[0].pointer == "/credentials/clientSecretKeyId"
    assert h.fakes.connections.records == {}
    body["credentials"]["clientSecretKeyId"] = given.key_id
    record = await h.api.create(APP, body)
    assert record.rotation.status == "succeeded"
    assert given.key_id not in h.fakes.world.apps[client_id].passwords  # the given one was the one revoked
    assert other.key_id in h.fakes.world.apps[client_id].passwords


def twin_of(h: Harness, client_id: str, password: Password) -> Password:
    """Another client secret of the application that starts with the same three characters: Graph's ``hint`` of the
    two is the same, so the hint cannot tell which one a connection holds."""
    twin = Password(str(uuid.uuid4()), password.secret[:3] + secrets.token_urlsafe(30), "twin", None, False)
    h.fakes.world.apps[client_id].passwords[twin.key_id] = twin
    return twin


@pytest.mark.parametrize("together", [False, True], ids=["then-rotation-on", "with-rotation-on"])
async def test_the_key_id_alone_names_the_stored_secret_and_rotation_then_revokes_that_one(together: bool) -> None:
    """Reference azure-client-secrets-connection.md, "Enable Automatic Credential Rotation": when creating or editing
    the connection, turn rotation on and enter the Key ID. A PATCH took a Key ID only with the secret itself: where
    two of the application's secrets share a hint, rotation could not be turned on without pasting the secret again.
    ``credentials: {clientSecretKeyId}`` alone says which one is stored; nothing secret is sent or written."""
    h = Harness()
    client_id, given = h.new_app()
    twin = twin_of(h, client_id, given)
    record = await h.api.create(APP, {"name": "c", "method": "client-secret",
                                      "credentials": h.credentials(client_id, given)})
    turn_on = {"isAutoRotationEnabled": True, "rotation": ROTATION}
    with pytest.raises(InvalidRequest) as ambiguous:
        await h.api.update(APP, record.id, turn_on)
    assert [e.pointer for e in ambiguous.value.errors] == ["/credentials/clientSecretKeyId"]
    key_id_alone = {"credentials": {"clientSecretKeyId": given.key_id.upper()}}  # a GUID in either case
    if together:  # as the console sends it: the switch and the Key ID in one PATCH
        turned = await h.api.update(APP, record.id, {**turn_on, **key_id_alone})
    else:  # recorded with rotation off (the vault is not written: the secret did not change), used when it turns on
        recorded = await h.api.update(APP, record.id, key_id_alone)
        assert recorded.rotation.key_id == given.key_id and not recorded.rotation.enabled
        assert (recorded.secret_version, len(h.fakes.vault.secrets[record.secret_name])) == (record.secret_version, 1)
        assert await h.api.update(APP, record.id, key_id_alone) == recorded  # the same again: nothing to write
        turned = await h.api.update(APP, record.id, turn_on)
    assert turned.rotation.status == "succeeded" and turned.rotation.enabled
    passwords = h.fakes.world.apps[client_id].passwords
    assert given.key_id not in passwords and twin.key_id in passwords  # the secret the connection held went


async def test_the_key_id_alone_dates_the_stored_secret_at_once() -> None:
    """A secret whose hint another of the application's secrets shares has no end date the service can read (which
    of the two is it?). Once its Key ID is given, its end is known: the connection says so at once (expiring, here),
    not at its next daily check, and is checked again when the secret ends."""
    h = Harness()
    app = h.fakes.world.application()
    end = h.fakes.clock.now + timedelta(days=3)
    given = h.fakes.world.add(app.client_id, "given by the owner", end=end)
    twin_of(h, app.client_id, given)
    record = await h.api.create(APP, {"name": "c", "method": "client-secret",
                                      "credentials": h.credentials(app.client_id, given)})
    assert (record.health.status, record.health.credential_expires_at) == ("healthy", None)
    dated = await h.api.update(APP, record.id, {"credentials": {"clientSecretKeyId": given.key_id}})
    assert (dated.health.status, dated.health.credential_expires_at) == ("expiring", end)
    assert dated.health.next_check_at is not None and dated.health.next_check_at <= end
    assert [n.event for n in h.fakes.connections.outbox if n.connection_id == record.id] == ["credential-expiring"]
    assert await h.record(record.id) == dated


@pytest.mark.parametrize(("method", "key_id", "why"), [
    ("client-secret", "unknown", "is not a Key ID of the application's secrets"),
    ("client-secret", "another", "must be the Key ID of clientSecret"),
    ("client-secret", "the secret", "must be a GUID"),
    ("client-secret", None, "must be a string"),
    ("certificate", "unknown", "needs the client-secret method"),
])
async def test_a_key_id_alone_that_is_not_the_stored_secret_s_is_refused_and_changes_nothing(
        method: str, key_id: str | None, why: str) -> None:
    h = Harness()
    record = await h.create(rotation=False, method=method)
    client_id = record.client_id or ""
    stored = h.current_secret(record)
    other = h.fakes.world.add(client_id, "another secret")
    while other.secret[:3] == stored[:3]:  # (its hint must not be the stored secret's)
        other = h.fakes.world.add(client_id, "another secret")
    given = {"unknown": str(uuid.uuid4()), "another": other.key_id, "the secret": stored, None: None}[key_id]
    with pytest.raises(InvalidRequest) as refused:
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION,
                                            "credentials": {"clientSecretKeyId": given}})
    [error] = refused.value.errors
    assert error.pointer == "/credentials/clientSecretKeyId" and error.detail.startswith(why), error
    assert stored not in f"{refused.value.to_problem('/x')}"  # a secret pasted in the wrong field is never echoed
    assert await h.record(record.id) == record


async def test_a_key_id_alone_never_replaces_the_one_the_service_recorded_for_the_secret_it_made() -> None:
    """Once a rotation made the stored secret, its Key ID is known for certain: a Key ID alone naming another (one
    whose hint matches it too) would have the next rotation revoke a secret the connection does not hold."""
    h = Harness()
    record = await h.create(rotation=True)
    made = record.rotation.key_id or ""
    twin = twin_of(h, record.client_id or "", h.fakes.world.apps[record.client_id or ""].passwords[made])
    with pytest.raises(InvalidRequest) as refused:
        await h.api.update(APP, record.id, {"credentials": {"clientSecretKeyId": twin.key_id}})
    assert [(e.pointer, e.detail) for e in refused.value.errors] == [
        ("/credentials/clientSecretKeyId", "must be the Key ID of the secret stored")]
    assert await h.api.update(APP, record.id, {"credentials": {"clientSecretKeyId": made}}) == record


async def test_a_new_current_version_disables_the_superseded_ones_and_carries_the_credential_expiry() -> None:
    h = Harness()
    record = await h.create()
    versions = h.fakes.vault.secrets[record.secret_name]
    assert [v.enabled for v in versions] == [False, True]
    assert versions[-1].expires_on is not None
    password = h.fakes.world.add(record.client_id or "", "new from the owner")
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    updated = await h.api.update(APP, record.id, {"credentials": h.credentials(record.client_id or "", password)})
    enabled = [v.version for v in h.fakes.vault.secrets[record.secret_name] if v.enabled]
    assert enabled == [updated.secret_version]
    # the secret the service made is retired with the change: nothing it created stays live
    assert record.rotation.key_id not in h.fakes.world.apps[record.client_id or ""].passwords
    assert h.check() == []


async def test_changing_to_another_application_retires_the_service_made_secret_on_the_first() -> None:
    h = Harness()
    record = await h.create()
    client_id, password = h.new_app()
    updated = await h.api.update(APP, record.id, {"credentials": h.credentials(client_id, password)})
    assert updated.client_id == client_id
    assert updated.rotation.retire_version is None
    assert record.rotation.key_id not in h.fakes.world.apps[record.client_id or ""].passwords
    assert updated.rotation.status == "succeeded"  # the change rotated the given secret of the new app
    assert h.check() == []


async def test_rotate_answers_200_only_when_the_rotation_completed() -> None:
    h = Harness()
    record = await h.create()
    rotated = await h.api.rotate(APP, record.id)
    assert rotated.rotation.status == "succeeded"
    h.fakes.world.fail_next("graph.add", times=20)
    with pytest.raises(RotationFailed) as failed:
        await h.api.rotate(APP, record.id)
    assert failed.value.status == 502
    assert failed.value.extensions["rotation"]["status"] == "failed"
    assert "failed" in failed.value.detail
    h.fakes.world.clear_faults()
    h.fakes.world.fail_next("graph.add", UpstreamForbidden("Microsoft Graph refused (403)."))
    with pytest.raises(RotationRefused) as refused:
        await h.api.rotate(APP, record.id)
    assert refused.value.status == 400
    assert refused.value.extensions["rotation"]["status"] == "failed"


async def test_rotate_refuses_a_method_that_cannot_rotate_without_pointing_at_fields_it_never_had() -> None:
    from tests.lifecycle_harness import reauthorize_oauth

    h = Harness()
    oauth = await reauthorize_oauth(h)
    with pytest.raises(InvalidRequest) as refused:
        await h.api.rotate(oauth.app, oauth.id)
    assert refused.value.errors == ()
    record = await h.create(rotation=False)
    with pytest.raises(InvalidRequest) as disabled:
        await h.api.rotate(APP, record.id)
    assert disabled.value.errors == ()


async def test_rotate_while_a_rotation_runs_answers_409_with_its_id_and_retry_after() -> None:
    h = Harness()
    record = await h.create()
    answers: list[Exception] = []

    async def meanwhile(name: str, current: ConnectionRecord) -> None:
        if name == "after-test" and not answers:
            try:
                await h.api.rotate(APP, record.id)
            except RotationInProgress as busy:
                answers.append(busy)

    await h.services(meanwhile).connections.rotate(APP, record.id)
    assert len(answers) == 1
    busy = answers[0]
    assert isinstance(busy, RotationInProgress)
    assert busy.extensions["rotationId"]
    assert int(busy.headers["Retry-After"]) > 0


async def test_each_attempt_has_one_history_entry_with_its_own_trigger_outcome_and_duration() -> None:
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next("graph.remove", times=20)  # the new secret is in use; the old one stays to revoke
    with pytest.raises(RotationFailed):
        await h.api.rotate(APP, record.id)
    h.fakes.world.clear_faults()
    h.fakes.clock.advance(timedelta(hours=1))
    await h.api.rotate(APP, record.id)
    events = sorted(h.fakes.history.of(record.id), key=lambda e: (e.started_at, e.attempt))
    assert [(e.trigger, e.outcome, e.attempt) for e in events] == [
        ("enable", "succeeded", 1), ("manual", "failed", 1), ("resume", "succeeded", 2)]
    assert events[1].message and "graph.remove failed" in events[1].message
    assert events[2].message is None
    assert events[1].rotation_id == events[2].rotation_id
    assert all(e.duration_ms is not None and e.duration_ms < 60_000 for e in events)
    assert h.check() == []


async def test_the_runner_and_every_graph_change_are_audited_before_they_happen() -> None:
    h = Harness()
    record = await h.create()
    await h.due()
    await h.sweep()
    actions = [(r.action, r.outcome, r.actor.type) for r in h.fakes.audit.records]
    assert ("rotation.attempt", "started", "system") in actions
    assert ("rotation.attempt", "succeeded", "system") in actions
    adds = [r for r in h.fakes.audit.records if r.action == "credential.add"]
    removes = [r for r in h.fakes.audit.records if r.action == "credential.remove"]
    assert [r.outcome for r in adds] == ["started", "succeeded"] * 2  # enabling, then the scheduled rotation
    assert [r.outcome for r in removes] == ["started", "succeeded"] * 2
    after = await h.record(record.id)
    assert after is not None
    assert f"keyId {after.rotation.key_id}" in (adds[-1].detail or "")
    assert all(r.connection_id == record.id for r in adds + removes)
    for entry in h.fakes.audit.records:  # never a secret
        for password in h.fakes.world.created.values():
            assert password[1].secret not in str(entry)


def attempt_records(h: Harness, since: int) -> list[tuple[str, str | None]]:
    return [(r.outcome, r.detail) for r in h.fakes.audit.records[since:] if r.action == "rotation.attempt"]


async def test_a_claim_lost_to_another_worker_gives_its_started_record_a_skipped_outcome_saying_why() -> None:
    """(Review sweeps 5.) Two sweeps (or a sweep and POST .../rotate) read a due connection at once: the one that
    lost the claim's ETag race had written 'rotation.attempt started' and never wrote an outcome for it."""
    h = Harness()
    record = await h.create()
    await h.due()
    seen = len(h.fakes.audit.records)
    read_by_both = await h.record(record.id)
    assert read_by_both is not None
    first, second = h.services().rotator, h.services().rotator  # two workers
    claimed = await first.claim(read_by_both, trigger="schedule")
    assert claimed is not None
    assert await second.claim(read_by_both, trigger="schedule") is None  # it loses the race
    await first.run(claimed)
    records = attempt_records(h, seen)
    assert [outcome for outcome, _ in records] == ["started", "started", "skipped", "succeeded"]
    assert records[2][1] == "not claimed: another worker holds it (a sweep or a request rotating it)"
    assert h.check() == []


async def test_a_claim_an_error_stops_gives_its_started_record_a_failed_outcome_saying_what_failed() -> None:
    h = Harness()
    record = await h.create()
    await h.due()
    seen = len(h.fakes.audit.records)
    fails_once(h, "update")  # the claim's write: Table Storage fails
    due = await h.record(record.id)
    assert due is not None
    with pytest.raises(UpstreamError):
        await h.services().rotator.claim(due, trigger="schedule")
    assert attempt_records(h, seen) == [("started", "trigger schedule"),
                                        ("failed", "claiming the rotation: Table Storage failed (injected).")]
    h.lease_runs_out()
    await h.sweep()  # the connection stays due: the next sweep rotates it
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "succeeded", after.rotation.message
    assert h.check() == []


@pytest.mark.parametrize("checkpoint", ["lease-renewed", "after-add-password", "after-vault-write"])
async def test_a_worker_that_lost_its_lease_gives_its_started_record_a_skipped_outcome_saying_so(
        checkpoint: str) -> None:
    """(Review of the audit, 2.) A worker held up past its lease while another sweep took the rotation over and
    ended it stopped with ``LeaseLost`` and no outcome: the audit log showed an attempt that never ended."""
    h = Harness()
    record = await h.create()
    await h.due()
    seen = len(h.fakes.audit.records)
    first, woken = await h.held_up_at(checkpoint, h.sweep)
    await h.sweep()  # another worker takes the rotation over and ends it
    woken.set()
    await first
    records = attempt_records(h, seen)
    # (the attempt that took it over closed the first one as interrupted: it did not end within its lease)
    assert [outcome for outcome, _ in records] == ["started", "started", "interrupted", "succeeded", "skipped"], records
    assert (records[-1][1] or "").startswith("lease lost: "), records
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "succeeded" and h.check() == []


async def _claimed_with(h: Harness, checkpoint: Any) -> tuple[Any, ConnectionRecord]:
    """A rotator stopped at ``checkpoint``, and the due connection it claimed."""
    await h.due()
    rotator = h.services(checkpoint).rotator
    due = next(iter(h.fakes.connections.records.values()))
    claimed = await rotator.claim(due, trigger="schedule")
    assert claimed is not None
    return rotator, claimed


async def test_an_attempt_that_fails_on_a_connection_deleted_meanwhile_records_that_it_failed() -> None:
    """(Review of the audit, 2.) Its failure could not be written on the record, and the attempt's outcome was the
    status the record had when it was claimed: ``rotating``."""
    h = Harness()
    await h.create()

    async def fails_and_is_deleted(name: str, current: ConnectionRecord) -> None:
        if name == "lease-renewed":
            fails_once(h, "get", error=NotFound("No such connection (injected: deleted meanwhile)."))
            raise UpstreamError("Graph failed (injected).")

    rotator, claimed = await _claimed_with(h, fails_and_is_deleted)
    seen = len(h.fakes.audit.records)
    attempt = await rotator.run(claimed)
    assert attempt.error is not None
    assert attempt_records(h, seen) == [("failed", "Graph failed (injected).")]


async def test_an_attempt_a_defect_stops_records_that_it_failed_naming_the_kind_of_error() -> None:
    h = Harness()
    await h.create()

    async def defect(name: str, current: ConnectionRecord) -> None:
        if name == "lease-renewed":
            raise RuntimeError("a defect, with text nobody is to record")

    rotator, claimed = await _claimed_with(h, defect)
    seen = len(h.fakes.audit.records)
    with pytest.raises(RuntimeError):
        await rotator.run(claimed)
    assert attempt_records(h, seen) == [("failed", "RuntimeError")]


async def test_a_rotation_whose_audit_record_cannot_be_written_does_not_run() -> None:
    from shared.errors import AuditUnavailable

    h = Harness()
    record = await h.create()
    calls = len(h.fakes.world.calls)
    h.fakes.world.fail_next("audit.append")
    with pytest.raises(AuditUnavailable) as refused:
        await h.api.rotate(APP, record.id)
    assert refused.value.status == 503
    assert not [c for c in h.fakes.world.calls[calls:] if c.startswith(("graph", "store.update", "vault.write"))]
    assert (await h.record(record.id)) == record


async def test_a_graph_change_whose_audit_record_cannot_be_written_is_not_made() -> None:
    h = Harness()
    record = await h.create()
    await h.due()
    h.fakes.world.calls.clear()
    audit = h.fakes.audit

    async def append_then_fail(entry):  # type: ignore[no-untyped-def]
        if entry.action == "credential.add" and entry.outcome == "started":
            raise OSError("Table Storage is unreachable")
        audit.records.append(entry)

    audit.append = append_then_fail  # type: ignore[method-assign]
    await h.sweep()
    assert "graph.add" not in h.fakes.world.calls
    assert h.check() == []
    after = await h.record(record.id)
    assert after is not None
    assert after.rotation.status == "failed"
    assert after.rotation.key_id == record.rotation.key_id


async def test_a_certificates_validity_is_judged_by_the_services_clock() -> None:
    """A year on (the service's clock, not the machine's), a certificate issued then is valid and one that
    ended before then is refused."""
    h = Harness()
    h.fakes.clock.advance(timedelta(days=400))
    record = await h.create("cert-later", rotation=False, method="certificate")
    assert record.method == "certificate"
    expires = record.health.credential_expires_at
    assert expires is not None and expires > h.fakes.clock.now


async def test_a_body_s_fields_are_checked_before_its_name_is_looked_up() -> None:
    # A 400 that says what is wrong with the fields, not a 409 for a taken name that hides it.
    h = Harness()
    record = await h.create(name="taken", rotation=False)
    bad = {"tenantId": "not-a-guid", "clientId": record.client_id, "clientSecret": "x"}
    with pytest.raises(InvalidRequest) as refused:
        await h.api.create(APP, {"name": "taken", "method": "client-secret", "credentials": bad})
    assert [e.pointer for e in refused.value.errors] == ["/credentials/tenantId"]
    other = await h.create(name="other", rotation=False)
    with pytest.raises(InvalidRequest) as refused:
        await h.api.update(APP, other.id, {"name": "taken", "credentials": bad})
    assert [e.pointer for e in refused.value.errors] == ["/credentials/tenantId"]


async def test_a_previous_application_that_refuses_its_clean_up_does_not_stop_the_new_credential_s_rotation() -> None:
    # The previous application's owner withdrew the service's permission (often why the credentials were changed):
    # its clean-up fails, stays in the journal and is tried again; the credential in use is rotated all the same.
    h = Harness()
    record = await h.create()
    assert record.rotation.managed
    old = h.fakes.world.apps[record.client_id or ""]
    old.may_manage_itself = False
    _, credentials = h.new_application()
    changed = await h.op("patch-other-app", record.id, lambda: h.api.update(APP, record.id,
                                                                             {"credentials": credentials}))
    assert changed.status == 200
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "succeeded"
    assert h.current_secret(after) != credentials["clientSecret"]  # rotated at once, as after any change
    assert after.rotation.retire_version is not None  # the clean-up is still tracked
    assert "could not be removed yet" in (after.rotation.message or "")
    assert [p for p in old.passwords.values() if p.created_by_service]
    assert h.check() == []
    # Deleting now: what the service made on the previous application cannot even be read, so it is named.
    left_there = sorted(p.key_id for p in old.passwords.values() if p.created_by_service)
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    # The pass stopped there: the application in use was not read either.
    assert refused.value.extensions["applicationsNotRead"] == [record.client_id, after.client_id]
    assert refused.value.extensions["keyIds"] == [after.rotation.key_id]  # named by the record (nothing was read)
    assert f"application {record.client_id}, {after.client_id} could not be read" in refused.value.detail
    old.may_manage_itself = True
    h.fakes.world.fail_next("graph.remove", UpstreamForbidden("Graph refused (injected)"))
    with pytest.raises(CredentialsLeftLive) as refused:  # read, but its removal refused: its Key IDs are listed
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["applicationsNotRead"] == [after.client_id]  # the pass stopped before it
    assert refused.value.extensions["keyIds"] == [*left_there, after.rotation.key_id]
    h.fakes.clock.advance(timedelta(days=31))
    await h.sweep()  # the next rotation removes them first
    final = await h.record(record.id)
    assert final is not None and final.rotation.retire_version is None and final.rotation.status == "succeeded"
    assert not [p for p in old.passwords.values() if p.created_by_service]
    assert h.check() == []


async def test_a_change_made_conditional_with_if_match_is_made_only_at_that_version() -> None:
    from shared.errors import PreconditionFailed
    from shared.views import etag_of

    h = Harness()
    record = await h.create(rotation=False)
    seen = etag_of(record)
    renamed = await h.api.update(APP, record.id, {"description": "first"}, if_match=seen)
    assert renamed.description == "first" and etag_of(renamed) != seen
    for stale in (seen, f"W/{etag_of(renamed)}", '"999", "0"'):  # an older version, a weak tag, none of a list
        with pytest.raises(PreconditionFailed) as refused:
            await h.api.update(APP, record.id, {"description": "lost update"}, if_match=stale)
        assert refused.value.status == 412 and refused.value.headers["ETag"] == etag_of(renamed)
        with pytest.raises(PreconditionFailed):
            await h.api.delete(APP, record.id, if_match=stale)
    unchanged = await h.record(record.id)
    assert unchanged is not None and unchanged.description == "first"
    listed = f'"0", {etag_of(renamed)}'
    assert (await h.api.update(APP, record.id, {"description": "second"}, if_match=listed)).description == "second"
    assert (await h.api.update(APP, record.id, {"description": "third"}, if_match="*")).description == "third"
    await h.api.delete(APP, record.id, if_match=etag_of(await h.record(record.id)))  # type: ignore[arg-type]
    assert await h.record(record.id) is None


async def test_if_match_is_evaluated_by_every_operation_on_a_connection_before_it_changes_anything() -> None:
    """RFC 9110 13.1.1: ``If-Match`` is evaluated before the method is performed: a validation, a rotation, a
    migration (whose ``revokeOriginal`` removes a credential from the application) and a health check sent with
    one the connection does not match answer 412 with its current ETag and version, and change nothing."""
    from shared.errors import PreconditionFailed
    from shared.health import HealthChecker
    from shared.views import etag_of

    h = Harness()
    record = await h.create()
    services = h.services()
    checker = HealthChecker(services.adapters, services.connections)
    app = h.fakes.world.apps[record.client_id or ""]
    passwords = dict(app.passwords)
    history = list(h.fakes.history.of(record.id))  # the rotation the create ran
    operations = {
        "validate": lambda tag: h.api.validate(APP, record.id, if_match=tag),
        "rotate": lambda tag: h.api.rotate(APP, record.id, if_match=tag),
        "migrate": lambda tag: h.api.migrate_to_federated(APP, record.id, {"revokeOriginal": True}, if_match=tag),
        "health": lambda tag: checker.check_now(APP, record.id, if_match=tag),
    }
    for name, operation in operations.items():
        with pytest.raises(PreconditionFailed) as refused:
            await operation('"999"')
        assert refused.value.headers == {"ETag": etag_of(record)}, name
        assert refused.value.to_problem()["version"] == record.version, name
        assert await h.record(record.id) == record, name  # nothing recorded, nothing rotated or migrated
        assert dict(app.passwords) == passwords, name  # nothing added to or revoked from the application
    assert list(h.fakes.history.of(record.id)) == history
    rotated = await h.api.rotate(APP, record.id, if_match=f'"0", {etag_of(record)}')  # one of a list matches
    assert rotated.rotation.status == "succeeded" and rotated.secret_version != record.secret_version
    assert (await h.api.validate(APP, record.id, if_match="*")).status == "active"
    assert h.check() == []


@pytest.mark.parametrize("if_match", [True, False], ids=["if-match", "unconditional"])
async def test_a_conditional_change_overtaken_by_another_caller_s_change_answers_412(monkeypatch: Any,
                                                                                     if_match: bool) -> None:
    """The If-Match of a PATCH (or a DELETE) held at its read, and another caller's PATCH landed before its
    ETag-guarded write: the precondition is false now, so the answer is 412 with the current ETag (what the read's
    check answers), the status a client that sent If-Match handles (re-read, then decide). Sent without If-Match,
    the lost race stays a 409 ``concurrent-change``."""
    from shared.errors import PreconditionFailed
    from shared.views import etag_of
    from tests import fakes

    h = Harness()
    record = await h.create(rotation=False)
    tag = etag_of(record) if if_match else None
    expected = PreconditionFailed if if_match else ConcurrentChange
    for attempt, operation in enumerate((
            lambda: h.api.update(APP, record.id, {"description": "mine"}, if_match=tag),
            lambda: h.api.delete(APP, record.id, if_match=tag))):

        async def other_caller(n: int = attempt) -> None:
            h.fakes.world.clock.advance(timedelta(seconds=1))
            await h.api.update(APP, record.id, {"description": f"the other caller's {n}"})

        monkeypatch.undo()
        race = overtaken_at(monkeypatch, fakes.FakeConnections, "update", 1, other_caller)
        with pytest.raises(expected) as refused:
            await operation()
        assert race.ran and not race
        current = await h.record(record.id)
        assert current is not None and current.description == f"the other caller's {attempt}"
        assert current.status == "active"  # the DELETE did not mark it
        if if_match:
            assert refused.value.headers == {"ETag": etag_of(current)}
            assert refused.value.to_problem()["version"] == current.version
        tag = etag_of(current) if if_match else None
    assert h.check() == []


async def test_a_rotation_in_progress_409_of_a_clean_up_held_elsewhere_carries_what_the_document_promises() -> None:
    """The 409 ``rotation-in-progress`` a rotation meets when another worker holds the clean-up of the application
    the connection left carries, as every other: ``rotationId`` and ``rotationStep`` (the record's, null when no
    rotation has begun) and ``retryAfterSeconds``, the ``Retry-After`` header's seconds."""
    from shared.errors import LeaseLost

    h = Harness()
    record = await h.create()
    pending = record.evolve(rotation=record.rotation.evolve(retire_version="v0", retire_client_id=record.client_id,
                                                            retire_tenant_id=record.tenant_id))
    await h.fakes.connections.update(pending)
    api = h.api

    async def taken_over(_record: ConnectionRecord) -> ConnectionRecord:
        raise LeaseLost("Another worker took the rotation over.")

    api.rotator.retire_leased = taken_over
    with pytest.raises(RotationInProgress) as refused:
        await api.rotate(APP, record.id)
    problem = refused.value.to_problem()
    assert refused.value.headers == {"Retry-After": "5"}
    assert {key: problem[key] for key in ("rotationId", "rotationStep", "retryAfterSeconds")} == {
        "rotationId": record.rotation.rotation_id, "rotationStep": record.rotation.step, "retryAfterSeconds": 5}


async def test_a_worker_held_up_in_the_clean_up_before_its_rotation_goes_no_further_once_another_took_over() -> None:
    from shared.errors import LeaseLost
    from shared.rotation.protocol import Rotator

    h = Harness()
    record = await h.create()
    old = h.fakes.world.apps[record.client_id or ""]
    old.may_manage_itself = False  # the clean-up of the previous application waits in the journal
    _, credentials = h.new_application()
    await h.api.update(APP, record.id, {"credentials": credentials})
    old.may_manage_itself = True
    await h.due()
    driven: list[str] = []
    real_test = Rotator._test

    async def noted(self: Rotator, record: ConnectionRecord, run: object) -> ConnectionRecord:
        driven.append(self.owner)
        return await real_test(self, record, run)  # type: ignore[arg-type]

    Rotator._test = noted  # type: ignore[method-assign]
    try:
        first, woken = await h.held_up_at("after-retire", h.sweep)  # its lease runs out in the clean-up
        await h.sweep()  # another worker takes the rotation over and ends it
        taken = await h.record(record.id)
        assert taken is not None and taken.rotation.status == "succeeded" and taken.rotation.retire_version is None
        steps_of_others = len(driven)
        woken.set()
        await first  # the sweep reports the attempt as skipped: LeaseLost
        assert len(driven) == steps_of_others  # the first one drove no step of the journal it no longer holds
        after = await h.record(record.id)
        assert after is not None and (after.rotation, after.secret_version) == (taken.rotation, taken.secret_version)
        assert h.check() == []
    finally:
        Rotator._test = real_test  # type: ignore[method-assign]
    assert LeaseLost  # the error the sweep takes for "another worker holds it"


@pytest.mark.parametrize("finished_by", ["sweep", "delete"])
async def test_a_clean_up_of_the_previous_application_that_crashed_after_its_removals_is_finished_later(
        finished_by: str) -> None:
    # It disabled the previous application's vault version, then the process died before the journal forgot that
    # application: the next attempt cannot read that version, and must take the removals as done, not fail forever.
    from tests.lifecycle_harness import Crash, crash_at

    h = Harness()
    record = await h.create()
    old = h.fakes.world.apps[record.client_id or ""]

    _, credentials = h.new_application()
    with pytest.raises(Crash):
        await h.services(crash_at("after-retire")).connections.update(APP, record.id, {"credentials": credentials})
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.retire_version is not None
    assert not [p for p in old.passwords.values() if p.created_by_service]  # its removals were done
    # The credential in use is the one the user gave: the service created nothing on its application yet.
    assert not stopped.rotation.managed
    if finished_by == "delete":
        # Nothing of either application is left, nor named as unread: the application in use need not even be
        # readable.
        h.fakes.world.apps[stopped.client_id or ""].may_manage_itself = False
        await h.api.delete(APP, record.id)
        assert await h.record(record.id) is None
    else:
        await h.due()
        await h.sweep()
        after = await h.record(record.id)
        assert after is not None and after.rotation.status == "succeeded", after.rotation.message
        assert after.rotation.retire_version is None and "could not be removed" not in (after.rotation.message or "")
    assert h.check() == []


@pytest.mark.parametrize("rotation", [True, False])
async def test_a_credentials_change_whose_worker_dies_in_its_clean_up_leaves_the_connection_due(
        rotation: bool) -> None:
    """Found by a review of real crashes: with rotation on, only the change's own rotation made the connection due,
    so a worker killed while the clean-up removed the secret the service made on the application left kept the old
    schedule (30 days): that secret stayed live and the given one unrotated (the sweep's clean-up alone, had it come,
    would have left it so). The change is due with its write, and the sweep cleans up and rotates the given secret."""
    from shared.rotation.protocol import FIRST_BACKOFF, scheduled_rotation
    from tests.lifecycle_harness import Crash

    h = Harness()
    record = await h.create(rotation=rotation)
    old = h.fakes.world.apps[record.client_id or ""]
    if not rotation:  # the service made the secret in use (a rotation), then rotation was turned off
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    made = {key_id for key_id, p in old.passwords.items() if p.created_by_service}
    assert made
    changed_at = h.fakes.clock.now
    h.fakes.world.fail_next("graph.remove", Crash("the worker is killed"))  # type: ignore[arg-type]
    _, credentials = h.new_application()
    with pytest.raises(Crash):
        await h.api.update(APP, record.id, {"credentials": credentials})
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.retire_version is not None
    assert made <= set(old.passwords)  # the removal did not land
    # Due at the first retry, and the schedule index points there.
    due = stopped.rotation.next_at
    assert due is not None and due <= changed_at + FIRST_BACKOFF
    assert [e.key for e in await h.fakes.schedule.due(due) if e.connection_id == record.id] == [
        stopped.rotation.schedule_key]
    assert h.unscheduled() == []
    h.lease_runs_out()  # (the dead worker's lease on the clean-up)
    await h.sweep()  # the clean-up's retry; with rotation on, a rotation of the given secret, which cleans up first
    after = await h.record(record.id)
    assert after is not None and after.rotation.retire_version is None
    assert not made & set(old.passwords)
    assert after.rotation.key_made is rotation and after.rotation.last_rotated_at != (
        stopped.rotation.last_rotated_at if rotation else None)
    if rotation:  # rotated: due again as the schedule has it, and indexed so
        assert after.rotation.next_at == scheduled_rotation(after.rotation, after.health.credential_expires_at)
        assert after.rotation.next_at is not None and after.rotation.next_at > h.fakes.clock.now + timedelta(days=1)
    else:
        assert after.rotation.next_at is None
    assert h.unscheduled() == [] and h.check() == []


async def test_rotation_turned_on_by_a_worker_that_dies_before_its_rotation_starts_is_due_at_once() -> None:
    """Turning rotation on rotates at once (trigger ``enable``), in the request; the change is due with its write
    (``configured``: a first rotation at the first back-off), so a worker that dies between the change's write and
    the rotation's claim leaves the sweep to rotate at once all the same (a crash review's question)."""
    from shared.rotation.protocol import FIRST_BACKOFF, scheduled_rotation
    from tests.lifecycle_harness import Crash

    h = Harness()
    record = await h.create(rotation=False)
    changed_at = h.fakes.clock.now
    append = h.fakes.audit.append

    async def dies_as_the_rotation_starts(entry: Any) -> None:
        if entry.action == "rotation.attempt":
            raise Crash("the worker is killed")
        await append(entry)

    h.fakes.audit.append = dies_as_the_rotation_starts  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": True, "rotation": ROTATION})
    h.fakes.audit.append = append  # type: ignore[method-assign]
    stopped = await h.record(record.id)
    assert stopped is not None and stopped.rotation.enabled and stopped.rotation.rotation_id is None
    due = stopped.rotation.next_at
    assert due is not None and due <= changed_at + FIRST_BACKOFF
    assert h.unscheduled() == []
    h.fakes.clock.now = due
    await h.sweep()
    after = await h.record(record.id)
    assert after is not None and after.rotation.status == "succeeded" and after.rotation.key_made
    assert after.rotation.next_at == scheduled_rotation(after.rotation, after.health.credential_expires_at)
    assert h.unscheduled() == [] and h.check() == []


async def test_a_credentials_change_whose_rotation_follows_is_due_as_the_schedule_has_it() -> None:
    """The change is due at the clean-up's first retry when written; the rotation that follows it in the request
    sets the next due time as before, and the schedule index holds that one entry."""
    from shared.rotation.protocol import scheduled_rotation

    h = Harness()
    record = await h.create()
    _, credentials = h.new_application()
    changed = await h.api.update(APP, record.id, {"credentials": credentials})
    state = changed.rotation
    assert state.status == "succeeded" and state.key_made and state.retire_version is None
    assert state.next_at == scheduled_rotation(state, changed.health.credential_expires_at)
    assert state.next_at is not None and state.next_at > h.fakes.clock.now + timedelta(days=1)
    assert [k for k in h.fakes.schedule.keys if record.id in k] == [state.schedule_key]
    assert h.check() == []


async def test_a_validation_that_a_delete_overtakes_answers_404_not_a_vault_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create()
    overtaken_at(monkeypatch, FakeVault, "get", 1, lambda: h.api.delete(APP, record.id))
    with pytest.raises(NotFound, match="deleted while this request read it"):
        await h.api.validate(APP, record.id)


async def test_a_validation_whose_credential_another_request_replaced_answers_409(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    record = await h.create(rotation=False)
    password = h.fakes.world.add(record.client_id or "", "new from the owner")
    overtaken_at(monkeypatch, FakeVault, "get", 1, lambda: h.api.update(APP, record.id, {
        "credentials": h.credentials(record.client_id or "", password)}))
    with pytest.raises(ConcurrentChange, match="credential changed while this request read it"):
        await h.api.validate(APP, record.id)


async def test_a_version_lost_from_the_vault_with_the_connection_unchanged_stays_an_upstream_failure() -> None:
    h = Harness()
    record = await h.create(rotation=False)
    h.fakes.world.fail_next("vault.get", SecretGone(f"Key Vault has no version of {record.secret_name}."))
    with pytest.raises(SecretGone):
        await h.api.validate(APP, record.id)


async def test_a_rotation_that_failed_is_a_failed_span_with_its_error_type(exporter: Any) -> None:
    h = Harness()
    record = await h.create()
    exporter.clear()
    h.fakes.world.fail_next("graph.add", UpstreamForbidden("Microsoft Graph refused (403)."))
    with pytest.raises(RotationRefused):
        await h.api.rotate(APP, record.id)
    await h.api.rotate(APP, record.id)
    failed, succeeded = [s for s in exporter.get_finished_spans() if s.name == "rotation"]
    assert (failed.attributes["outcome"], failed.attributes["error.type"]) == ("failed", "UpstreamForbidden")
    assert failed.status.status_code.name == "ERROR"
    assert succeeded.attributes["outcome"] == "succeeded" and "error.type" not in succeeded.attributes
    assert succeeded.status.status_code.name == "UNSET"


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
@pytest.mark.parametrize("stops", ["the answer to the last removal is lost", "the journal after it fails"])
async def test_a_delete_stopped_right_after_removing_the_credential_in_use_is_finished_by_the_next_one(
        stops: str, method: str) -> None:
    """Left open by session 12: the removal of the credential in use (the last, a rotation's) went through, then
    its answer was lost, or Table Storage failed the journal that says the removals are done. The connection was
    put back as active with a revoked credential (I1), or stayed marked; either way the next DELETE signed in with
    that credential, was refused, and answered 409 for good. The removal is journaled ahead of it now."""
    h = Harness()
    record = await h.create(method=method)
    in_use = record.rotation.key_id
    assert in_use is not None and record.rotation.key_made
    world = h.fakes.world
    watching = world.on_revoke
    if stops == "the answer to the last removal is lost":
        world.fail_next("graph.removal.lost")
    else:
        def then_the_store_fails(client: str, credential: Any) -> None:
            if watching is not None:
                watching(client, credential)
            world.fail_next("store.update")

        world.on_revoke = then_the_store_fails
    await stops_and_says_to_send_it_again(h, record.id)
    world.on_revoke = watching
    assert in_use not in {*world.apps[record.client_id or ""].passwords, *world.apps[record.client_id or ""].keys}
    marked = await h.record(record.id)
    assert marked is not None and marked.status == "deleting"  # never active with a revoked credential
    assert h.check() == []
    deleted = await delete_once_the_refusal_holds(h, record.id)
    assert (deleted.removed_key_ids, deleted.key_ids_left_live) == ([in_use], [])
    assert await h.record(record.id) is None
    assert h.check() == []


async def test_a_delete_whose_last_removal_was_sent_and_refused_puts_the_connection_back_and_says_why() -> None:
    """The journal ahead of the last removal does not turn a refusal (a 4xx: nothing was removed) into a stopped
    DELETE: the connection is as it was, its credential still works, and the answer names what stays live."""
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next("graph.remove", UpstreamForbidden("Graph refused (injected)"))
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["keyIds"] == [record.rotation.key_id]
    kept = await h.record(record.id)
    assert kept is not None and kept.status == "active" and kept.rotation == record.rotation
    assert h.check() == []
    assert (await h.api.delete(APP, record.id)).removed_key_ids == [record.rotation.key_id]


async def test_a_forced_delete_whose_previous_application_refuses_still_cleans_up_the_one_in_use() -> None:
    """Left open by session 12: a forced DELETE stopped its pass at the first application that failed. With the
    clean-up of the application left behind refused, the application in use was not tried, and what a rotation
    made there was listed as left live, though it could be removed."""
    h = Harness()
    record = await h.create()
    old = h.fakes.world.apps[record.client_id or ""]
    left_behind = record.rotation.key_id
    old.may_manage_itself = False
    client_id, credentials = h.new_application()
    moved = await h.api.update(APP, record.id, {"credentials": credentials})
    assert moved.rotation.retire_client_id == old.client_id  # its clean-up waits
    await h.due()
    await h.sweep()  # its clean-up fails again; the sweep rotates all the same
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.retire_client_id == old.client_id
    made = rotated.rotation.key_id
    assert made is not None and rotated.rotation.key_made and rotated.client_id == client_id
    forced = await h.api.delete(APP, record.id, force=True)
    assert forced.removed_key_ids == [made]
    assert made not in h.fakes.world.apps[client_id].passwords
    assert forced.applications_not_read == [old.client_id]
    assert left_behind in old.passwords and forced.key_ids_left_live == []  # found by its display name
    assert await h.record(record.id) is None


async def test_a_credential_in_use_that_expired_after_its_removal_was_journaled_is_not_taken_for_removed() -> None:
    """Found by the stateful test (seed 60001): the audit log failed right before the last removal was sent (so it
    was not), and the credential in use expired before the DELETE came again. It no longer signs in, but it is
    still on the application: the DELETE must not list it as removed (I2), and answers as for any credential that
    cannot sign in."""
    h = Harness()
    record = await h.create()
    in_use = record.rotation.key_id
    expires = record.health.credential_expires_at
    assert in_use is not None and expires is not None
    h.fakes.world.fail_next("audit.append")  # the removal's "started" record: the removal is not sent
    with pytest.raises(ServiceError) as stopped:
        await h.api.delete(APP, record.id)
    assert stopped.value.status >= 500 and "send the DELETE again" in stopped.value.detail
    h.fakes.clock.now = expires + timedelta(minutes=1)
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["keyIds"] == [in_use]
    forced = await h.api.delete(APP, record.id, force=True)
    assert (forced.removed_key_ids, forced.key_ids_left_live) == ([], [in_use])
    assert in_use in h.fakes.world.apps[record.client_id or ""].passwords and await h.record(record.id) is None


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_the_clean_up_of_an_application_left_behind_removes_the_credential_it_signs_in_with_last(
        method: str) -> None:
    """Left open by session 12: the clean-up of the application a connection left signed in with the credential it
    used there, a rotation's, and removed the service's credentials in no set order. Removing that one first, then
    failing, left the clean-up unable to sign in again, failing until a forced DELETE."""
    h = Harness(method=method)
    record = await h.create()
    client_id = record.client_id or ""
    signer = record.rotation.key_id
    world = h.fakes.world
    marker = connection_marker(record.id) + "interrupted"
    if method == "certificate":
        world.add_certificate(client_id, marker, by_service=True)
    else:
        world.add(client_id, marker, by_service=True)
    watching = world.on_revoke

    def refuse_the_next(client: str, credential: Any) -> None:  # the first removal goes through, the next 403s
        if watching is not None:
            watching(client, credential)
        world.on_revoke = watching
        world.fail_next("graph.remove", UpstreamForbidden("Graph refused (injected)"))

    world.on_revoke = refuse_the_next
    _, credentials = h.new_application()
    await h.api.update(APP, record.id, {"credentials": credentials})  # its clean-up fails once, halfway
    await h.settle()
    old = world.apps[client_id]
    assert signer not in {*old.passwords, *old.keys}
    assert not [c for c in [*old.passwords.values(), *old.keys.values()] if c.created_by_service]
    done = await h.record(record.id)
    assert done is not None and done.rotation.retire_version is None
    assert h.check() == []


async def test_a_removal_pass_journals_ahead_the_removal_of_the_credential_it_signs_in_with_alone() -> None:
    """A removal pass (a DELETE's) writes ``removing_key_id`` right before it removes the credential it signs in
    with, the last; not before the others of the service's it removes first (were one of them taken for the last,
    a refusal of the next sign-in would count the credential in use as removed)."""
    h = Harness()
    record = await h.create()
    in_use = record.rotation.key_id
    leftover = h.fakes.world.add(record.client_id or "", connection_marker(record.id) + "interrupted",
                                 by_service=True)
    journaled: list[str | None] = []

    async def journal(entry: Any) -> None:
        journaled.append(entry(record.rotation).removing_key_id)

    removed = await h.services().rotator.remove_all(record, journal=journal)
    assert removed == [leftover.key_id, in_use]
    assert journaled == [in_use]


async def _stopped_with_the_last_removal_journaled(h: Harness) -> ConnectionRecord:
    """A DELETE whose removal of the credential in use (journaled ahead) answered a 502 before Graph applied it."""
    record = await h.create()
    h.fakes.world.fail_next("graph.remove")
    await stops_and_says_to_send_it_again(h, record.id)
    marked = await h.record(record.id)
    assert marked is not None and marked.rotation.removing_key_id == record.rotation.key_id
    assert record.rotation.key_id in h.fakes.world.apps[record.client_id or ""].passwords
    return record


@pytest.mark.parametrize("refusal", ["AADSTS7000112: Application is disabled.",
                                     "AADSTS53003: Access has been blocked by Conditional Access policies."])
async def test_a_sign_in_refused_for_another_reason_than_an_unknown_credential_is_not_taken_for_the_removal(
        refusal: str) -> None:
    """Found by a review: once the last removal was journaled, any refusal of the next DELETE's sign-in was taken
    for that removal done. The application disabled, or a Conditional Access policy, tells nothing of it: the
    credential stayed live, listed as removed, with nothing tracking it (I2)."""
    h = Harness()
    record = await _stopped_with_the_last_removal_journaled(h)
    in_use = record.rotation.key_id
    code = refusal.partition(":")[0]
    h.fakes.world.fail_next("graph.token", CredentialRejected(refusal, extensions={"aadstsCode": code}))
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert refused.value.extensions["keyIds"] == [in_use] or refused.value.extensions["applicationsNotRead"]
    marked = await h.record(record.id)
    assert marked is not None and marked.status == "deleting" and marked.rotation.removing_key_id == in_use
    assert h.check() == []
    deleted = await h.api.delete(APP, record.id)
    assert (deleted.removed_key_ids, deleted.key_ids_left_live) == ([in_use], [])
    assert in_use not in h.fakes.world.apps[record.client_id or ""].passwords


@pytest.mark.parametrize("applied", [False, True], ids=["failed", "applied-answer-lost"])
async def test_a_journal_of_the_last_removal_that_table_storage_fails_sends_no_removal_and_says_so(
        applied: bool) -> None:
    """Found by a review: Table Storage failing the journal ahead of the last removal was answered 409 "could not
    be removed ... Grant the permission", and, when the write had been applied, "nothing was deleted" while the
    connection stayed marked. The removal is not sent; the answer is Table Storage's 502, and says what is so."""
    h = Harness()
    record = await h.create()
    in_use = record.rotation.key_id
    fails_once(h, "update", 2, applied=applied)  # 1: the deletion mark; 2: the journal ahead of the last removal
    with pytest.raises(ServiceError) as failed:
        await h.api.delete(APP, record.id)
    assert failed.value.status == 502 and not isinstance(failed.value, CredentialsLeftLive)
    after = await h.record(record.id)
    assert after is not None
    if applied:
        assert "marked as being deleted; send the DELETE again" in failed.value.detail
        assert after.status == "deleting"
    else:
        assert "The connection was not deleted; send the DELETE again." in failed.value.detail
        assert after.status == "active" and after.rotation == record.rotation
    assert in_use in h.fakes.world.apps[record.client_id or ""].passwords  # never sent
    assert h.check() == []
    assert (await h.api.delete(APP, record.id)).removed_key_ids == [in_use]


async def test_a_refused_delete_keeps_the_clean_up_of_the_application_left_behind_that_it_finished() -> None:
    """Found by a review (older than the journal): the clean-up of the application the connection left went
    through (its credential removed last), then Graph refused a removal at the application in use. Putting the
    connection back brought that clean-up back too: it could never sign in again, and every plain DELETE, PATCH of
    credentials and rotation answered 409 for good."""
    h = Harness()
    record = await h.create()
    old = h.fakes.world.apps[record.client_id or ""]
    old.may_manage_itself = False
    client_id, credentials = h.new_application()
    await h.api.update(APP, record.id, {"credentials": credentials})
    await h.due()
    await h.sweep()  # rotates on the new application; the old one's clean-up still refused
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.retire_client_id == old.client_id
    retired = rotated.rotation.retire_version
    old.may_manage_itself = True
    new = h.fakes.world.apps[client_id]
    new.may_manage_itself = False
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert "the connection was not deleted" in refused.value.detail
    assert not [c for c in old.passwords.values() if c.created_by_service]  # that clean-up is done
    after = await h.record(record.id)
    assert after is not None and after.status == "active" and after.rotation.retire_version is None
    assert retired is not None and not h.fakes.vault.version(record.secret_name, retired).enabled
    assert h.check() == []
    new.may_manage_itself = True
    assert (await h.api.delete(APP, record.id)).removed_key_ids == [rotated.rotation.key_id]


async def test_a_refused_delete_whose_read_of_another_delete_fails_is_answered_as_refused() -> None:
    """Found by a review: after Graph refused, the read that asks whether another DELETE finished the connection
    failed, and its 502 was the answer: without the refusal's reason, and with the connection left marked."""
    h = Harness()
    record = await h.create()
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False
    fails_once(h, "get", 2)  # 1: the DELETE's own read; 2: whether another DELETE finished it
    with pytest.raises(CredentialsLeftLive):
        await h.api.delete(APP, record.id)
    after = await h.record(record.id)
    assert after is not None and after.status == "active"


async def test_a_forced_delete_whose_last_removal_has_no_answer_deletes_and_lists_it_as_perhaps_live() -> None:
    """A forced DELETE does not stop at an unknown outcome: it deletes, and lists the credential in use among those
    left live (it may be: the answer did not say), as the audit log does."""
    h = Harness()
    record = await h.create()
    in_use = record.rotation.key_id
    h.fakes.world.fail_next("graph.removal.lost")
    forced = await h.api.delete(APP, record.id, force=True)
    assert (forced.removed_key_ids, forced.key_ids_left_live) == ([], [in_use])
    assert await h.record(record.id) is None
    [noted] = [r for r in h.fakes.audit.records if r.outcome == "credentials-left-live"]
    assert f"Key IDs {in_use}" in (noted.detail or "")


async def test_a_refused_delete_never_puts_back_a_connection_another_delete_marked_on_top(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a second review (a regression of the journal ahead of the last removal): DELETE A's journal was
    written on top of DELETE B's mark; Graph then refused A's removal, and A put the connection back, active, over
    B's mark. B's removal went through: active with its credential revoked (I1), and stuck for good."""
    import asyncio

    from tests import fakes

    h = Harness()
    record = await h.create()
    in_use = record.rotation.key_id
    b_marked, b_removing, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    vault_get, remove = fakes.FakeVault.get, fakes.FakeGraph.remove_password

    def who() -> str:
        task = asyncio.current_task()
        return task.get_name() if task else ""

    async def get(self: Any, name: str, version: str) -> Any:  # after its mark, A waits for B's on top
        if who() == "A":
            await b_marked.wait()
        elif who() == "B":
            b_marked.set()
        return await vault_get(self, name, version)

    async def remove_password(self: Any, object_id: str, key_id: str) -> None:
        if who() == "A":
            await b_removing.wait()
            raise UpstreamForbidden("Graph refused (injected)")
        if who() == "B":
            b_removing.set()
            await a_done.wait()
        await remove(self, object_id, key_id)

    monkeypatch.setattr(fakes.FakeVault, "get", get)
    monkeypatch.setattr(fakes.FakeGraph, "remove_password", remove_password)

    async def delete() -> object:
        try:
            return await h.api.delete(APP, record.id)
        except ServiceError as error:
            return error
        finally:
            if who() == "A":
                a_done.set()

    a = asyncio.create_task(delete(), name="A")
    await asyncio.sleep(0)  # A marks first
    b = asyncio.create_task(delete(), name="B")
    answer_a, answer_b = await asyncio.gather(a, b)
    assert isinstance(answer_a, CredentialsLeftLive) and "still marked" in answer_a.detail
    assert not isinstance(answer_b, ServiceError) and answer_b.removed_key_ids == [in_use]  # type: ignore[attr-defined]
    assert await h.record(record.id) is None
    assert h.check() == []


async def test_a_secret_removed_by_a_delete_whose_answer_was_lost_counts_as_removed_even_once_expired() -> None:
    """Found by a second review: a secret removed by a DELETE that had no answer, which then passed its end date,
    was never taken for removed (the expiry rule is for a certificate's key: an expired secret still there is
    refused with its own code, AADSTS7000222)."""
    h = Harness()
    record = await h.create()
    in_use, expires = record.rotation.key_id, record.health.credential_expires_at
    assert in_use is not None and expires is not None
    h.fakes.world.fail_next("graph.removal.lost")
    with pytest.raises(ServiceError):
        await h.api.delete(APP, record.id)
    h.fakes.clock.now = expires + timedelta(minutes=1)
    deleted = await delete_once_the_refusal_holds(h, record.id)
    assert (deleted.removed_key_ids, deleted.key_ids_left_live) == ([in_use], [])


@pytest.mark.parametrize("past", ["store.delete", "vault.delete"])
async def test_a_plain_delete_after_a_forced_one_that_stopped_past_its_unanswered_last_removal_points_to_force(
        past: str) -> None:
    """Found by a second review: the forced DELETE had cleaned the vault up; every plain DELETE then read the
    version in use, found it gone, and took that for an unknown outcome: 502 "send the DELETE again", for good."""
    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next("graph.removal.lost")
    h.fakes.world.fail_next(past)
    await stops_and_says_to_send_it_again(h, record.id, force=True)
    with pytest.raises(CredentialsLeftLive) as refused:
        await h.api.delete(APP, record.id)
    assert "?force=true" in refused.value.detail
    forced = await h.api.delete(APP, record.id, force=True)
    assert forced.key_ids_left_live == [record.rotation.key_id]
    assert await h.record(record.id) is None


def _arm_once_removed(h: Harness, client_id: str, removals: int, fault: str) -> list[int]:
    """Arm ``fault`` once Graph has applied the ``removals``-th removal from now at the application ``client_id``
    (``graph.removal.lost``: the answer to that same removal is lost; ``graph.remove``: the next one fails before
    it is made). Returns the count of removals there, kept as they are made."""
    world = h.fakes.world
    watching, seen = world.on_revoke, [0]

    def arm(client: str, credential: Any) -> None:
        if watching is not None:
            watching(client, credential)
        seen[0] += client == client_id
        if seen[0] == removals:
            world.on_revoke = watching
            world.fail_next(fault)

    world.on_revoke = arm
    return seen


async def _left_behind_with_its_last_removal_unanswered(h: Harness, *, by: str, applied: bool = True,
                                                        ) -> tuple[ConnectionRecord, str]:
    """A connection moved to another application (rotation off, so the clean-up of the one it left is all that
    runs) whose clean-up removed a stray of the service's, then sent the removal of the credential it signs in
    with, last, and had no answer: the removal went through (``applied``) or not. ``by``: the credentials change's
    clean-up, or a DELETE's (the change's refused first). Returns the connection as it was before and the Key ID
    of that credential."""
    record = await h.create()
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    client_id = record.client_id or ""
    signer = record.rotation.key_id
    assert signer is not None and record.rotation.key_made
    world = h.fakes.world
    old = world.apps[client_id]
    marker = connection_marker(record.id) + "interrupted"
    if h.method == "certificate":
        world.add_certificate(client_id, marker, by_service=True)
    else:
        world.add(client_id, marker, by_service=True)
    # the stray, then the one it signs in with
    removals = (_arm_once_removed(h, client_id, 2, "graph.removal.lost") if applied
                else _arm_once_removed(h, client_id, 1, "graph.remove"))
    _, credentials = h.new_application()
    if by == "delete":
        old.may_manage_itself = False
        await h.api.update(APP, record.id, {"credentials": credentials})  # its clean-up waits
        old.may_manage_itself = True
        with pytest.raises(CredentialsLeftLive) as refused:
            await h.api.delete(APP, record.id)
        assert "the connection was not deleted" in refused.value.detail
    else:
        await h.api.update(APP, record.id, {"credentials": credentials})
    assert removals == [2 if applied else 1] and (signer not in {*old.passwords, *old.keys}) == applied
    assert [c.key_id for c in [*old.passwords.values(), *old.keys.values()] if c.created_by_service] == (
        [] if applied else [signer])
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.status == "active"
    assert waiting.rotation.retire_client_id == client_id and waiting.rotation.retire_removing_key_id == signer
    assert h.check() == []
    return record, signer


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
@pytest.mark.parametrize("by", ["credentials-change", "delete"])
@pytest.mark.parametrize("then", ["the sweep", "a delete"])
@pytest.mark.parametrize("applied", [True, False], ids=["removed", "not-removed"])
async def test_a_clean_up_of_an_application_left_behind_whose_last_removal_had_no_answer_is_finished_next_time(
        method: str, by: str, then: str, applied: bool) -> None:
    """Left open by session 13: the clean-up of the application a connection left removes the credential it signs
    in with last; when the answer to that removal was lost, nothing said so, and every later pass signed in with
    the removed credential and was refused: the sweep retried for good, a credentials change, a rotation and a
    plain DELETE answered 409. That removal is journaled ahead of it now (``retire_removing_key_id``), and that
    credential then refused as unknown, still ``REMOVAL_CONFIRMATION_SECONDS`` after it first was, means the
    clean-up is done."""
    h = Harness(method=method)
    record, signer = await _left_behind_with_its_last_removal_unanswered(h, by=by, applied=applied)
    retired = (await h.record(record.id) or record).rotation.retire_version
    assert retired is not None
    if then == "the sweep":
        await h.settle()
        done = await h.record(record.id)
        assert done is not None and done.rotation.retire_version is None
        assert done.rotation.retire_removing_key_id is None and done.rotation.failures == 0
        assert not h.fakes.vault.version(record.secret_name, retired).enabled
    else:
        if applied:  # refused at once: proof only once the refusal still comes after the window
            unconfirmed = await _clean_up_pass(h, record.id, "a delete")
            assert unconfirmed is not None and unconfirmed.extensions["keyIds"] == [signer]
            h.fakes.clock.advance(timedelta(seconds=h.fakes.adapters.settings.removal_confirmation_seconds))
        deleted = await h.api.delete(APP, record.id)
        assert (deleted.removed_key_ids, deleted.key_ids_left_live) == ([signer], [])
        assert await h.record(record.id) is None
    old = h.fakes.world.apps[record.client_id or ""]
    assert signer not in {*old.passwords, *old.keys}
    assert h.check() == []


UNKNOWN_SECRET = CredentialRejected("AADSTS7000215: Invalid client secret provided.",
                                    extensions={"aadstsCode": "AADSTS7000215"})
UNKNOWN_KEY = CredentialRejected("AADSTS700027: Client assertion contains an invalid signature.",
                                 extensions={"aadstsCode": "AADSTS700027"})
PASSES = ["the sweep", "a credentials change", "a delete"]


async def _clean_up_pass(h: Harness, connection_id: str, by: str) -> ServiceError | None:
    """One pass of the clean-up of the application a connection left, ``by`` the sweep (once it is due), a change
    of credentials to a new application (which finishes it first), or a plain DELETE; the problem a request
    answered (None: it went through, or the sweep's pass)."""
    if by == "the sweep":
        await h.due()
        await h.sweep()
        return None
    try:
        if by == "a credentials change":
            await h.api.update(APP, connection_id, {"credentials": h.new_application()[1]})
        else:
            await h.api.delete(APP, connection_id)
    except CredentialsLeftLive as refused:
        return refused
    return None


@pytest.mark.parametrize("by", PASSES)
@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_clean_up_left_behind_refused_right_after_its_last_removal_failed_is_not_taken_for_done(
        method: str, by: str) -> None:
    """(Review of the clean-ups' confirmation.) The last removal of a clean-up failed unmade (a 5xx); the next
    pass's sign-in came to a part of Entra ID that did not know the credential yet (one a rotation had just made):
    taken for the removal, the clean-up was forgotten and the credential left live on the application, tracked by
    nothing. As a DELETE's, that refusal counts only once it still comes ``REMOVAL_CONFIRMATION_SECONDS`` after
    the first (journaled: ``retire_removing_refused_at``); until then the clean-up fails as one that could not
    finish (a request answers 409 with Retry-After), and by then the credential signs in, and is removed."""
    h = Harness(method=method)
    record, signer = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change", applied=False)
    window = h.fakes.adapters.settings.removal_confirmation_seconds
    h.fakes.world.fail_next("graph.token", UNKNOWN_KEY if method == "certificate" else UNKNOWN_SECRET)
    refused = await _clean_up_pass(h, record.id, by)
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.status == "active" and waiting.rotation.retire_client_id == record.client_id
    assert waiting.rotation.retire_removing_key_id == signer
    assert waiting.rotation.retire_removing_refused_at == h.fakes.clock.now
    assert h.fakes.world.credential(record.client_id or "", signer) is not None and h.check() == []
    if by == "the sweep":
        assert refused is None and waiting.rotation.lease_owner is None
        assert "could not be removed yet" in (waiting.rotation.message or "")
        assert [r.outcome for r in h.fakes.audit.records if r.action == "rotation.clean-up"][-1] == "failed"
    else:
        assert refused is not None and refused.status == 409 and refused.headers["Retry-After"] == str(int(window))
        assert f"{window:g} s after it first did" in refused.detail
    if by == "a delete":
        assert refused is not None and refused.extensions["keyIds"] == [signer]
    h.fakes.clock.advance(timedelta(seconds=window))
    assert await _clean_up_pass(h, record.id, by) is None  # it signs in: removed
    assert h.fakes.world.credential(record.client_id or "", signer) is None
    done = await h.record(record.id)
    assert done is None if by == "a delete" else (done is not None and not done.rotation.cleaning_up)
    assert h.check() == []


@pytest.mark.parametrize("by", PASSES)
async def test_a_clean_up_left_behind_whose_credential_is_still_refused_after_the_window_is_done(by: str) -> None:
    """The last removal of a clean-up was made and its answer lost: the next pass's sign-in is refused as unknown,
    and that refusal is the removal once it still comes ``REMOVAL_CONFIRMATION_SECONDS`` after the first; the
    wait counts from the first refusal, not from the last."""
    h = Harness()
    record, signer = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change")
    window = int(h.fakes.adapters.settings.removal_confirmation_seconds)
    refused = await _clean_up_pass(h, record.id, by)
    first = h.fakes.clock.now
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.cleaning_up
    assert waiting.rotation.retire_removing_refused_at == first
    if by == "the sweep":
        assert waiting.rotation.next_at is not None and waiting.rotation.next_at >= first + timedelta(seconds=window)
    else:
        assert refused is not None and refused.headers["Retry-After"] == str(window)
        assert refused.extensions["keyIds"] == [signer] if by == "a delete" else "reason" in refused.extensions
        h.fakes.clock.advance(timedelta(seconds=window - 1))
        still = await _clean_up_pass(h, record.id, by)
        assert still is not None and still.headers["Retry-After"] == "1"
        kept = await h.record(record.id)
        assert kept is not None and kept.rotation.retire_removing_refused_at == first
        h.fakes.clock.advance(timedelta(seconds=1))
    assert await _clean_up_pass(h, record.id, by) is None
    done = await h.record(record.id)
    if by == "a delete":
        assert done is None
    else:
        assert done is not None and not done.rotation.cleaning_up and done.rotation.retire_removing_refused_at is None
        assert done.rotation.failures == 0
    assert h.check() == []


async def test_the_sweep_comes_back_to_a_clean_up_waiting_for_its_confirmation_when_the_refusal_can_count() -> None:
    """(Review of the fixes.) A window longer than the back-off (here an hour against five minutes): the sweep's
    passes before its end would only count failures; it comes back when the refusal can count, once."""
    h = Harness(fakes=build_fakes({"REMOVAL_CONFIRMATION_SECONDS": "3600"}))
    record, _ = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change")
    before = await h.record(record.id)
    assert before is not None
    assert await _clean_up_pass(h, record.id, "the sweep") is None
    first = h.fakes.clock.now
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.retire_removing_refused_at == first
    assert waiting.rotation.next_at == first + timedelta(hours=1)
    assert waiting.rotation.failures == before.rotation.failures + 1
    h.fakes.clock.advance(timedelta(hours=1))
    await h.sweep()
    done = await h.record(record.id)
    assert done is not None and not done.rotation.cleaning_up and done.rotation.failures == 0
    assert h.check() == []


async def test_a_clean_up_whose_credential_signs_in_again_after_a_refusal_starts_its_wait_anew() -> None:
    """A refusal, then a pass whose sign-in works (the credential had not reached that part of Entra ID) and whose
    removal fails again unmade: the removal is sent anew, and the first refusal forgotten with it. A refusal after
    that is a first one again, however long after the earlier one it comes; once the credential signs in, it is
    removed."""
    h = Harness()
    record, signer = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change", applied=False)
    window = timedelta(seconds=h.fakes.adapters.settings.removal_confirmation_seconds)
    world = h.fakes.world
    world.fail_next("graph.token", UNKNOWN_SECRET)
    assert await _clean_up_pass(h, record.id, "a credentials change") is not None
    h.fakes.clock.advance(window / 2)
    world.fail_next("graph.remove")  # it signs in; its removal, sent again, fails unmade (a 5xx)
    assert await _clean_up_pass(h, record.id, "a credentials change") is not None
    sent_again = await h.record(record.id)
    assert sent_again is not None and sent_again.rotation.retire_removing_key_id == signer
    assert sent_again.rotation.retire_removing_refused_at is None
    h.fakes.clock.advance(window)
    world.fail_next("graph.token", UNKNOWN_SECRET)
    refused = await _clean_up_pass(h, record.id, "a credentials change")
    assert refused is not None and refused.headers["Retry-After"] == str(int(window.total_seconds()))
    assert world.credential(record.client_id or "", signer) is not None and h.check() == []
    h.fakes.clock.advance(window)
    assert await _clean_up_pass(h, record.id, "a credentials change") is None
    assert world.credential(record.client_id or "", signer) is None and h.check() == []


@pytest.mark.parametrize("by", PASSES)
async def test_with_no_confirmation_window_a_clean_up_whose_credential_is_refused_is_done_at_once(by: str) -> None:
    """``REMOVAL_CONFIRMATION_SECONDS=0``: the wait is off, for a clean-up as for a DELETE."""
    h = Harness(fakes=build_fakes({"REMOVAL_CONFIRMATION_SECONDS": "0"}))
    record, _ = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change")
    assert await _clean_up_pass(h, record.id, by) is None
    done = await h.record(record.id)
    assert done is None if by == "a delete" else (done is not None and not done.rotation.cleaning_up)
    assert h.check() == []


async def test_a_forced_delete_lists_a_credential_left_behind_whose_removal_is_not_confirmed_as_left_live() -> None:
    h = Harness()
    record, signer = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change")
    forced = await h.api.delete(APP, record.id, force=True)  # at once: Entra's refusal is not proof yet
    assert signer in forced.key_ids_left_live and signer not in forced.removed_key_ids
    assert await h.record(record.id) is None


@pytest.mark.parametrize("refusal", ["AADSTS7000112: Application is disabled.",
                                     "AADSTS53003: Access has been blocked by Conditional Access policies."])
async def test_a_clean_up_left_behind_refused_for_another_reason_than_an_unknown_credential_is_not_done(
        refusal: str) -> None:
    """The journal of a clean-up's last removal does not turn any refusal into that removal done: the application
    disabled, or a Conditional Access policy, says nothing of it, and the clean-up waits as before."""
    h = Harness()
    record, _ = await _left_behind_with_its_last_removal_unanswered(h, by="credentials-change")
    code = refusal.partition(":")[0]
    h.fakes.world.fail_next("graph.token", CredentialRejected(refusal, extensions={"aadstsCode": code}))
    with pytest.raises(CredentialsLeftLive):
        await h.api.update(APP, record.id, {"credentials": h.new_application()[1]})
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.retire_removing_key_id is not None


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_clean_up_left_behind_whose_credential_expired_after_its_last_removal_failed_is_done_unlisted(
        method: str) -> None:
    """The last removal of a clean-up journaled and sent, and not made (a 5xx); that credential then expired. It
    no longer signs in (Entra's AADSTS7000222 for a secret; for a certificate, AADSTS700027, as for one removed),
    and everything else there was removed first: the clean-up is done. The credential is still on the
    application, expired, so a DELETE lists it neither as removed nor as live. (A review found an expired
    certificate listed as removed.)"""
    h = Harness(method=method)
    record, signer = await _left_behind_with_its_last_removal_unanswered(h, by="delete", applied=False)
    ends = h.fakes.world.credential(record.client_id or "", signer)
    assert ends is not None and ends.end is not None
    h.fakes.clock.now = ends.end + timedelta(minutes=1)
    deleted = await h.api.delete(APP, record.id)
    assert (deleted.removed_key_ids, deleted.key_ids_left_live, deleted.applications_not_read) == ([], [], [])
    assert h.fakes.world.credential(record.client_id or "", signer) is not None and await h.record(record.id) is None
    assert h.check() == []


async def _left_behind_waiting_for_the_sweep(h: Harness, *, rotation: bool) -> ConnectionRecord:
    """A connection moved to another application whose clean-up of the one it left was refused once (a 403): it
    waits for the sweep, which then loses the answer to that clean-up's last removal."""
    record = await h.create()
    if not rotation:
        await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    client_id = record.client_id or ""
    world = h.fakes.world
    world.add(client_id, connection_marker(record.id) + "interrupted", by_service=True)
    world.apps[client_id].may_manage_itself = False
    await h.api.update(APP, record.id, {"credentials": h.new_application()[1]})
    world.apps[client_id].may_manage_itself = True
    _arm_once_removed(h, client_id, 2, "graph.removal.lost")
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.retire_client_id == client_id
    return waiting


async def test_the_sweep_whose_clean_up_stops_past_its_journal_backs_off_and_gives_the_lease_back() -> None:
    """Found by a review: the journal of the clean-up's last removal is a write; the sweep's back-off was then
    written over the record as it was before it, refused, and the sweep kept the lease (every request answered 409
    until it ran out) and recorded no failure."""
    h = Harness()
    waiting = await _left_behind_waiting_for_the_sweep(h, rotation=False)
    h.fakes.clock.now = (waiting.rotation.next_at or h.fakes.clock.now) + timedelta(minutes=1)
    await h.sweep()
    after = await h.record(waiting.id)
    assert after is not None and after.rotation.lease_owner is None
    assert after.rotation.failures == waiting.rotation.failures + 1 and after.rotation.retire_removing_key_id
    await h.settle()
    assert (await h.record(waiting.id) or after).rotation.retire_version is None
    assert h.check() == []


async def test_a_rotation_whose_clean_up_first_stops_past_its_journal_still_rotates() -> None:
    """Found by a review: a rotation first tries the clean-up of the application left behind; once that wrote its
    journal and failed, the rotation went on from the record as it was before, and stopped (LeaseLost) at its
    first step, holding the lease. The clean-up's failure does not stop the rotation of the credential in use."""
    from shared.rotation.protocol import scheduled_rotation

    h = Harness()
    waiting = await _left_behind_waiting_for_the_sweep(h, rotation=True)
    rotation = scheduled_rotation(waiting.rotation, waiting.health.credential_expires_at)
    assert rotation is not None
    h.fakes.clock.now = rotation + timedelta(minutes=1)  # the rotation is due (not only the clean-up's retry)
    await h.sweep()
    after = await h.record(waiting.id)
    assert after is not None and after.rotation.rotation_id is None and after.rotation.lease_owner is None
    assert after.rotation.last_rotated_at != waiting.rotation.last_rotated_at
    assert after.rotation.key_id != waiting.rotation.key_id
    assert h.check() == []


@pytest.mark.parametrize("operation", ["patch-other-app", "delete"])
async def test_a_request_refused_once_the_clean_up_journaled_its_last_removal_changed_only_that(
        operation: str) -> None:
    """A request refused (409) after it journaled the last removal of the clean-up it finishes first has changed
    the connection by that entry only (I3 allows it: it is that clean-up's progress, as the sweep's would be)."""
    from tests.lifecycle_harness import user_operations

    h = Harness()
    waiting = await _left_behind_waiting_for_the_sweep(h, rotation=False)
    outcome = await user_operations(h, waiting.id)[operation]()
    assert outcome.status == 409
    assert h.check() == []


@pytest.mark.parametrize("times", [1, 2], ids=["the schedule entry", "both index entries"])
async def test_a_delete_whose_index_clean_up_fails_still_forgets_the_rest(times: int) -> None:
    """Found by a review: DELETE's clean-up of the indexes and the history stopped at the first that failed; the
    history of a deleted connection was never removed. Each is tried on its own (a stale index entry is dropped by
    the sweep that reads it)."""
    h = Harness()
    record = await h.create()
    assert h.fakes.history.of(record.id)
    h.fakes.world.fail_next("schedule.remove", times=times)  # the schedule's entry, then the health check's
    await h.api.delete(APP, record.id)
    assert await h.record(record.id) is None and h.fakes.history.of(record.id) == []


@pytest.mark.parametrize("answer", ["upstream", "conflict"])
async def test_a_new_credential_whose_write_landed_with_its_answer_lost_keeps_its_vault_version_enabled(
        answer: str) -> None:
    """Found by a read: a PATCH of the credentials whose record write landed but whose answer was lost (a 5xx or a
    timeout; or Table Storage's retry meeting its own ETag, a conflict) disabled the vault version the record now
    points at: the connection could no longer read its own secret. The write is read back first: landed, the
    change is made and answered; not landed, its version is disabled as before."""
    h = Harness()
    record = await h.create(rotation=False)
    _, credentials = h.new_application()
    if answer == "upstream":
        fails_once(h, "update", 1, applied=True)
    else:
        fails_once(h, "update", applied=True, error=own_etag())
    changed = await h.api.update(APP, record.id, {"credentials": credentials})
    assert changed.client_id == credentials["clientId"]
    stored = await h.fakes.connections.get(APP, record.id)
    assert stored.secret_version == changed.secret_version
    assert h.fakes.vault.version(record.secret_name, stored.secret_version).enabled
    assert (await h.api.material_of(stored))["clientSecret"] == credentials["clientSecret"]
    assert h.check() == []


async def test_a_new_credential_whose_write_did_not_land_disables_its_vault_version_and_answers_the_failure(
) -> None:
    h = Harness()
    record = await h.create(rotation=False)
    _, credentials = h.new_application()
    fails_once(h, "update", 1)
    with pytest.raises(UpstreamError):
        await h.api.update(APP, record.id, {"credentials": credentials})
    stored = await h.fakes.connections.get(APP, record.id)
    assert stored.secret_version == record.secret_version
    assert [v.version for v in h.fakes.vault.secrets[record.secret_name] if v.enabled] == [record.secret_version]
    assert h.check() == []


async def test_a_rotated_refresh_token_whose_write_landed_with_its_answer_lost_stays_readable() -> None:
    """The same for the refresh token Entra rotated to: kept, and its version enabled."""
    h = Harness()
    record = await h.create(rotation=False)
    fails_once(h, "update", applied=True, error=own_etag())
    saved = await h.api.switch_secret(record, {"clientSecret": "the next one"}, None, {})
    stored = await h.fakes.connections.get(APP, record.id)
    assert stored.secret_version == saved.secret_version != record.secret_version
    assert h.fakes.vault.version(record.secret_name, stored.secret_version).enabled


@pytest.mark.parametrize("rotation", [False, True])
async def test_a_create_whose_write_landed_with_its_answer_lost_is_answered_created_with_its_secret(
        rotation: bool) -> None:
    """Found by a read: a create whose record write landed with its answer lost deleted the secret the record
    points at. The connection was there (its name taken: a create sent again answered 409) and could never read
    its secret. Read back, it is created."""
    h = Harness()
    fails_once(h, "insert", 1, applied=True)
    record = await h.create(rotation=rotation)
    stored = await h.fakes.connections.get(APP, record.id)
    assert stored.secret_version == record.secret_version
    assert await h.api.material_of(stored)
    assert h.check() == []


async def test_a_create_whose_write_did_not_land_leaves_no_secret() -> None:
    h = Harness()
    fails_once(h, "insert", 1)
    with pytest.raises(UpstreamError):
        await h.create(rotation=False)
    assert not h.fakes.connections.records and set(h.fakes.vault.secrets) == h.fakes.vault.deleted
    # Disabled before it is deleted, as a DELETE does: a deleted secret recovered comes back as it was.
    assert not any(v.enabled for versions in h.fakes.vault.secrets.values() for v in versions)


def _fails_at(h: Harness, operation: str, nth: int) -> None:
    """The ``nth`` call from now of the fakes' operations named ``operation`` (a prefix) fails upstream."""
    world = h.fakes.world
    check = world.check
    seen = 0

    def failing(name: str) -> None:
        nonlocal seen
        if name.startswith(operation):
            seen += 1
            if seen == nth:
                world.check = check  # type: ignore[method-assign]
                raise UpstreamError(f"{operation} failed (injected)")
        check(name)

    world.check = failing  # type: ignore[method-assign]


@pytest.mark.parametrize(("body", "operation", "nth"), [
    ({"rotation": {**ROTATION, "rotationInterval": 60}}, "schedule.remove", 1),  # the old entry's removal
    ({"rotation": {**ROTATION, "rotationInterval": 60}}, "schedule.put", 2),  # the new entry's put again
    ({"isAutoRotationEnabled": False}, "store.update", 2),  # the write that points at no entry
    ({"isAutoRotationEnabled": False}, "schedule.remove", 1),
], ids=["interval/remove", "interval/put-again", "disable/pointer-write", "disable/remove"])
async def test_a_patch_of_the_rotation_is_answered_as_saved_when_tidying_the_schedule_after_it_fails(
        body: dict[str, Any], operation: str, nth: int) -> None:
    """Found by a review: the schedule index's tidying after a saved PATCH (the old entry's removal, pointing at
    none) was not best effort: one Table Storage failure there answered 502 for a change that was made (I3). The
    change is answered; what is left is a stale entry, which the sweep drops."""
    h = Harness()
    record = await h.create()
    _fails_at(h, operation, nth)
    changed = await h.api.update(APP, record.id, body)
    stored = await h.fakes.connections.get(APP, record.id)
    assert changed.version == stored.version == record.version + 1
    assert (stored.rotation.enabled, stored.rotation.interval_days) == (
        body.get("isAutoRotationEnabled", True), body.get("rotation", {}).get("rotationInterval", 30))
    await h.sweep()
    assert h.unscheduled() == [] and h.check() == []


@pytest.mark.parametrize("answer", ["upstream", "conflict"])
async def test_an_edit_whose_write_landed_with_its_answer_lost_is_answered_as_made(answer: str) -> None:
    """Found by a review: a rename whose write landed, its answer lost, was answered 409 (or 502) for a change it
    made. Read back, it is answered as made."""
    h = Harness()
    record = await h.create(rotation=False)
    if answer == "upstream":
        fails_once(h, "update", 1, applied=True)
    else:
        fails_once(h, "update", applied=True, error=own_etag())
    renamed = await h.api.update(APP, record.id, {"name": "renamed"})
    assert renamed.name == "renamed" and renamed.version == record.version + 1
    assert (await h.fakes.connections.get(APP, record.id)).name == "renamed"


async def test_a_delete_whose_last_write_landed_with_its_answer_lost_is_answered_deleted_and_forgets_the_rest(
) -> None:
    """Found by a review: DELETE's last write (the record and its name: one `$batch` POST, not sent again once its
    connection dropped) landed with its answer lost: a 502, then a 404 to the DELETE sent again, so its list of
    removed Key IDs never reached the user, and the connection's history rows were never deleted."""
    from azure.core.exceptions import ServiceResponseError

    h = Harness()
    record = await h.create()
    assert h.fakes.history.of(record.id)
    fails_once(h, "delete", applied=True, error=ServiceResponseError("Connection closed before the answer (injected)"))
    deleted = await h.api.delete(APP, record.id)
    assert deleted.record.id == record.id and deleted.removed_key_ids == [record.rotation.key_id]
    assert await h.record(record.id) is None and h.fakes.history.of(record.id) == []
    assert h.check() == []


async def test_a_rotation_whose_running_history_entry_lost_its_answer_runs() -> None:
    """Found by a review: the attempt's `running` history entry (a Table insert: a POST, not sent again) written
    with its answer lost stopped the rotation it had claimed: a 502, then 409 "a rotation is running" to every
    request until the lease ran out. It is written again by the attempt's outcome."""
    from azure.core.exceptions import ServiceResponseError

    h = Harness()
    record = await h.create()
    history = h.fakes.history
    original = history.record

    async def lands_then_drops(event: Any) -> None:
        await original(event)
        if event.outcome == "running":
            history.record = original  # type: ignore[method-assign]
            raise ServiceResponseError("Connection closed before the answer (injected)")

    history.record = lands_then_drops  # type: ignore[method-assign]
    rotated = await h.api.rotate(APP, record.id)
    assert rotated.rotation.status == "succeeded"
    assert [e.outcome for e in history.of(record.id)][:1] == ["succeeded"]
    assert h.check() == []


@pytest.mark.parametrize("lost", [1, 2, 3], ids=["the change", "the change and the lease", "and the release"])
async def test_a_credentials_change_whose_writes_landed_with_their_answers_lost_finishes_its_clean_up(
        lost: int) -> None:
    """Found by the stateful test (a Table write applied, its answer lost): the lease a credentials change takes for
    the clean-up of the application it leaves was taken for another's when its write landed unanswered; the
    change kept it (every request 409 for ten minutes) and, with rotation off, nothing was scheduled to finish
    the clean-up: the service's secrets stayed live there. Its own lease is now known as its own."""
    from tests.lifecycle_harness import user_operations

    h = Harness()
    record = await h.create()
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    for _ in range(lost):
        h.fakes.world.fail_next("store.landed")
    h.faults_armed = True
    outcome = await user_operations(h, record.id)["patch-credentials"]()
    assert outcome.status == 200, outcome.error
    h.fakes.world.clear_faults()
    h.faults_armed = False
    for _ in range(3):
        h.fakes.clock.advance(timedelta(days=1))
        await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.retire_version is None and done.rotation.lease_owner is None
    assert record.rotation.key_id not in h.fakes.world.apps[record.client_id or ""].passwords
    assert h.check() == [] and h.unscheduled() == []


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5, 6])
async def test_a_credentials_change_with_rotation_off_schedules_the_clean_up_it_leaves_whatever_write_fails(
        nth: int) -> None:
    """With rotation off, nothing but the clean-up itself made a connection due: when the clean-up of the
    application a change left was refused and the write of its retry failed too, the service's secrets stayed live
    there, tracked (``retire_*``) but unscheduled, until the next change, rotation or DELETE. The change now
    indexes the clean-up's retry with itself, before it is written."""
    h = Harness()
    record = await h.create()
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    h.fakes.world.fail_next("graph.remove", times=3)  # the change's own attempt at the clean-up is refused
    fails_once(h, "update", nth)  # ... and one of the connection's writes that follow fails too
    client_id, password = h.new_app()
    with contextlib.suppress(ServiceError):  # the change itself may be what failed: nothing is left to clean up
        await h.api.update(APP, record.id, {"credentials": h.credentials(client_id, password)})
    h.fakes.world.clear_faults()
    assert h.check() == [] and h.unscheduled() == []
    for _ in range(3):
        h.fakes.clock.advance(timedelta(days=1))
        await h.sweep()
    done = await h.record(record.id)
    assert done is not None and done.rotation.retire_version is None
    if done.client_id != record.client_id:  # the change is saved (the write that failed was one after it)
        assert record.rotation.key_id not in h.fakes.world.apps[record.client_id or ""].passwords
    assert done.rotation.next_at is None and not done.rotation.enabled  # rotation is still off, nothing due


async def test_a_credentials_change_with_rotation_off_whose_clean_up_succeeds_leaves_nothing_due() -> None:
    h = Harness()
    record = await h.create()
    await h.api.update(APP, record.id, {"isAutoRotationEnabled": False})
    client_id, password = h.new_app()
    changed = await h.api.update(APP, record.id, {"credentials": h.credentials(client_id, password)})
    assert changed.rotation.retire_version is None and changed.rotation.next_at is None
    assert record.rotation.key_id not in h.fakes.world.apps[record.client_id or ""].passwords
    assert changed.rotation.schedule_key is None and h.fakes.schedule.keys == set()


async def test_a_lease_whose_write_landed_and_whose_retry_met_its_own_etag_is_taken_as_its_own() -> None:
    """Found by the stateful test (seed 290005; the session's starting code fails it too): the lease a credentials
    change takes for the clean-up still pending from the last change was written, its answer lost, and the
    retry met the write's own ETag (a 412, taken for another's change) three times: the change answered 409 and
    kept the lease, so every request was refused for ten minutes. A conflict is now read back as a lost answer."""
    from tests.lifecycle_harness import user_operations

    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next("graph.remove", times=2)  # the first change's clean-up fails: it stays pending
    h.faults_armed = True
    first = await user_operations(h, record.id)["patch-credentials"]()
    assert first.status == 200, first.error
    pending = await h.record(record.id)
    assert pending is not None and pending.rotation.retire_version is not None
    h.fakes.world.fail_next("store.landed", own_etag(), times=3)
    second = await user_operations(h, record.id)["patch-credentials"]()
    assert h.check() == [], second
    done = await h.record(record.id)
    assert done is not None and done.rotation.lease_owner is None


# -- the next rotation comes before the credential in use ends (review C2, session 18) ---------------------------
@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_a_longer_interval_set_since_does_not_schedule_the_next_rotation_after_the_credential_in_use_ends(
        method: str) -> None:
    """Rotated every 30 days, the credential made lives 2 x 30 + 3 days; with the interval then PATCHed to 90, the
    next rotation was due after it ended: nothing could sign in any more to roll it."""
    h = Harness(method=method)
    record = await h.create()
    ends = record.health.credential_expires_at
    assert record.rotation.status == "succeeded" and ends is not None
    patched = await h.api.update(APP, record.id, {"rotation": {**ROTATION, "rotationInterval": 90}})
    assert patched.rotation.next_at is not None and patched.rotation.next_at <= ends - timedelta(days=3)
    h.fakes.clock.now = patched.rotation.next_at + timedelta(minutes=1)
    await h.sweep()
    rotated = await h.record(record.id)
    assert rotated is not None and rotated.rotation.status == "succeeded", rotated.rotation.message
    assert rotated.rotation.last_rotated_at == h.fakes.clock.now and h.check() == []


async def test_a_failing_clean_up_of_an_application_left_behind_does_not_hold_off_a_rotation_a_policy_brings_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The credentials move to an application whose policy caps new keys at 20 days (tightened after the interval
    was checked), while the clean-up of the application left keeps failing: the sweep's clean-up path read the
    schedule uncapped, so it only ever retried the clean-up, and the key in use ended."""
    from shared.ports import LifetimePolicy

    h = Harness(method="certificate")
    record = await h.create()
    h.fakes.world.apps[record.client_id or ""].may_manage_itself = False  # its clean-up is refused from now on
    new_client, credentials = h.new_application()
    h.fakes.world.apps[new_client].policy = LifetimePolicy("application", key_max_lifetime=timedelta(days=20))

    async def tightened_after_the_check(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr("shared.connections.require_interval_allowed", tightened_after_the_check)
    await h.api.update(APP, record.id, {"credentials": credentials})
    moved = await h.record(record.id)
    assert moved is not None and moved.client_id == new_client and moved.rotation.retire_version is not None
    ends = moved.health.credential_expires_at
    assert ends is not None and ends - h.fakes.clock.now < timedelta(days=21)
    for _ in range(25):  # a sweep every day
        h.fakes.clock.advance(timedelta(days=1))
        await h.sweep()
    after = await h.record(record.id)
    assert after is not None and after.rotation.last_rotated_at is not None
    assert moved.rotation.last_rotated_at is not None
    assert moved.rotation.last_rotated_at < after.rotation.last_rotated_at < ends
    assert h.fakes.world.live(new_client, h.current_secret(after))


@pytest.mark.parametrize("method", ["client-secret", "certificate"])
async def test_new_credentials_are_taken_after_a_rotation_failed_because_the_credential_in_use_is_gone(
        method: str) -> None:
    """(Review C2.) The owner removed the credential in use: the rotation failed signing in, and its clean-up (which
    signs in too) failed, keeping a journal that refused new credentials (409, rotate: 400, and again): only a forced
    DELETE got out. An attempt that stopped before its first addition has nothing to clean up, and keeps none."""
    h = Harness(method=method)
    record = await h.create()
    app = h.fakes.world.apps[record.client_id or ""]
    app.keys.clear()
    app.passwords.clear()  # the owner removed it by hand
    await h.due()
    await h.sweep()
    failed = await h.record(record.id)
    assert failed is not None and failed.rotation.status == "failed" and failed.rotation.rotation_id is None
    credentials = h.new_credential(record.client_id or "")
    patched = await h.op("patch-credentials", record.id, lambda: h.api.update(APP, record.id,
                                                                            {"credentials": credentials}))
    assert patched.status == 200, patched.error
    fixed = await h.record(record.id)
    assert fixed is not None and fixed.rotation.status == "succeeded" and h.check() == []


async def test_the_clients_a_connection_sees_come_a_page_at_a_time_and_a_bad_limit_signs_in_nowhere() -> None:
    h = Harness()
    record = await h.create()
    clients, token = await h.api.clients_visible(record.id)
    assert clients == [{"name": "app", "id": h.fakes.world.apps[record.client_id].object_id,
                        "appId": record.client_id}]
    assert token is None
    signed_in = list(h.fakes.world.calls)
    for limit in (0, 1001):
        with pytest.raises(InvalidRequest, match="page size"):
            await h.api.clients_visible(record.id, limit)
    assert h.fakes.world.calls == signed_in


async def test_a_delete_while_graph_is_only_throttling_is_a_503_to_try_later_never_a_choice_to_leave_them_live(
        ) -> None:
    """Graph still throttling when the retries ran out is no refusal to grant anything: the DELETE answers 503 with
    Graph's wait, the connection as it was, nothing left live; it answered 409 credentials-left-live, and the
    console offered to delete anyway and leave them live (review Z2)."""
    from shared.errors import UpstreamThrottled

    h = Harness()
    record = await h.create()  # rotated once: a secret the service made is in use
    h.fakes.world.fail_next("graph", UpstreamThrottled("Graph is throttling", retry_after=120), times=50)
    with pytest.raises(UpstreamThrottled) as busy:
        await h.api.delete(APP, record.id)
    assert busy.value.status == 503 and busy.value.headers["Retry-After"] == "120"
    kept = await h.record(record.id)
    assert kept is not None and kept.status == record.status and kept.rotation.key_id == record.rotation.key_id
    assert [r for r in h.fakes.audit.records if r.outcome == "credentials-left-live"] == []


async def test_a_rotation_or_a_move_while_graph_is_only_throttling_answers_503_with_graph_s_wait() -> None:
    """Rotate now answered 502 rotation-failed without a wait, and the move to federated the retry budget's 30 s
    instead of Graph's own wait (review Z2)."""
    from shared.errors import UpstreamThrottled

    h = Harness()
    record = await h.create()
    h.fakes.world.fail_next("graph.add", UpstreamThrottled("Graph is throttling", retry_after=120), times=20)
    with pytest.raises(UpstreamThrottled) as rotating:
        await h.api.rotate(APP, record.id)
    assert rotating.value.headers["Retry-After"] == "120" and "rotation" in rotating.value.extensions
    h.fakes.world.fail_next("graph.fic.add", UpstreamThrottled("Graph is throttling", retry_after=120), times=50)
    with pytest.raises(UpstreamThrottled) as moving:
        await h.api.migrate_to_federated(APP, record.id, {})
    assert moving.value.headers["Retry-After"] == "120"


async def test_a_forced_delete_throttled_at_the_application_left_still_deletes_and_lists_what_it_left_live(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced DELETE goes on past a clean-up of the application left that Graph throttles, to the application in
    use, whose credential in use it removes last: it must then delete, listing what it left live. Answered 503 and
    undone, it put the connection back with that credential revoked (review Z3). The application left, which
    Graph would not read, is named as such."""
    from shared.errors import UpstreamThrottled
    from tests import fakes

    h = Harness()
    record = await h.create()
    left = h.fakes.world.apps[record.client_id or ""]
    left.may_manage_itself = False  # the PATCH's clean-up of the application left is refused, and waits
    _, credentials = h.new_application()
    await h.api.update(APP, record.id, {"credentials": credentials})
    left.may_manage_itself = True
    waiting = await h.record(record.id)
    assert waiting is not None and waiting.rotation.retire_client_id == left.client_id
    original = fakes.FakeGraph._app

    def throttled(self: Any, wanted: str) -> Any:  # Graph throttles the application left only
        if wanted == left.client_id:
            raise UpstreamThrottled("Graph is throttling", retry_after=60)
        return original(self, wanted)

    monkeypatch.setattr(fakes.FakeGraph, "_app", throttled)
    deleted = await h.api.delete(APP, record.id, force=True)
    assert await h.record(record.id) is None
    assert deleted.applications_not_read == [left.client_id]  # what the service made there is named as not read
    monkeypatch.setattr(fakes.FakeGraph, "_app", original)
    # Left live by force: what the service made on the application left, and only that (no connection was put back
    # with a credential revoked: no I1).
    assert h.check() and all(v.startswith("I2:") and f"on {left.client_id}" in v for v in h.check())


async def test_a_refusal_right_after_the_removal_of_the_credential_in_use_failed_is_not_taken_for_its_removal() -> None:
    """(Review of the stand-in's fidelity, 1.) The last removal failed without being made (a 5xx), and the next
    DELETE's sign-in came to a part of Entra ID that did not know the credential yet (one a rotation had just made):
    it was taken for the removal, the connection deleted, and its credential left live, tracked by nothing. A refusal
    counts only once it still comes ``REMOVAL_CONFIRMATION_SECONDS`` after the first; by then this one signs in, and
    the removal is made."""
    h = Harness()
    record = await h.create()
    in_use = record.rotation.key_id
    world = h.fakes.world
    world.fail_next("graph.remove")  # a 5xx: not made
    await stops_and_says_to_send_it_again(h, record.id)
    assert in_use in world.apps[record.client_id or ""].passwords
    world.fail_next("graph.token", CredentialRejected("AADSTS7000215: Invalid client secret provided.",
                                                      extensions={"aadstsCode": "AADSTS7000215"}))
    with pytest.raises(CredentialsLeftLive) as unconfirmed:
        await h.api.delete(APP, record.id)
    assert unconfirmed.value.extensions["keyIds"] == [in_use] and "Retry-After" in unconfirmed.value.headers
    assert in_use in world.apps[record.client_id or ""].passwords and h.check() == []
    h.fakes.clock.advance(timedelta(seconds=h.fakes.adapters.settings.removal_confirmation_seconds))
    deleted = await h.api.delete(APP, record.id)
    assert (deleted.removed_key_ids, deleted.key_ids_left_live) == ([in_use], [])
    assert in_use not in world.apps[record.client_id or ""].passwords
    assert await h.record(record.id) is None and h.check() == []


async def test_a_forced_delete_lists_a_credential_in_use_whose_removal_is_not_confirmed_as_left_live() -> None:
    h = Harness()
    record = await h.create()
    world = h.fakes.world
    world.fail_next("graph.removal.lost")  # made, its answer lost
    await stops_and_says_to_send_it_again(h, record.id)
    forced = await h.api.delete(APP, record.id, force=True)  # at once: Entra's refusal is not proof yet
    assert (forced.removed_key_ids, forced.key_ids_left_live) == ([], [record.rotation.key_id])
    assert await h.record(record.id) is None


async def test_with_no_confirmation_window_a_refusal_of_the_credential_whose_removal_was_sent_is_its_removal() -> None:
    """``REMOVAL_CONFIRMATION_SECONDS=0``: the wait is off (review of the fidelity fixes, 6)."""
    h = Harness(fakes=build_fakes({"REMOVAL_CONFIRMATION_SECONDS": "0"}))
    record = await h.create()
    h.fakes.world.fail_next("graph.removal.lost")
    await stops_and_says_to_send_it_again(h, record.id)
    deleted = await h.api.delete(APP, record.id)
    assert (deleted.removed_key_ids, deleted.key_ids_left_live) == ([record.rotation.key_id], [])


async def test_a_secret_pasted_into_a_create_is_redacted_from_what_the_request_logs_until_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the secret fixes, 6.) Only the first sign-in redacted the pasted secret; the later ones of the
    same request (reading its Key ID on the application, the policy check) logged it as any other text."""
    from shared.redaction import redact
    from tests.fakes import FakeGraph

    h = Harness()
    _, credentials = h.new_application()
    secret = credentials["clientSecret"]
    seen: list[str] = []

    async def logs() -> None:
        seen.append(redact(f"Graph read for a secret '{secret}'"))

    ran = overtaken_at(monkeypatch, FakeGraph, "find", 1, logs)  # reading the application, after the sign-in
    await h.api.create(APP, {"name": "pasted", "method": "client-secret", "credentials": credentials,
                             "isAutoRotationEnabled": True, "rotation": ROTATION})
    assert ran.ran and seen == ["Graph read for a secret '[REDACTED]'"]
    assert redact(secret) == secret  # after it, not for other requests (the fakes' vault registers nothing)


async def test_a_schedule_change_tidied_up_late_never_drops_the_entry_another_change_back_pointed_at() -> None:
    """Found by a review of two instances at once: A moved a connection's schedule S1 -> S2 and, before dropping S1's
    entry, B moved it back to S2 -> S1 (the same due time, the same key then) and pointed the connection at that
    entry; A's late removal deleted it, and the sweep, which reads only the index, never rotated the connection
    again. Each entry has a key of its own: B's is not the one A drops."""
    import dataclasses

    from shared import wiring
    from shared.ports import ScheduleStore
    from tests.lifecycle_harness import ROTATION

    h = Harness()
    record = await h.create()
    later = {**ROTATION, "rotationInterval": 20, "rotateAt": "05:00"}

    class TidiedLate:
        """Instance A's schedule index: its first removal waits until instance B has changed the schedule back."""

        def __init__(self, index: ScheduleStore) -> None:
            self.index, self.first = index, True

        async def put(self, *args: Any, **kwargs: Any) -> str:
            return await self.index.put(*args, **kwargs)

        async def remove(self, key: str | None) -> None:
            if self.first:
                self.first = False
                back = await h.api.update(APP, record.id, {"rotation": ROTATION})  # instance B
                assert back.rotation.next_at == record.rotation.next_at
            await self.index.remove(key)

    a = wiring.services(dataclasses.replace(h.fakes.adapters, schedule=TidiedLate(h.fakes.schedule))).connections
    await a.update(APP, record.id, {"rotation": later})
    stored = await h.fakes.connections.get(APP, record.id)
    assert stored.rotation.next_at == record.rotation.next_at  # back at S1
    assert h.unscheduled() == []
    assert [key for key in h.fakes.schedule.keys if record.id in key] == [stored.rotation.schedule_key]
