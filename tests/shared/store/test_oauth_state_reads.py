"""``shared.store.oauth_state_reads``: whether an OAuth state is pending, read over Table Storage's REST API (Azurite)
as ``shared.store.oauth_states`` stores it through the SDK; it consumes nothing and reads no column of the state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.azure.clients import AzureClients
from shared.records import Actor, PendingAuthorization
from shared.store.oauth_state_reads import OAuthStateReads
from shared.store.oauth_states import OAuthStates, new_state
from shared.store.table_reads import Entity, TableReads


class Recorded(TableReads):
    """The lean reads, keeping every entity they returned."""

    returned: list[Entity]

    async def query_page(self, suffix: str, query_filter: str, parameters: Mapping[str, str | bool | int], *,
                         top: int, select: Sequence[str] | None = None,
                         continuation: Mapping[str, Any] | None = None) -> tuple[list[Entity], dict[str, Any] | None]:
        entities, token = await super().query_page(suffix, query_filter, parameters, top=top, select=select,
                                                   continuation=continuation)
        self.returned = [*getattr(self, "returned", []), *entities]
        return entities, token


def pending_until(expires: datetime) -> PendingAuthorization:
    return PendingAuthorization(app="azure-key-vault", client_id="client-1", redirect_uri="https://x/callback",
                                verifier="v" * 86, created_at=expires - timedelta(minutes=10), expires_at=expires,
                                name="kv", started_by=Actor("oid-1", "Ada", "user"))


async def test_a_stored_state_is_pending_until_taken_and_nothing_of_it_is_read(clients: AzureClients) -> None:
    states, reads = OAuthStates(clients), Recorded(clients)
    lookup = OAuthStateReads(reads)
    assert await lookup.pending(new_state(datetime.now(UTC))) is False  # the table does not exist yet
    expires = datetime.now(UTC) + timedelta(minutes=10)
    state, other = new_state(expires), new_state(expires)
    await states.put(state, pending_until(expires))
    assert await lookup.pending(state) is True
    assert await lookup.pending(other) is False  # same bucket, another state
    assert [sorted(entity) for entity in reads.returned] == [["RowKey"]]  # no verifier, no field of the sign-in
    assert await lookup.pending(state) is True  # looking consumed nothing
    assert (await states.take(state)) == pending_until(expires)
    assert await lookup.pending(state) is False  # taken: a replay is unknown


async def test_an_expired_state_still_stored_is_pending_for_the_flow_to_refuse(clients: AzureClients) -> None:
    expires = datetime.now(UTC) - timedelta(minutes=1)
    state = new_state(expires)
    await OAuthStates(clients).put(state, pending_until(expires))
    assert await OAuthStateReads(TableReads(clients)).pending(state) is True


async def test_a_value_not_shaped_like_a_state_is_not_looked_up(clients: AzureClients) -> None:
    reads = Recorded(clients)
    for value in ("", "abc", "2026030405.short", "2026030405." + "a" * 40 + "'", "x' or RowKey ne '"):
        assert await OAuthStateReads(reads).pending(value) is False
    assert not hasattr(reads, "returned")


async def test_a_state_keeps_the_hash_of_the_browser_it_is_bound_to(clients: AzureClients) -> None:
    from dataclasses import replace

    from shared.oauth_start import binding_hash

    expires = datetime.now(UTC) + timedelta(minutes=10)
    state = new_state(expires)
    bound = replace(pending_until(expires), browser_binding=binding_hash("cookie-value"))
    await OAuthStates(clients).put(state, bound)
    assert (await OAuthStates(clients).take(state)) == bound
