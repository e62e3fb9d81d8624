"""The tenant's OIDC documents read over the lean client (``shared.azure.oidc``), against a local HTTP server: a
read Entra still throttles when the retries run out is a 503 with Entra's wait on the token check (the one policy's
promise, docs/rotation.md), not a 502 without one, also for the token checks of the back-off that follows it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared.auth import FETCH_BACKOFF_SECONDS, THROTTLED_HOLD_MAX_SECONDS, SigningKeys, fetch_json_with
from shared.azure.oidc import get_document
from shared.errors import ServiceError, UpstreamError, UpstreamThrottled
from tests.shared.azure.test_rest import ScriptedServer, client, status

TENANT = "11111111-1111-1111-1111-111111111111"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signing_keys(server: ScriptedServer, clock: Clock) -> tuple[SigningKeys, Any]:
    lean, _ = client(attempts=2)  # two attempts, no waiting: the schedule is test_rest's
    clients = SimpleNamespace(rest=lambda upstream: lean)
    settings = SimpleNamespace(authority_host=server.url(""), auth_tenant_id=TENANT)

    async def send(url: str) -> tuple[int, bytes]:
        return await get_document(clients, url)  # type: ignore[arg-type]

    return SigningKeys(settings, fetch_json_with(send), monotonic=clock), lean  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [429, 503])
async def test_a_throttled_key_read_is_a_503_with_entra_s_wait_and_none_is_read_before_it_is_over(code: int) -> None:
    """(Review of the retries 3.) Every RestError became a plain UpstreamError: 502 without Retry-After, on every
    token check of a cold instance and for the ``FETCH_BACKOFF_SECONDS`` after. (Review of the retries, again.) The
    keys were read again every back-off while Entra said to wait a minute: now not before its wait is over."""
    clock = Clock()
    async with ScriptedServer([status(code, "Retry-After: 60")]).running() as server:
        keys, lean = signing_keys(server, clock)
        try:
            with pytest.raises(UpstreamThrottled) as first:
                await keys.issuer()
            clock.now += 15  # past the back-off, within Entra's wait: no read, what is left of the wait
            with pytest.raises(UpstreamThrottled) as waiting:
                await keys.issuer()
            reads_meanwhile = len(server.requests)
            clock.now += 46  # Entra's wait is over: read again, still throttled
            with pytest.raises(UpstreamThrottled) as again:
                await keys.issuer()
        finally:
            await lean.close()
    assert reads_meanwhile == 1 and len(server.requests) == 2  # each read one attempt (a wait past the budget)
    assert (first.value.status, first.value.slug, first.value.headers["Retry-After"]) == (503, "upstream-throttled",
                                                                                          "60")
    assert waiting.value.status == 503 and waiting.value.headers["Retry-After"] == "45"
    assert again.value.headers["Retry-After"] == "60"


async def test_a_throttled_key_read_holds_the_next_read_back_five_minutes_at_most() -> None:
    """Entra's wait is not taken past ``THROTTLED_HOLD_MAX_SECONDS``: a key Entra rolled over is not waited for an
    hour because one read was throttled."""
    clock = Clock()
    async with ScriptedServer([status(429, "Retry-After: 3600")]).running() as server:
        keys, lean = signing_keys(server, clock)
        try:
            with pytest.raises(UpstreamThrottled) as first:
                await keys.issuer()
            clock.now += THROTTLED_HOLD_MAX_SECONDS - 1
            with pytest.raises(UpstreamThrottled) as waiting:
                await keys.issuer()
            assert len(server.requests) == 1
            clock.now += 1
            with pytest.raises(UpstreamThrottled):
                await keys.issuer()
        finally:
            await lean.close()
    assert first.value.headers["Retry-After"] == "3600" and waiting.value.headers["Retry-After"] == "1"
    assert len(server.requests) == 2


async def test_a_key_read_that_fails_otherwise_is_a_502_and_its_back_off_too() -> None:
    clock = Clock()
    async with ScriptedServer([status(500)]).running() as server:
        keys, lean = signing_keys(server, clock)
        try:
            with pytest.raises(ServiceError) as failed:
                await keys.issuer()
            clock.now += FETCH_BACKOFF_SECONDS / 2
            with pytest.raises(ServiceError) as waiting:
                await keys.issuer()
        finally:
            await lean.close()
    for error in (failed.value, waiting.value):
        assert type(error) is UpstreamError and error.status == 502 and "Retry-After" not in error.headers
    assert len(server.requests) == 2  # one read of two attempts; none in the back-off
