"""The Key Vault store (``shared.store.vault``) against the stand-in's vault, through the real SDK: a version the
vault refuses as disabled, and one it does not have, are told apart, as the rotation's clean-up and the health
check need."""

from __future__ import annotations

import uuid

import pytest

from shared.azure.clients import AzureClients
from shared.errors import SecretGone, VersionDisabled
from shared.store.vault import SecretVault

pytestmark = pytest.mark.e2e


async def test_a_disabled_version_is_refused_as_disabled_and_an_enabled_one_is_read(clients: AzureClients) -> None:
    vault = SecretVault(clients)
    name = f"vault-test-{uuid.uuid4().hex[:8]}"
    old = await vault.write(name, {"clientSecret": "old-" + uuid.uuid4().hex}, {})
    new = await vault.write(name, {"clientSecret": "new-" + uuid.uuid4().hex}, {})
    assert await vault.disable_others(name, new.version) == 1
    with pytest.raises(VersionDisabled):
        await vault.get(name, old.version)
    assert await vault.get(name, new.version) == new.material
    with pytest.raises(SecretGone) as missing:  # a version that does not exist is another failure
        await vault.get(name, uuid.uuid4().hex)
    assert not isinstance(missing.value, VersionDisabled)
    await vault.delete(name)


async def test_the_versions_written_before_one_are_disabled_and_those_written_after_it_stay(
        clients: AzureClients) -> None:
    import asyncio

    vault = SecretVault(clients)
    name = f"vault-test-{uuid.uuid4().hex[:8]}"
    versions = []
    for n in range(3):  # Key Vault records when a version was created to the second
        versions.append(await vault.write(name, {"clientSecret": f"v{n}-" + uuid.uuid4().hex}, {}))
        await asyncio.sleep(1.1)
    first, mine, later = versions
    assert await vault.disable_older(name, mine.version) == 1
    with pytest.raises(VersionDisabled):
        await vault.get(name, first.version)
    assert await vault.get(name, mine.version) == mine.material
    assert await vault.get(name, later.version) == later.material  # a later request's, current perhaps: kept
    assert await vault.disable_older(name, uuid.uuid4().hex) == 0  # a version it does not have: nothing
    await vault.delete(name)


async def test_a_version_key_vault_refuses_to_disable_stays_enabled_and_a_warning_says_so(
        clients: AzureClients, admin, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Disabling is best effort (the credential it holds is revoked on the application all the same), but a refusal
    is told: it was swallowed without a word, so a vault whose identity lost its role kept every old version enabled
    unseen."""
    import logging

    vault = SecretVault(clients)
    name = f"vault-test-{uuid.uuid4().hex[:8]}"
    old = await vault.write(name, {"clientSecret": "old-" + uuid.uuid4().hex}, {})
    admin.set_faults([{"method": "PATCH", "path": f"/secrets/{name}/", "status": 403,
                       "body": {"error": {"code": "Forbidden", "message": "Caller is not authorized"}}}])
    try:
        with caplog.at_level(logging.WARNING, logger="shared.store.vault"):
            await vault.disable(name, old.version)
    finally:
        admin.set_faults([])
    assert await vault.get(name, old.version) == old.material
    [warning] = [r.getMessage() for r in caplog.records if r.name == "shared.store.vault"]
    assert f"Version {old.version} of secret {name} was not disabled" in warning
    assert "Key Vault refused the service's own identity (403 Forbidden)" in warning
    assert old.material["clientSecret"] not in caplog.text
    await vault.delete(name)
