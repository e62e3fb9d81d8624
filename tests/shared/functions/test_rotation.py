"""What the routes that start a rotation answer when the request had to be answered while its new credential was
still being tested (``RotationContinues``: the rotation sweep finishes it): ``202`` with the connection as it is,
``Retry-After`` and a ``detail``, built as their ``200`` is; a create keeps its ``201``. Through the HTTP functions
themselves (their deadline on a virtual clock), over the fakes."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest

from shared import wiring
from shared.audit import AuditLog
from shared.models import ConnectionEnvelope, RotationContinuesOut
from tests.lifecycle_harness import APP, ROTATION, Harness
from tests.shared.functions.test_http import _api_request, _Caller
from tests.shared.rotation.test_journal import Propagation, VirtualTime, on_virtual_time


def wired(monkeypatch: pytest.MonkeyPatch) -> tuple[Harness, VirtualTime]:
    """The functions over the fakes, as an administrator; every request's deadline (150 s) on the virtual clock that
    the rotation's sleeps move."""
    from shared.azure import retry

    h = Harness()
    time, services = on_virtual_time(h)
    answering = retry.answering_within
    monkeypatch.setattr(retry, "answering_within", lambda seconds=retry.ANSWER_WITHIN, clock=None: answering(
        seconds, clock=time))
    monkeypatch.setattr(wiring, "token_validator", lambda: _Caller("AppConnections.Admin"))
    monkeypatch.setattr(wiring, "audit_log", lambda: AuditLog(h.fakes.audit, h.fakes.clock))
    monkeypatch.setattr(wiring, "connection_service", lambda: services.connections)
    return h, time


def answered(response: func.HttpResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.get_body())
    return body


@pytest.mark.parametrize("route", ["rotate", "patch", "migrate-to-federated"])
async def test_a_rotation_handed_to_the_sweep_is_answered_202_with_the_connection_and_retry_after(
        monkeypatch: pytest.MonkeyPatch, route: str) -> None:
    from shared.functions.connections import update_app_connection
    from shared.functions.rotation import migrate_app_connection_to_federated, rotate_app_connection

    h, time = wired(monkeypatch)
    record = await h.create(rotation=route == "rotate")
    Propagation(h)
    h.fakes.world.federation_delay = 10**6
    if route == "rotate":
        response = await rotate_app_connection(_api_request("POST", APP, record.id))
    elif route == "patch":
        response = await update_app_connection(_api_request("PATCH", APP, record.id, body={
            "isAutoRotationEnabled": True, "rotation": ROTATION}))
    else:
        response = await migrate_app_connection_to_federated(_api_request("POST", APP, record.id))
    assert response.status_code == 202, response.get_body()
    assert time.now < 150
    body = answered(response)
    RotationContinuesOut.model_validate(body)
    after = await h.record(record.id)
    assert after is not None
    shown = body["appConnection"]
    assert shown["id"] == record.id and shown["rotation"]["status"] == "rotating"
    assert shown["rotation"]["rotationId"] == after.rotation.rotation_id
    assert body["detail"] == after.rotation.message == shown["rotation"]["lastRotationMessage"]
    assert "the rotation sweep goes on testing it" in body["detail"]
    assert response.headers["Retry-After"] == "300"
    assert response.headers["ETag"] and response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"  # not a problem: the request did what it could
    action = {"rotate": "connection.rotate", "patch": "connection.update"}.get(route, "connection.migrate-to-federated")
    assert [(r.outcome, r.connection_id) for r in h.fakes.audit.records if r.action == action][-1] == ("202",
                                                                                                     record.id)


async def test_a_rotation_that_completes_in_time_is_answered_200_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.functions.rotation import rotate_app_connection

    h, _ = wired(monkeypatch)
    record = await h.create()
    response = await rotate_app_connection(_api_request("POST", APP, record.id))
    assert response.status_code == 200 and "Retry-After" not in response.headers
    body = answered(response)
    ConnectionEnvelope.model_validate(body)
    assert body["appConnection"]["rotation"]["status"] == "succeeded"


async def test_a_create_whose_first_rotation_is_handed_to_the_sweep_keeps_its_201(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection is created, and works with the credential given: ``201`` with its ``Location`` says so; its
    rotation's status and message tell the rest, as they tell a first rotation that failed."""
    from shared.functions.connections import create_app_connection

    h, _ = wired(monkeypatch)
    Propagation(h)
    _, credentials = h.new_application()
    response = await create_app_connection(_api_request("POST", APP, body={
        "name": "c1", "method": "client-secret", "credentials": credentials, "isAutoRotationEnabled": True,
        "rotation": ROTATION}))
    assert response.status_code == 201, response.get_body()
    body = answered(response)
    ConnectionEnvelope.model_validate(body)
    shown = body["appConnection"]
    assert response.headers["Location"] == f"/api/v1/app-connections/{APP}/{shown['id']}"
    assert shown["rotation"]["status"] == "rotating"
    assert "the rotation sweep goes on testing it" in shown["rotation"]["lastRotationMessage"]
    assert "Retry-After" not in response.headers
