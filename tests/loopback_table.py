"""Table Storage (and, for one test, the host's managed-identity endpoint) played on a loopback port, for the tests
that read in a fresh interpreter and then list what that interpreter imported. Standard library only, so it adds
nothing to that list but itself.

    from tests.loopback_table import serve, connection_string, table_answer
    server = await serve(lambda method, target, headers: (200, table_answer(target)))
    os.environ["AzureWebJobsStorage"] = connection_string(port_of(server))
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

# One connection as Table Storage returns it (no rotation yet).
ID = "0123456789abcdef0123456789abcdef"
WHEN = "2026-03-04T05:06:07.1234567Z"
ENTITY = {"odata.etag": "W/\"datetime'2026-03-04T05%3A06%3A07.1234567Z'\"", "PartitionKey": "azure-key-vault",
          "RowKey": ID, "Timestamp": WHEN, "Name": "n", "Method": "client-secret", "TenantId": "t",
          "ClientId": "c", "CreatedAt@odata.type": "Edm.DateTime", "CreatedAt": WHEN,
          "UpdatedAt@odata.type": "Edm.DateTime", "UpdatedAt": WHEN, "SecretName": "s", "SecretVersion": "v"}

# (method, target, lower-cased headers) -> (status, JSON body)
Answer = Callable[[str, str, dict[str, str]], tuple[int, Any]]


def table_answer(target: str) -> Any:
    """The answer to a read of the connections table holding :data:`ENTITY`: the entity for Get Entity, a page of it
    for a query, and an empty page for the rotation history."""
    if "Rotations" in target:
        return {"value": []}
    return {"value": [ENTITY]} if "()" in target else ENTITY


async def serve(answer: Answer) -> asyncio.Server:
    """A server on a free loopback port answering every request of a kept-alive connection as ``answer`` says."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                method, target = request.split(" ")[:2]
                headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
                           for line in lines if ":" in line}
                await reader.readexactly(int(headers.get("content-length") or 0))  # a write's entity: not kept
                status, body = answer(method, target, headers)
                data = b"" if body is None else json.dumps(body).encode()  # None: no body (a 204)
                writer.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n"
                             % (status, HTTPStatus(status).phrase.encode(), len(data)) + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


def connection_string(port: int) -> str:
    """A connection string (Azurite's account and key) to the server on ``port``."""
    from shared.settings import AZURITE_ACCOUNT, AZURITE_KEY

    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
