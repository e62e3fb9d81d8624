"""Review of session 30: the service's own token requests, shared (each fails today)."""

from __future__ import annotations

import asyncio

import pytest

from shared.azure.retry import answering_within
from tests.shared.azure.test_managed_identity import MSI, Host, host  # noqa: F401  (the fixture)

VAULT = "https://vault.azure.net/.default"


async def test_one_request_s_deadline_does_not_fail_the_others_sharing_its_token_request(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP request near its deadline (``answering_within``) asks the service's identity for a token first; a
    timer (no deadline) asks for the same token while that request is in flight, and shares it. The identity
    endpoint is busy once (503, Retry-After 1 s). The shared request runs in the FIRST caller's context, so the
    retry policy reads the first caller's deadline: it gives up, and the timer, which had all the time in the
    world to wait one second, is failed too."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 503, "times": 1,
                                    "headers": {"Retry-After": "1"}}])
    clients = host.clients()
    credential = clients.service_credential()

    async def hurried() -> object:
        with answering_within(0.3):
            return await credential.get_token(VAULT)

    async def patient() -> object:
        await asyncio.sleep(0)  # the hurried request asked first
        return await credential.get_token(VAULT)

    try:
        first, second = await asyncio.gather(hurried(), patient(), return_exceptions=True)
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert isinstance(first, BaseException)  # its own deadline: fair
    assert not isinstance(second, BaseException), f"the patient caller was failed by another's deadline: {second!r}"
