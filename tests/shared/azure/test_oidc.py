"""The tenant's OIDC documents read over the lean client (``shared.azure.oidc``), against a local HTTP server: a
read Entra still throttles when the retries run out is a 503 with Entra's wait on the token check (the one policy's
promise, docs/rotation.md), not a 502 without one, also for the token checks of the back-off that follows it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared.auth import FETCH_BACKOFF_SECONDS, SigningKeys, fetch_json_with
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
async def test_a_throttled_key_read_is_a_503_with_entra_s_wait_until_the_next_read(code: int) -> None:
    """(Review of the retries 3.) Every RestError became a plain UpstreamError: 502 without Retry-After, on every
    token check of a cold instance and for the ``FETCH_BACKOFF_SECONDS`` after."""
    clock = Clock()
    async with ScriptedServer([status(code, "Retry-After: 60")]).running() as server:
        keys, lean = signing_keys(server, clock)
        try:
            with pytest.raises(UpstreamThrottled) as first:
                await keys.issuer()
            clock.now += 15  # within Entra's wait, past the back-off: read again, still throttled
            with pytest.raises(UpstreamThrottled) as again:
                await keys.issuer()
            clock.now += 4  # in the back-off: no read, what is left of Entra's wait
            with pytest.raises(UpstreamThrottled) as waiting:
                await keys.issuer()
        finally:
            await lean.close()
    assert len(server.requests) == 2  # two reads, each of one attempt (a wait past the retry budget ends them)
    assert (first.value.status, first.value.slug, first.value.headers["Retry-After"]) == (503, "upstream-throttled",
                                                                                          "60")
    assert again.value.headers["Retry-After"] == "60"
    assert waiting.value.status == 503 and waiting.value.headers["Retry-After"] == "56"


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
