"""Whether an OAuth state is pending, over Table Storage's REST API without the SDK (``shared.store.table_reads``).

The anonymous OAuth callback asks this first (``shared.oauth_callback``): an answer whose state is not pending is
refused without building the write side, so a cold instance imports neither aiohttp, azure-core nor the Tables
SDK for it. The lookup is a query for the state's one entity by its keys (``shared.store.oauth_states``:
the hour bucket and the SHA-256 of the value) that selects the RowKey alone: it reads no column of the pending
authorization (no PKCE verifier), consumes nothing and writes nothing. A pending state is then consumed by
``OAuthStates.take`` (delete under its ETag), as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.store.oauth_states import OAUTH_STATES_TABLE, state_keys
from shared.store.table_reads import TAKEN_BY

if TYPE_CHECKING:
    from shared.store.table_reads import TableReads


class OAuthStateReads:
    """``shared.ports.OAuthStateLookup`` over the lean Table reads."""

    def __init__(self, reads: TableReads) -> None:
        self._reads = reads

    async def pending(self, state: str) -> bool:
        """True when the state's entity exists (it may have expired: the flow says so as it consumes it)."""
        keys = state_keys(state)
        if keys is None:  # not shaped like a state of ours: nothing to look up
            return False
        entities, _ = await self._reads.query_page(
            OAUTH_STATES_TABLE, "PartitionKey eq @bucket and RowKey eq @key", {"bucket": keys[0], "key": keys[1]},
            top=1, select=["RowKey", TAKEN_BY])
        return any(entity.get("RowKey") == keys[1] and not entity.get(TAKEN_BY) for entity in entities)
