"""The stores' tests against Azurite: one Azurite per test module, and clients on tables of their own per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from localdev.azurite import Azurite
from shared.azure.clients import AzureClients
from shared.settings import load_settings


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as running:
        yield running


@pytest.fixture
async def clients(azurite: Azurite) -> AsyncIterator[AzureClients]:
    settings = load_settings({"AzureWebJobsStorage": azurite.connection_string,
                              "STATE_TABLE_PREFIX": "t" + uuid.uuid4().hex[:10]})
    built = AzureClients(settings)
    yield built
    await built.close()
