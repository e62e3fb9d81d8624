"""A read needs the records, the connection store and the token check: not what a write needs. What a read
imports is checked in a fresh interpreter, since the test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fresh import in_a_fresh_interpreter

ROOT = Path(__file__).resolve().parents[2]

WHAT_A_READ_IMPORTS = """
import json, sys
import function_app
import shared.audit, shared.auth, shared.records, shared.views, shared.wiring
import shared.azure.clients, shared.store.tables, shared.store.history
print(json.dumps(sorted(sys.modules)))
"""
# A read done, in a fresh interpreter, against a Table endpoint on a loopback port that answers as Table Storage
# does (one entity for Get Entity and for the list's query, no rotation yet): what it imported, end to end.
A_READ = """
import asyncio, json, os, sys
from tests.loopback_table import ID, connection_string, port_of, serve, table_answer

async def main():
    server = await serve(lambda method, target, headers: (200, table_answer(target)))
    os.environ["AzureWebJobsStorage"] = connection_string(port_of(server))
    import function_app
    import shared.wiring
    from shared.azure.clients import close_clients

    reader = shared.wiring.connection_reader()
    record = await reader.get("azure-key-vault", ID)
    listed, _ = await reader.list_connections("azure-key-vault", 50, None)
    rotations, _ = await reader.rotations("azure-key-vault", ID, 50, None)
    assert record.name == "n" and [r.id for r in listed] == [ID] and rotations == [], (record, listed, rotations)
    assert shared.wiring.connection_reader() is reader  # built once per clients, not per request
    await close_clients()
    assert shared.wiring.connection_reader() is not reader  # new clients, a reader of theirs
    await close_clients()
    server.close()
    print(json.dumps(sorted(sys.modules)))

asyncio.run(main())
"""
WRITE_ONLY = ["pydantic", "shared.models", "shared.connections", "shared.credentials", "shared.oauth",
              "shared.oauth_tokens", "shared.rotation.protocol", "shared.store.vault", "shared.azure.directory",
              "cryptography.x509", "msgraph"]
# What the SDK path of a read would load: a quarter of a second on a cold instance (shared.store.table_reads).
SDK_ONLY = ["aiohttp", "azure.core", "azure.data.tables", "azure.identity", "shared.azure.retry_policy"]


def test_the_read_path_imports_nothing_that_only_writes_need() -> None:
    out = subprocess.run([sys.executable, "-c", WHAT_A_READ_IMPORTS], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    loaded = set(json.loads(out.stdout))
    assert "shared.views" in loaded
    assert [name for name in [*WRITE_ONLY, *SDK_ONLY] if name in loaded] == []


def test_a_read_imports_neither_aiohttp_nor_azure_core_nor_the_tables_sdk() -> None:
    loaded = set(in_a_fresh_interpreter(A_READ))
    assert {"shared.views", "shared.store.table_reads", "shared.azure.rest"} <= loaded
    assert [name for name in [*WRITE_ONLY, *SDK_ONLY, "shared.ports"] if name in loaded] == []


def test_a_connection_being_deleted_is_answered_as_such_not_as_a_rotation_to_wait_for() -> None:
    """(Review FB 1.) The answer was typed ``rotation-in-progress`` with ``Retry-After: 1``, though no rotation runs
    and no retry of the request succeeds: only another DELETE ends the state."""
    from shared.errors import RotationInProgress
    from shared.views import being_deleted

    answer = being_deleted()
    problem = answer.to_problem()
    assert answer.status == 409 and not isinstance(answer, RotationInProgress)
    assert problem["type"] == "urn:app-connections:problem:connection-being-deleted"
    assert problem["title"] == "The connection is being deleted"
    assert problem["connectionStatus"] == "deleting"
    assert "Retry-After" not in answer.headers
