"""The console's session store against Azurite: sessions and pending sign-ins read and written over the lean Table
calls, single use where they must be, ended sessions never brought back, expired hours purged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.azure.clients import AzureClients
from shared.sessions import PendingLogin, Session, bucket_of, hash_of
from shared.store.sessions import SessionTable
from tests.fresh import in_a_fresh_interpreter

NOW = datetime(2026, 12, 1, 10, 30, tzinfo=UTC)


def session(key: str, expires_at: datetime = NOW + timedelta(hours=8)) -> Session:
    return Session(key=hash_of(key), bucket=bucket_of(expires_at), user_id="u-1", name="ada@contoso.example",
                   display_name="Ada", tenant_id="t-1", roles=frozenset({"AppConnections.Admin", "X.Reader"}),
                   csrf_token="csrf-" + key, created_at=NOW, last_seen_at=NOW, expires_at=expires_at)


def login(key: str, expires_at: datetime = NOW + timedelta(minutes=10)) -> PendingLogin:
    return PendingLogin(key=hash_of(key), bucket=bucket_of(expires_at), verifier="v-" + key, nonce="n-" + key,
                        return_to="/organization/app-connections", expires_at=expires_at)


async def test_a_session_reads_back_as_it_was_written_and_is_touched_until_it_is_deleted(
        clients: AzureClients) -> None:
    table = SessionTable(clients)
    written = session("one")
    assert await table.get(written.bucket, written.key) is None  # no table yet: nothing, and none created
    await table.create(written)
    assert await table.get(written.bucket, written.key) == written
    later = NOW + timedelta(minutes=5)
    assert await table.touch(written.bucket, written.key, later) is True
    touched = await table.get(written.bucket, written.key)
    assert touched is not None and touched.last_seen_at == later and touched.roles == written.roles
    await table.delete(written.bucket, written.key)
    assert await table.get(written.bucket, written.key) is None
    assert await table.touch(written.bucket, written.key, later) is False  # an ended session stays ended
    assert await table.get(written.bucket, written.key) is None
    await table.delete(written.bucket, written.key)  # deleting it again is no error


async def test_a_pending_sign_in_is_taken_once(clients: AzureClients) -> None:
    table = SessionTable(clients)
    pending = login("state")
    await table.put_login(pending)
    assert await table.take_login(pending.bucket, pending.key) == pending
    assert await table.take_login(pending.bucket, pending.key) is None
    assert await table.take_login(pending.bucket, hash_of("unknown")) is None


async def test_sessions_and_sign_ins_of_hours_past_are_purged_and_no_others(clients: AzureClients) -> None:
    table = SessionTable(clients)
    old, current = session("old", NOW - timedelta(hours=2)), session("current")
    old_login, current_login = login("old", NOW - timedelta(hours=1)), login("current")
    for written in (old, current):
        await table.create(written)
    for pending in (old_login, current_login):
        await table.put_login(pending)
    assert await table.purge_expired(NOW) == 2
    assert await table.get(old.bucket, old.key) is None
    assert await table.get(current.bucket, current.key) == current
    assert await table.take_login(old_login.bucket, old_login.key) is None
    assert await table.take_login(current_login.bucket, current_login.key) == current_login
    assert await table.purge_expired(NOW) == 0


# A console request's session check as the endpoint wrapper makes it (``caller``), in a fresh interpreter, against a
# Table endpoint on a loopback port that holds the session (last seen long enough ago to be touched): what it sent
# and what it imported.
A_CONSOLE_REQUEST = """
import asyncio, json, os, sys
from datetime import UTC, datetime, timedelta
from tests.loopback_table import connection_string, port_of, serve

seen = []
entity = {}

def answer(method, target, headers):
    seen.append(method)
    return (200, entity) if method == "GET" else (204, None)

async def main():
    server = await serve(answer)
    os.environ["AzureWebJobsStorage"] = connection_string(port_of(server))
    import function_app
    from shared import sessions as sessions_module, wiring
    from shared.azure.clients import close_clients
    from shared.store.sessions import session_entity
    from shared.store.table_writes import entity_json

    now = datetime.now(UTC)
    session_id = sessions_module.new_id(now + timedelta(hours=8))
    bucket, key = sessions_module.id_keys(session_id)
    stored = sessions_module.Session(key=key, bucket=bucket, user_id="u", name="ada", display_name="Ada",
                                     tenant_id="t", roles=frozenset({"AppConnections.Reader"}), csrf_token="c",
                                     created_at=now - timedelta(hours=1), last_seen_at=now - timedelta(minutes=5),
                                     expires_at=now + timedelta(hours=7))
    entity.update({**entity_json(session_entity(stored)), "odata.etag": 'W/"1"'})
    principal = await wiring.sessions().caller(f"{sessions_module.SESSION_COOKIE}={session_id}", "GET", None, None)
    await close_clients()
    server.close()
    print(json.dumps({"roles": sorted(principal.roles), "requests": seen, "modules": sorted(sys.modules)}))

asyncio.run(main())
"""
SDK = ["aiohttp", "azure.core", "azure.data.tables", "azure.identity", "msal", "pydantic", "shared.connections"]


def test_a_console_request_checks_its_session_without_an_sdk() -> None:
    result = in_a_fresh_interpreter(A_CONSOLE_REQUEST)
    assert result["roles"] == ["AppConnections.Reader"]
    assert result["requests"] == ["GET", "PATCH"]  # read, then touched (last seen 5 minutes ago)
    loaded = set(result["modules"])
    assert {"shared.store.sessions", "shared.store.table_writes", "shared.azure.rest"} <= loaded
    assert [name for name in SDK if name in loaded] == []


async def test_a_purge_reads_past_a_page_that_holds_nothing_but_a_continuation() -> None:
    """(Review G, session 17.) Table Storage may answer a query with no entity and a continuation (after 5 s of
    scanning, at a partition range's end); the purges took it for 'nothing left' and stopped, and expired
    sessions and sign-ins piled up. Azurite never answers so: a loopback Table endpoint does."""
    import json

    from shared.azure.clients import AzureClients
    from shared.settings import load_settings
    from shared.store.table_writes import TableWrites
    from tests.loopback_table import connection_string
    from tests.shared.azure.test_rest import ScriptedServer, ok, status

    empty = ok(b'{"value":[]}', "x-ms-continuation-NextPartitionKey: 1!8!bDIx",
               "x-ms-continuation-NextRowKey: 1!4!cjE-")
    page = ok(json.dumps({"value": [{"PartitionKey": "l21", "RowKey": "r1"},
                                    {"PartitionKey": "l21", "RowKey": "r2"}]}).encode())
    async with ScriptedServer([empty, page, status(204), status(204)]).running() as server:
        clients = AzureClients(load_settings({"AzureWebJobsStorage": connection_string(server.port)}))
        try:
            deleted = await TableWrites(clients).delete_page("Sessions", "PartitionKey lt @c", {"c": "l22"}, top=10)
        finally:
            await clients.close()
    assert deleted == 2
    assert b"NextPartitionKey=1%218%21bDIx" in server.requests[1] and b"NextRowKey=1%214%21cjE-" in server.requests[1]
    assert [r.split(b" ", 1)[0] for r in server.requests] == [b"GET", b"GET", b"DELETE", b"DELETE"]
