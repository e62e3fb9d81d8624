"""The stand-in's webhook receivers (``POST {url}/webhooks/{name}``), for tests of the service's notifications:
deliveries recorded with their headers and exact body (so the HMAC can be recomputed), failures answered as
configured (per receiver, and through the fault rules) and then recovered, over TLS trusted with the stand-in's CA.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from localdev.standin import AdminError, StandIn

SECRET = "webhook-test-secret"


@pytest.fixture
def client(standin: StandIn) -> Iterator[httpx.Client]:
    standin.admin.reset()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(standin.ca_path)), timeout=10) as http:
        yield http


def notification(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event": "secret.rotated",
        "app": "contoso-api",
        "connectionId": str(uuid.uuid4()),
        "name": "Contoso — prod",  # not ASCII: the body's bytes must survive as they are
        "status": "ok",
        "message": "rotated",
        "at": "2026-01-02T03:04:05Z",
    }
    payload.update(overrides)
    return payload


def send(
    http: httpx.Client, url: str, payload: dict[str, Any], *, key: str | None = None, secret: str = SECRET
) -> tuple[httpx.Response, bytes, dict[str, str]]:
    """POST the way the service does: the raw body signed with HMAC-SHA256, a timestamp and an idempotency key."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-AppConnections-Signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "X-AppConnections-Timestamp": str(int(time.time())),
        "Idempotency-Key": key or str(uuid.uuid4()),
    }
    return http.post(url, content=body, headers=headers), body, headers


def signature_ok(delivery: dict[str, Any], secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), delivery["body"].encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, delivery["headers"]["signature"] or "")


def test_a_delivery_is_recorded_with_its_headers_and_exact_body(standin: StandIn, client: httpx.Client) -> None:
    url = f"{standin.url}/webhooks/notify"
    assert standin.admin.webhook_url("notify") == url
    payload = notification()
    before = dt.datetime.now(dt.UTC)
    response, body, headers = send(client, url, payload)
    assert response.status_code == 202
    assert response.json() == {"accepted": True}

    [delivery] = standin.admin.webhook_deliveries()
    assert delivery["name"] == "notify"
    assert delivery["status"] == 202
    assert delivery["headers"] == {
        "signature": headers["X-AppConnections-Signature"],
        "timestamp": headers["X-AppConnections-Timestamp"],
        "idempotencyKey": headers["Idempotency-Key"],
        "contentType": "application/json",
    }
    assert delivery["body"].encode() == body
    assert delivery["json"] == payload
    assert signature_ok(delivery)
    assert not signature_ok(delivery, secret="another secret")
    received = dt.datetime.fromisoformat(delivery["receivedAt"].replace("Z", "+00:00"))
    assert before - dt.timedelta(seconds=1) <= received <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    # In the request log too, with the receiver's name; never a body or a signature there.
    [logged] = [r for r in standin.admin.requests() if r["path"] == "/webhooks/notify"]
    assert logged["status"] == 202
    assert logged["webhook"] == "notify"
    assert headers["X-AppConnections-Signature"] not in json.dumps(logged)


def test_deliveries_are_kept_oldest_first_per_receiver_and_cleared(standin: StandIn, client: httpx.Client) -> None:
    keys = []
    for i, name in enumerate(["a", "b", "a", "with space"]):
        key = f"key-{i}"
        keys.append(key)
        response, _, _ = send(client, standin.admin.webhook_url(name), notification(message=str(i)), key=key)
        assert response.status_code == 202

    everything = standin.admin.webhook_deliveries()
    assert [d["headers"]["idempotencyKey"] for d in everything] == keys
    assert [d["name"] for d in everything] == ["a", "b", "a", "with space"]
    assert [d["json"]["message"] for d in standin.admin.webhook_deliveries("a")] == ["0", "2"]
    assert [d["name"] for d in standin.admin.webhook_deliveries("with space")] == ["with space"]
    assert standin.admin.webhook_deliveries("nobody") == []
    assert all(signature_ok(d) for d in everything)

    standin.admin.clear_webhook_deliveries()
    assert standin.admin.webhook_deliveries() == []
    send(client, standin.admin.webhook_url("a"), notification())
    assert len(standin.admin.webhook_deliveries("a")) == 1
    standin.admin.reset()
    assert standin.admin.webhook_deliveries() == []


def test_bodies_that_are_not_json_and_missing_headers(standin: StandIn, client: httpx.Client) -> None:
    url = standin.admin.webhook_url("raw")
    assert client.post(url, content=b"not json {", headers={"Content-Type": "text/plain"}).status_code == 202
    assert client.post(url).status_code == 202
    first, second = standin.admin.webhook_deliveries("raw")
    assert (first["body"], first["json"], first["headers"]["contentType"]) == ("not json {", None, "text/plain")
    assert first["headers"]["signature"] is None
    assert first["headers"]["idempotencyKey"] is None
    assert (second["body"], second["json"]) == ("", None)
    # Only POST is a delivery.
    assert client.get(url).status_code == 405
    assert len(standin.admin.webhook_deliveries("raw")) == 2


def test_configured_failures_are_answered_recorded_and_then_recovered(standin: StandIn, client: httpx.Client) -> None:
    url = standin.admin.webhook_url("flaky")
    standin.admin.fail_webhook("flaky", 503, times=2)
    key = "notification-1"
    statuses = [send(client, url, notification(), key=key)[0].status_code for _ in range(3)]
    assert statuses == [503, 503, 202]
    attempts = standin.admin.webhook_deliveries("flaky")
    assert [d["status"] for d in attempts] == [503, 503, 202]
    assert {d["headers"]["idempotencyKey"] for d in attempts} == {key}  # the retries of one notification
    # Other receivers are not affected.
    assert send(client, standin.admin.webhook_url("steady"), notification())[0].status_code == 202

    response = send(client, url, notification())[0]
    assert response.status_code == 202  # recovered for good

    standin.admin.fail_webhook("flaky", 410, times=1)
    response = send(client, url, notification())[0]
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "WebhookFailure"
    assert send(client, url, notification())[0].status_code == 202

    # times=0 cancels; a 2xx can be configured too.
    standin.admin.fail_webhook("flaky", 500, times=5)
    standin.admin.fail_webhook("flaky", 500, times=0)
    assert send(client, url, notification())[0].status_code == 202
    standin.admin.fail_webhook("flaky", 200, times=1)
    assert send(client, url, notification())[0].status_code == 200

    # reset forgets pending failures.
    standin.admin.fail_webhook("flaky", 500, times=5)
    standin.admin.reset()
    assert send(client, url, notification())[0].status_code == 202


@pytest.mark.parametrize(("status", "times"), [(99, 1), (600, 1), (500, -1), ("500", 1), (True, 1)])
def test_bad_failure_settings_are_refused(standin: StandIn, status: Any, times: Any) -> None:
    with pytest.raises(AdminError) as caught:
        standin.admin.fail_webhook("x", status, times)
    assert caught.value.status == 400


def test_fault_rules_apply_to_receivers(standin: StandIn, client: httpx.Client) -> None:
    url = standin.admin.webhook_url("faulty")
    standin.admin.set_faults(
        [
            {
                "method": "POST",
                "path": "^/webhooks/faulty$",
                "status": 429,
                "headers": {"Retry-After": "1"},
                "times": 1,
            },
        ]
    )
    response = send(client, url, notification())[0]
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert standin.admin.webhook_deliveries("faulty") == []  # answered before the receiver: not a delivery
    assert send(client, url, notification())[0].status_code == 202
    assert [r["hits"] for r in standin.admin.faults()] == [1]

    standin.admin.set_faults([{"path": "^/webhooks/faulty$", "action": "drop", "times": 1}])
    with pytest.raises(httpx.TransportError):
        send(client, url, notification())
    assert send(client, url, notification())[0].status_code == 202

    # drop_after: the receiver records the delivery, the sender never sees the answer.
    standin.admin.set_faults([{"path": "^/webhooks/faulty$", "action": "drop_after", "times": 1}])
    standin.admin.clear_webhook_deliveries()
    with pytest.raises(httpx.TransportError):
        send(client, url, notification(), key="lost-answer")
    assert [d["headers"]["idempotencyKey"] for d in standin.admin.webhook_deliveries()] == ["lost-answer"]

    standin.admin.set_faults([{"path": "^/webhooks/", "action": "delay", "delay_ms": 300, "times": 1}])
    started = time.monotonic()
    assert send(client, url, notification())[0].status_code == 202
    assert time.monotonic() - started >= 0.3
    standin.admin.clear_faults()


def test_concurrent_deliveries_are_all_recorded(standin: StandIn, client: httpx.Client) -> None:
    url = standin.admin.webhook_url("busy")
    keys = [f"k{i}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda k: send(client, url, notification(), key=k)[0].status_code, keys))
    assert statuses == [202] * len(keys)
    deliveries = standin.admin.webhook_deliveries("busy")
    assert sorted(d["headers"]["idempotencyKey"] for d in deliveries) == sorted(keys)
    assert all(signature_ok(d) for d in deliveries)


def test_receivers_speak_tls_trusted_only_through_the_standin_ca(standin: StandIn) -> None:
    standin.admin.reset()
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, but trusts no CA
    with httpx.Client(verify=untrusting, timeout=10) as http, pytest.raises(httpx.ConnectError):
        http.post(standin.admin.webhook_url("tls"), json=notification())
    assert standin.url.startswith("https://")
    with httpx.Client(verify=ssl.create_default_context(cafile=str(standin.ca_path)), timeout=10) as http:
        assert send(http, standin.admin.webhook_url("tls"), notification())[0].status_code == 202
    assert len(standin.admin.webhook_deliveries("tls")) == 1
