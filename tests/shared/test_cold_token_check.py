"""What a request that checks its token and reads no connection (``GET /api/v1/openapi.json``) loads on a cold
instance, in a fresh interpreter: the function app, the request's wrapper and the token check, and not the ports
of the domain (``shared.ports``: protocols and the ``Adapters`` of the write side), the write side or an SDK."""

from __future__ import annotations

from tests.fresh import in_a_fresh_interpreter

TOKEN_CHECK = """
import asyncio, json, os, sys
os.environ.update({"AzureWebJobsStorage": "UseDevelopmentStorage=true",
                   "AUTH_TENANT_ID": "11111111-1111-1111-1111-111111111111", "AUTH_AUDIENCE": "api://app"})
import function_app
import shared.audit, shared.auth, shared.records, shared.sessions  # what the wrapper of every route imports
from shared import wiring

async def main():
    validator = wiring.token_validator()  # built as a request builds it (no network until a token comes)
    assert validator is wiring.token_validator()
    validator.require_configured()
    from shared.azure.clients import close_clients
    await close_clients()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""
NOT_FOR_A_TOKEN_CHECK = ["shared.ports", "shared.views", "shared.store.tables", "shared.oauth", "shared.connections",
                         "pydantic", "aiohttp", "azure.core", "azure.identity", "azure.data.tables", "cryptography"]


def test_a_token_check_loads_neither_the_ports_nor_the_write_side_nor_an_sdk() -> None:
    loaded = set(in_a_fresh_interpreter(TOKEN_CHECK))
    assert {"shared.wiring", "shared.auth", "shared.jws", "shared.azure.clients"} <= loaded
    assert [name for name in NOT_FOR_A_TOKEN_CHECK if name in loaded] == []


BEARER_CALLER = """
import asyncio, json, os, sys
os.environ.update({"AzureWebJobsStorage": "UseDevelopmentStorage=true",
                   "AUTH_TENANT_ID": "11111111-1111-1111-1111-111111111111", "AUTH_AUDIENCE": "api://app"})
import azure.functions as func
import function_app
from shared.errors import ServiceError
from shared.functions.http import caller

async def main():
    req = func.HttpRequest("GET", "http://localhost/api/v1/openapi.json", body=b"",
                           headers={"authorization": "Bearer not-a-token", "cookie": "__Host-appconn=s"})
    try:
        await caller(req)
    except ServiceError as refused:
        assert refused.status == 401, refused
    else:
        raise AssertionError("a malformed token was accepted")
    from shared.azure.clients import close_clients
    await close_clients()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def test_a_request_with_a_bearer_token_does_not_load_the_console_sessions() -> None:
    """The bearer token is checked, even beside a session cookie; the console's sessions are not loaded for it."""
    loaded = set(in_a_fresh_interpreter(BEARER_CALLER))
    assert {"shared.auth", "shared.jws"} <= loaded
    assert [name for name in ["shared.sessions", *NOT_FOR_A_TOKEN_CHECK] if name in loaded] == []
