"""The app registrations' page token: a malformed one is a 400 problem, never a 500."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from shared.errors import InvalidRequest
from tests.e2e.entra import register_rotatable_app
from tests.shared.azure.test_graph import graph_for


@pytest.mark.parametrize("raw", ["[" * 1200, '["x", ' + "[" * 1500])
async def test_a_deeply_nested_page_token_is_a_400_not_a_500(
        raw: str, admin: Any, clients: Any, secrets_used: Any, no_faults: None) -> None:
    """A token of this version's shape is parsed with json.loads before any check of its structure; a token of
    nested brackets (within the length allowed: 4 * (2048 + 64) / 3 characters) raises RecursionError, which is not
    the ValueError caught: the request is a 500, not the 400 on /continuationToken."""
    entra = register_rotatable_app(admin, secrets_used, name="lister", roles=("Application.Read.All",))
    credential, graph = graph_for(clients, entra)
    token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    async with credential:
        with pytest.raises(InvalidRequest, match="continuation token"):
            await graph.list_applications(2, token, "connection-a")
