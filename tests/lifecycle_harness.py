"""A connection lifecycle over in-memory fakes, with the four invariants checked as it runs.

- I1: the credential a connection uses is never revoked before its successor has worked (checked at every
  ``removePassword``), and every connection's current credential is live;
- I2: every credential the service created on an application is the connection's current one, or recorded in
  its journal, or removed (or reported as left live by a forced DELETE);
- I3: no request answers an error after it changed state (but for finishing first the clean-up an earlier
  credentials change journaled, or journaling a version its failed write left enabled), and none answers 5xx
  (but 502 while Azure is failing);
- I4: each rotation attempt leaves exactly one history entry.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from shared import wiring
from shared.apps import APPS
from shared.errors import ConcurrentChange, CredentialsLeftLive, ServiceError, UpstreamError
from shared.federation import credential_name
from shared.records import MIGRATION_STEPS, STATUS_DELETING, ConnectionRecord
from shared.rotation.protocol import Checkpoint, RotationOptions, clean_up_forgotten
from shared.rotation.sweep import sweep
from shared.store.schedule import parse_key
from tests.fakes import TENANT, Fakes, Key, Password, build_fakes

APP = "azure-client-secrets"
MARKER = re.compile(r"^app-connections (?P<connection>[0-9a-f-]{36}) rotation (?P<rotation>[0-9a-f-]{36})$")
ROTATION = {"rotationInterval": 30, "rotateAt": "03:00", "timeZone": "Europe/Berlin"}


class Crash(BaseException):
    """The worker dies here (a BaseException: nothing in the service catches it)."""


def crash_at(step: str) -> Checkpoint:
    """A checkpoint at which the worker dies (``Crash``) when it reaches ``step``."""
    async def crash(name: str, current: ConnectionRecord) -> None:
        if name == step:
            raise Crash(name)

    return crash


class Overtaken(list[ServiceError]):
    """What the overtaking request answered (a ``ServiceError``, if it answered one), and whether it ran."""

    ran = False


def overtaken_at(monkeypatch: Any, adapter: type, method: str, nth: int,
                 change: Callable[[], Awaitable[Any]]) -> Overtaken:
    """The ``nth`` call of ``adapter.method`` (a fake adapter's coroutine) first runs ``change`` (another request)
    to its end: the request that made the call meets what ``change`` left. The result gets the ``ServiceError``
    the change answered, if it answered one (a refusal is a fine answer to a race); its ``ran`` says whether the
    call was made at all (a test whose race never happened proves nothing)."""
    original = getattr(adapter, method)
    calls = 0
    answered = Overtaken()

    async def overtaken(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth:
            answered.ran = True
            try:
                await change()
            except ServiceError as error:
                answered.append(error)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(adapter, method, overtaken)
    return answered


@dataclass
class Outcome:
    name: str
    status: int
    error: ServiceError | None = None
    result: Any = None


@dataclass
class Harness:
    fakes: Fakes = field(default_factory=build_fakes)
    violations: list[str] = field(default_factory=list)
    left_live: set[str] = field(default_factory=set)
    outcomes: list[Outcome] = field(default_factory=list)
    faults_armed: bool = False
    method: str = "client-secret"  # or "certificate": the connections create() makes and rotates
    given: dict[str, dict[str, str]] = field(default_factory=dict)  # what the owner gave each connection create() made

    def __post_init__(self) -> None:
        self.fakes.world.on_revoke = self._on_revoke

    def services(self, checkpoint: Checkpoint | None = None) -> wiring.Services:
        options = RotationOptions(test_timeout=2, test_first_delay=0.01, test_max_delay=0.01)
        return wiring.services(self.fakes.adapters, options=options, checkpoint=checkpoint)

    @property
    def api(self) -> Any:
        return self.services().connections

    # -- set-up --------------------------------------------------------------------------------------------
    def new_app(self) -> tuple[str, Password]:
        app = self.fakes.world.application()
        return app.client_id, self.fakes.world.add(app.client_id, "given by the owner")

    def credentials(self, client_id: str, password: Password, key_id: bool = False) -> dict[str, str]:
        body = {"tenantId": TENANT, "clientId": client_id, "clientSecret": password.secret}
        if key_id:
            body["clientSecretKeyId"] = password.key_id
        return body

    def new_credential(self, client_id: str, method: str | None = None) -> dict[str, str]:
        """Credentials of ``method`` (the harness's by default) for the application: a password, or a certificate
        the owner uploaded."""
        if (method or self.method) == "certificate":
            _, material = self.fakes.world.add_certificate(client_id, "given by the owner")
            return {"tenantId": TENANT, "clientId": client_id, **material}
        return self.credentials(client_id, self.fakes.world.add(client_id, "given by the owner"))

    def new_application(self, method: str | None = None) -> tuple[str, dict[str, str]]:
        app = self.fakes.world.application()
        return app.client_id, self.new_credential(app.client_id, method)

    async def create(self, name: str = "c1", rotation: bool = True, method: str | None = None) -> ConnectionRecord:
        _, credentials = self.new_application(method)
        body: dict[str, Any] = {"name": name, "method": method or self.method, "credentials": credentials}
        if rotation:
            body.update(isAutoRotationEnabled=True, rotation=ROTATION)
        record: ConnectionRecord = await self.api.create(APP, body)
        self.given[record.id] = credentials
        return record

    async def record(self, connection_id: str) -> ConnectionRecord | None:
        return next((r for r in self.fakes.connections.records.values() if r.id == connection_id), None)

    def current_secret(self, record: ConnectionRecord) -> str:
        if record.method == "federated":  # nothing stored: what works is the federated sign-in (see FakeDirectory)
            return f"federated:{record.client_id}"
        material = self.fakes.vault.version(record.secret_name, record.secret_version).material
        return material.get("clientSecret") or material.get("certificateBody", "")

    def stored_key_id(self, record: ConnectionRecord) -> str:
        """The Key ID of the client secret ``record`` holds on its application (the one it tracks, else the password
        whose secret is the stored one; a Key ID of none when it is gone): what a Writer names in ``credentials:
        {clientSecretKeyId}`` alone."""
        if record.rotation.key_id:
            return record.rotation.key_id
        app = self.fakes.world.apps.get(record.client_id or "")
        secret = self.current_secret(record)
        return next((p.key_id for p in (app.passwords.values() if app else []) if p.secret == secret),
                    "00000000-0000-4000-8000-000000000000")

    # -- operations, each checked for I3 -------------------------------------------------------------------
    async def op(self, name: str, connection_id: str, call: Callable[[], Awaitable[Any]],
                 may_change_on_error: bool = False) -> Outcome:
        before = await self.snapshot(connection_id)
        try:
            result = await call()
        except ServiceError as error:
            outcome = Outcome(name, error.status, error)
            after = await self.snapshot(connection_id)
            if error.status >= 500 and not (self.faults_armed or name == "rotate"):
                self.violations.append(f"I3: {name} answered {error.status}: {error.detail}")
            if before != after and not may_change_on_error and not only_retired(before, after) and not (
                    only_journaled(before, after)) and not stopped_past_its_mark(name, error, after):
                self.violations.append(f"I3: {name} answered {error.status} ({error.slug}) after changing state:"
                                       f" {before} -> {after}")
        else:
            outcome = Outcome(name, 200, result=result)
        self.outcomes.append(outcome)
        return outcome

    async def snapshot(self, connection_id: str) -> tuple[Any, ...]:
        record = await self.record(connection_id)
        if record is None:
            return ("deleted",)
        app = self.fakes.world.apps.get(record.client_id or "")
        owners = tuple(sorted(p.key_id for p in [*app.passwords.values(), *app.keys.values()]
                              if not p.created_by_service)) if app else ()
        plain = record.evolve(etag=None, status_message=None, last_validated_at=None, status="")
        return (plain, self.current_secret(record), owners)

    # -- invariants ----------------------------------------------------------------------------------------
    def _on_revoke(self, client_id: str, password: Password | Key) -> None:
        for record in self.fakes.connections.records.values():
            if record.status == STATUS_DELETING or record.client_id != client_id:
                continue
            secret = self.current_secret(record)
            if secret == password.secret:
                self.violations.append(f"I1: the credential {password.key_id} in use by {record.id} was revoked")
            elif secret not in self.fakes.world.worked:
                self.violations.append(f"I1: {record.id} revoked {password.key_id} before its successor worked")

    def check(self) -> list[str]:
        """I1 (current credentials live), I2 and I4 at a quiet moment; every violation seen so far."""
        world = self.fakes.world
        records = {r.id: r for r in self.fakes.connections.records.values()}
        for record in records.values():
            live = world.present(record.client_id or "", self.current_secret(record))  # expiring is not revoking
            if record.method in ("client-secret", "certificate") and record.status != STATUS_DELETING and not live:
                self.violations.append(f"I1: the current credential of {record.id} is not live")
        for key_id, (client_id, password) in world.created.items():
            there = world.credential(client_id, key_id)
            if there is None or (there.end is not None and there.end <= world.clock.now):  # expired: not live
                continue
            match = MARKER.match(password.display_name or "")
            owner = records.get(match.group("connection")) if match else None
            if owner is None:
                if key_id not in self.left_live:
                    self.violations.append(f"I2: {key_id} on {client_id} is live and no connection tracks it")
                continue
            state = owner.rotation
            assert match is not None
            # What DELETE would remove: a credential of the service's in use counts only while the record says the
            # service created something on that application (``managed``, a rotation, a clean-up of it).
            tracked = (
                (self.current_secret(owner) == password.secret
                 and (state.managed or state.rotation_id is not None or state.retire_client_id == client_id))
                or state.rotation_id == match.group("rotation")
                or key_id in (state.pending_key_id, state.previous_key_id)
                or state.retire_client_id == client_id
                or (owner.status == STATUS_DELETING and owner.client_id == client_id)
                or owner.rotation.step in MIGRATION_STEPS  # a migration's clean-up removes all of its marker
            )
            if not tracked:
                self.violations.append(f"I2: {key_id} of {owner.id} is live and untracked")
        for client_id, credential_id in world.federated_added:
            added = world.apps[client_id].federated.get(credential_id)
            if added is None or credential_id in self.left_live:  # reported as left live (a forced DELETE)
                continue
            # Tracked: the credential of a federated connection (``key_id``: a DELETE removes it once no other
            # connection relies on it), or a migration's (journaled, or named for it: its end or failure sees to it).
            # Or the clean-up of the application a federated connection left (``retire_federated_id``).
            tracked = any(
                (r.client_id == client_id and (
                    (r.method == "federated" and r.rotation.key_id == credential_id)
                    or (r.rotation.step in MIGRATION_STEPS
                        and (r.rotation.pending_key_id == credential_id or credential_name(r.id) == added.name))))
                or (r.rotation.retire_client_id == client_id and r.rotation.retire_federated_id == credential_id)
                for r in records.values())
            if not tracked:
                self.violations.append(f"I2: federated credential {added.name} on {client_id} is live and untracked")
        for record in records.values():  # I1 for the federated method: its sign-in works
            signing_in = (record.status not in (STATUS_DELETING, "invalid")
                          and record.rotation.step not in MIGRATION_STEPS)
            if record.method == "federated" and signing_in and not world.federated_live(record.client_id or ""):
                self.violations.append(f"I1: the federated credential {record.id} signs in with is gone")
        for connection_id, record in records.items():
            self._check_history(connection_id, record)
        self._check_vault(records)
        for record in records.values():  # I6: the health sweep comes to every connection (shared/due_index.py)
            if record.status != STATUS_DELETING and record.health.check_key not in self.fakes.health_index.keys:
                self.violations.append(f"I6: the health check of {record.id} points at no index entry "
                                       f"({record.health.check_key!r})")
        return self.violations

    def _check_vault(self, records: dict[str, ConnectionRecord]) -> None:
        """I5: every enabled vault version that holds a credential Entra still accepts is tracked: the version in
        use, one the record journals (superseded, a rotation's pending or previous one, a clean-up's), one tagged
        for the rotation under way, one of a connection being deleted; a secret no record names is an abandoned
        create's, whose health index entry is there for the sweep that removes it."""
        world, vault = self.fakes.world, self.fakes.vault
        owners = {r.secret_name: r for r in records.values()}
        indexed = {parse_key(key).connection_id for key in self.fakes.health_index.keys}
        for name, versions in vault.secrets.items():
            if name in vault.deleted:
                continue
            owner = owners.get(name)
            for version in versions:
                secret = version.material.get("clientSecret") or version.material.get("certificateBody", "")
                if not version.enabled or not any(world.live(client_id, secret) for client_id in world.apps):
                    continue
                if owner is None:
                    if version.tags.get("connectionId") not in indexed:
                        self.violations.append(f"I5: {name}/{version.version} is enabled, live, and no record or "
                                               "index entry names it")
                    continue
                state = owner.rotation
                tracked = (version.version in (owner.secret_version, state.retire_version, state.pending_version,
                                               state.previous_version, *owner.superseded)
                           or (state.rotation_id is not None and version.tags.get("rotationId") == state.rotation_id)
                           or owner.status == STATUS_DELETING)
                if not tracked:
                    self.violations.append(f"I5: {name}/{version.version} of {owner.id} is enabled, live and "
                                           "untracked")

    def unscheduled(self) -> list[str]:
        """The connections the sweep has to come to (rotation on, a rotation under way, a clean-up pending) that
        point at no entry of the schedule index."""
        keys = self.fakes.schedule.keys
        return [f"{r.id}: points at {r.rotation.schedule_key!r}, due {r.rotation.next_at}"
                for r in self.fakes.connections.records.values()
                if r.status != STATUS_DELETING and (r.rotation.enabled or r.rotation.in_progress
                                                    or r.rotation.cleaning_up)
                and r.rotation.schedule_key not in keys]

    def _check_history(self, connection_id: str, record: ConnectionRecord) -> None:
        attempts: dict[str, list[int]] = {}
        for event in self.fakes.history.of(connection_id):
            attempts.setdefault(event.rotation_id, []).append(event.attempt)
        state = record.rotation
        for rotation_id, numbers in attempts.items():
            if len(numbers) != len(set(numbers)):
                self.violations.append(f"I4: {rotation_id} has an attempt with two history entries")
            ongoing = rotation_id == state.rotation_id
            expected = set(range(1, (state.attempt if ongoing else max(numbers)) + 1))
            missing = expected - set(numbers)
            if missing and not (ongoing and missing == {state.attempt}):
                self.violations.append(f"I4: {rotation_id} attempts {sorted(missing)} have no history entry")
        for event in self.fakes.history.of(connection_id):
            if event.outcome == "running" and event.rotation_id != state.rotation_id:
                self.violations.append(f"I4: attempt {event.attempt} of {event.rotation_id} never got an outcome")

    # -- the runner ------------------------------------------------------------------------------------------
    async def sweep(self, checkpoint: Checkpoint | None = None) -> None:
        await sweep(self.services(checkpoint).rotator)

    async def settle(self, rounds: int = 6) -> None:
        """Let time pass and sweeps run until no rotation is half done (leases and back-offs run out)."""
        self.fakes.world.clear_faults()
        self.faults_armed = False
        for _ in range(rounds):
            if not any(r.rotation.in_progress or r.rotation.cleaning_up
                       for r in self.fakes.connections.records.values()):
                return
            self.fakes.clock.advance(timedelta(days=1, minutes=1))
            await self.sweep()

    async def held_up_at(self, checkpoint: str, run: Callable[[Checkpoint], Coroutine[Any, Any, object]]
                         ) -> tuple[asyncio.Task[object], asyncio.Event]:
        """``run`` (a sweep, a request) as a task whose worker is held up at ``checkpoint`` (a frozen host, a hung
        call) until the event returned is set; the lease of what it holds has run out meanwhile."""
        held, woken = asyncio.Event(), asyncio.Event()

        async def hold(name: str, current: ConnectionRecord) -> None:
            if name == checkpoint and not held.is_set():
                held.set()
                await woken.wait()

        task = asyncio.create_task(run(hold))
        await asyncio.wait([task, asyncio.create_task(held.wait())], return_when=asyncio.FIRST_COMPLETED)
        assert held.is_set(), f"the worker never reached {checkpoint}"
        self.lease_runs_out()
        return task, woken

    def lease_runs_out(self) -> None:
        """Move the clock past a worker's lease: one held up since then may have been taken over."""
        self.fakes.clock.advance(self.services().rotator.options.lease + timedelta(minutes=1))

    async def due(self) -> None:
        """Move the clock past every connection's next rotation."""
        nexts = [r.rotation.next_at for r in self.fakes.connections.records.values() if r.rotation.next_at]
        if nexts:
            self.fakes.clock.now = max(max(nexts), self.fakes.clock.now) + timedelta(minutes=1)


def stopped_past_its_mark(name: str, error: ServiceError, after: tuple[Any, ...]) -> bool:
    """A DELETE that Azure failed once its removals were done (a Key Vault or Table Storage call, a 5xx): the
    connection keeps its deletion mark, which is the DELETE's journal, and the answer says to send it again."""
    return (name == "delete" and error.status >= 500 and "send the DELETE again" in error.detail
            and len(after) == 3 and (after[0].rotation.lease_owner or "").startswith("delete:"))


def only_retired(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    """The one change a request that failed may have made: it first finished the clean-up an earlier credentials
    change left in the journal (``retire_*``), as the sweep would have, or got as far as journaling that clean-up's
    last removal (``retire_removing_key_id``), and changed nothing else."""
    if len(before) != 3 or len(after) != 3 or not before[0].rotation.cleaning_up or before[1:] != after[1:]:
        return False
    record: ConnectionRecord = before[0]
    retired = record.rotation.left_behind_forgotten()
    journaled = record.rotation.clean_up_sent_as(after[0].rotation)
    done = clean_up_forgotten(record.rotation)  # its due time too, when it was all that was due
    return bool(after[0] in (record.evolve(rotation=retired), record.evolve(rotation=journaled),
                             record.evolve(rotation=done)))


def only_journaled(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    """The other change a request that failed may have made: a secret version written for a record write that did
    not land, which Key Vault then would not disable either, journaled as superseded (for the health check to
    disable; ``ConnectionService._unwritten``), and nothing else: not the version in use."""
    if len(before) != 3 or len(after) != 3 or before[1:] != after[1:]:
        return False
    record: ConnectionRecord = before[0]
    added = [v for v in after[0].superseded if v not in record.superseded]
    return bool(added) and record.secret_version not in added and after[0] == record.superseding(
        (*record.superseded, *added))


def user_operations(h: Harness, connection_id: str) -> dict[str, Callable[[], Awaitable[Outcome]]]:
    """Every operation a user can make on a connection, each as a checked call."""
    api = h.api

    async def patch_credentials() -> Outcome:
        record = await h.record(connection_id)
        if record is None:
            return await h.op("patch-credentials", connection_id, lambda: api.update(APP, connection_id, {}))
        credentials = h.new_credential(record.client_id or "", record.method)
        return await h.op("patch-credentials", connection_id, lambda: api.update(
            APP, connection_id, {"credentials": credentials}))

    async def patch_other_app() -> Outcome:
        record = await h.record(connection_id)
        _, credentials = h.new_application(record.method if record else None)
        return await h.op("patch-other-app", connection_id, lambda: api.update(
            APP, connection_id, {"credentials": credentials}))

    async def patch_rotation() -> Outcome:
        return await h.op("patch-rotation", connection_id, lambda: api.update(
            APP, connection_id, {"rotation": {**ROTATION, "rotationInterval": 45}}))

    async def disable_rotation() -> Outcome:
        return await h.op("disable-rotation", connection_id, lambda: api.update(
            APP, connection_id, {"isAutoRotationEnabled": False}))

    async def patch_key_id() -> Outcome:  # which secret the connection holds (of a client secret's: else a 400)
        record = await h.record(connection_id)
        key_id = h.stored_key_id(record) if record else "00000000-0000-4000-8000-000000000000"
        return await h.op("patch-key-id", connection_id, lambda: api.update(
            APP, connection_id, {"credentials": {"clientSecretKeyId": key_id}}))

    async def delete() -> Outcome:
        return await h.op("delete", connection_id, lambda: api.delete(APP, connection_id))

    async def validate() -> Outcome:
        return await h.op("validate", connection_id, lambda: api.validate(APP, connection_id))

    async def rotate() -> Outcome:
        return await h.op("rotate", connection_id, lambda: api.rotate(APP, connection_id), may_change_on_error=True)

    async def rename() -> Outcome:
        return await h.op("rename", connection_id, lambda: api.update(APP, connection_id, {"name": "renamed"}))

    async def reauthorize() -> Outcome:
        return await h.op("reauthorize", connection_id, lambda: reauthorize_oauth(h))

    async def create_same_app(same_credential: bool = False, rotation: bool = True) -> Outcome:
        """A new connection of the same Entra application, named anew: with a credential of it the owner adds
        now, or (``same_credential``) with the one the owner gave this connection (all a user can hold: one the
        service made is never shown), whether still live or not; rotation on (its first rotation runs at once,
        beside this one's) or off."""
        record = await h.record(connection_id)
        method = record.method if record and record.method in ("client-secret", "certificate") else h.method
        client_id = record.client_id if record else h.new_app()[0]
        if same_credential and connection_id in h.given:  # (the connection may have moved to another method since)
            credentials = h.given[connection_id]
            method = "certificate" if "certificateBody" in credentials else "client-secret"
        else:
            credentials = h.new_credential(client_id or "", method)
        body: dict[str, Any] = {"name": f"same-app-{len(h.fakes.connections.records)}", "method": method,
                                "credentials": credentials}
        if rotation:
            body.update(isAutoRotationEnabled=True, rotation=ROTATION)
        name = "create-same-credential" if same_credential else "create-same-app"
        return await h.op(name, connection_id, lambda: api.create(APP, body))

    async def create_same_credential() -> Outcome:
        return await create_same_app(same_credential=True, rotation=False)

    async def create_same_credential_rotating() -> Outcome:
        return await create_same_app(same_credential=True, rotation=True)

    async def migrate() -> Outcome:
        return await h.op("migrate", connection_id, lambda: api.migrate_to_federated(APP, connection_id, {}),
                          may_change_on_error=True)

    return {"patch-credentials": patch_credentials, "patch-other-app": patch_other_app,
            "patch-rotation": patch_rotation, "patch-key-id": patch_key_id, "disable-rotation": disable_rotation,
            "delete": delete,
            "validate": validate, "rotate": rotate, "rename": rename, "reauthorize": reauthorize, "migrate": migrate,
            "create-same-app": create_same_app, "create-same-credential": create_same_credential,
            "create-same-credential-rotating": create_same_credential_rotating}


async def reauthorize_oauth(h: Harness) -> ConnectionRecord:
    """Sign an OAuth connection in (creating it the first time), as the callback does."""
    flow = h.services().oauth
    existing = next((r for r in h.fakes.connections.records.values() if r.method == "oauth"), None)
    params = {"connectionId": existing.id} if existing else {"name": "signed-in", "tenantId": TENANT}
    url = await flow.start("azure-key-vault", params)
    state = re.search(r"[?&]state=([^&]+)", url)
    assert state is not None
    import urllib.parse

    outcome = await flow.complete({"code": "a-code", "state": urllib.parse.unquote(state.group(1))})
    record: ConnectionRecord = outcome.record
    return record



def own_etag() -> ConcurrentChange:
    """What the Tables adapter raises when azure-core's retry of a conditional PUT meets its own first try's ETag."""
    return ConcurrentChange("The connection was changed by another request (injected: its own write).")


def fails_once(h: Harness, operation: str, nth: int = 1, applied: bool = False,
               error: Exception | None = None) -> None:
    """The ``nth`` call from now of the connection store's ``operation`` (``insert``, ``update``, ``get``,
    ``delete``) fails with ``error`` (an upstream failure by default): before it is applied, or after it
    (``applied``: its answer lost)."""
    store = h.fakes.connections
    original = getattr(store, operation)
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls != nth:
            return await original(*args, **kwargs)
        setattr(store, operation, original)
        if applied:
            await original(*args, **kwargs)
        raise error or UpstreamError(f"Table Storage failed (injected{', the write applied' if applied else ''}).")

    setattr(store, operation, failing)

assert APP in APPS


async def delete_once_the_refusal_holds(h: Harness, connection_id: str) -> Any:
    """A DELETE whose last removal, of the credential in use, was sent without an answer: Entra's refusal of that
    credential counts as its removal only once it still comes ``REMOVAL_CONFIRMATION_SECONDS`` after the first (a
    part of Entra ID not yet reached by a new credential refuses it too). Until then: a 409 with Retry-After, the
    connection still marked."""
    with pytest.raises(CredentialsLeftLive) as unconfirmed:
        await h.api.delete(APP, connection_id)
    window = h.fakes.adapters.settings.removal_confirmation_seconds
    assert unconfirmed.value.headers["Retry-After"] == str(int(window))
    assert "send the DELETE again" in unconfirmed.value.detail
    marked = await h.record(connection_id)
    assert marked is not None and marked.status == "deleting" and marked.rotation.removing_refused_at is not None
    h.fakes.clock.advance(timedelta(seconds=window - 1))
    with pytest.raises(CredentialsLeftLive) as still:  # not yet: the wait counts from the first refusal
        await h.api.delete(APP, connection_id)
    assert still.value.headers["Retry-After"] == "1"
    h.fakes.clock.advance(timedelta(seconds=1))
    return await h.api.delete(APP, connection_id)
