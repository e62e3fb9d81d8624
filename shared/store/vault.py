"""Secret material in Key Vault: one secret per connection, a new version per change.

The value is a JSON object (the method's secret fields); the content type says so and the
tags name the connection, app and method. The connection entity records which version is
current, so a version written by a request that then lost a race is never used. A call Key Vault
fails is an ``UpstreamError`` that names Key Vault, its status and what to do
(``shared.azure.upstream``): a 403 is the service's own identity refused (its role), a 429 or
503 left by the retries ``UpstreamThrottled``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from shared.azure.upstream import KEY_VAULT, sentence, translated, upstream_error
from shared.errors import SecretGone, UpstreamError, VersionDisabled
from shared.ports import StoredVersion
from shared.redaction import register_secret

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.app-connections.credentials+json"
# Fields of the material that are not secret (a certificate connection's certificate: public by design, Entra ID
# holds it to check the connection's signatures): never registered for log redaction, where each would take the
# room of a secret.
PUBLIC_FIELDS = frozenset({"certificateBody"})


def secret_name_for(connection_id: str) -> str:
    return f"appconn-{connection_id}"


def _material(value: str) -> dict[str, str]:
    """A version's JSON value as the method's fields (each secret one registered for log redaction)."""
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise UpstreamError("The secret in Key Vault is not in the expected format.")
    material = {str(k): str(v) for k, v in parsed.items()}
    _register(material)
    return material


def _register(material: Mapping[str, str]) -> None:
    """Redact the secret fields of ``material`` from every later log record, kept apart from what requests
    register (``stored=True``), so that no number of those pushes them out."""
    for name, value in material.items():
        if name not in PUBLIC_FIELDS:
            register_secret(value, stored=True)


class SecretVault:
    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def write(
        self, name: str, material: Mapping[str, str], tags: Mapping[str, str], *,
        expires_on: datetime | None = None,
    ) -> StoredVersion:
        """Write ``material`` as a new version of ``name`` (expiring with the credential it holds, where that has an
        end): its version id, and the material as Key Vault answered it (Set Secret returns the stored value),
        which is what a read of that version returns, without the read."""
        _register(material)
        with translated(KEY_VAULT, "store a secret version"):
            secret = await self._clients.secrets().set_secret(
                name, json.dumps(dict(material)), content_type=CONTENT_TYPE, tags=dict(tags), expires_on=expires_on
            )
        version = secret.properties.version
        if not version:
            raise UpstreamError("Key Vault did not return a secret version.")
        stored = None
        if secret.value is not None:
            with contextlib.suppress(UpstreamError):
                stored = _material(secret.value)
        return StoredVersion(version, stored)

    async def get(self, name: str, version: str) -> dict[str, str]:
        """The material of a version; :class:`VersionDisabled` when the vault refuses it as disabled,
        :class:`SecretGone` when it has no such secret or version (deleted outside the service)."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        with translated(KEY_VAULT, "read a secret version"):
            try:
                secret = await self._clients.secrets().get_secret(name, version)
            except ResourceNotFoundError:
                raise SecretGone(f"Key Vault has no version {version} of {name}.") from None
            except HttpResponseError as error:
                if error.status_code == 403 and "disabled" in str(getattr(error, "message", "") or error).lower():
                    raise VersionDisabled(f"Key Vault refused to read a disabled version of {name}.") from None
                raise
        return _material(secret.value or "{}")

    async def disable(self, name: str, version: str) -> bool:
        """Disable a version that is not (or no longer) current: True once it is (or is gone: nothing of it is
        enabled). One Key Vault refused stays enabled (False), which a warning says (what failed: Key Vault's
        status, or the service's identity that got no token; never the value); the caller keeps it to try again."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        with translated(KEY_VAULT, "disable a secret version"):
            try:
                await self._clients.secrets().update_secret_properties(name, version, enabled=False)
            except ResourceNotFoundError:  # deleted (the secret, or the version): nothing of it can be read
                return True
            except HttpResponseError as error:  # Key Vault's refusal, or the service's identity that got no token
                log.warning("Version %s of secret %s was not disabled, and stays enabled: %s", version, name,
                            sentence(upstream_error(error, "disable a secret version", KEY_VAULT)))
                return False
        return True

    async def delete(self, name: str) -> None:
        """Delete the secret (soft delete, as the vault keeps it); an absent secret is fine."""
        from azure.core.exceptions import ResourceNotFoundError

        with translated(KEY_VAULT, "delete a secret"), contextlib.suppress(ResourceNotFoundError):
            await self._clients.secrets().delete_secret(name)

    async def disable_others(self, name: str, keep: str) -> int:
        """Disable every enabled version of ``name`` but ``keep`` (the current one); return how many."""
        return await self._disable_where(name, lambda version, tags: version != keep)

    async def disable_older(self, name: str, version: str) -> int:
        """Disable every enabled version of ``name`` that Key Vault created before ``version`` (as it records the
        time: to the second); one created after it, or in the same second, stays. Return how many."""
        from azure.core.exceptions import ResourceNotFoundError

        with translated(KEY_VAULT, "list a secret's versions"):
            try:
                versions = [props async for props in self._clients.secrets().list_properties_of_secret_versions(name)]
            except ResourceNotFoundError:
                return 0
        mine = next((props.created_on for props in versions if props.version == version), None)
        if mine is None:
            return 0
        count = 0
        for props in versions:
            if props.enabled and props.version and props.created_on is not None and props.created_on < mine:
                await self.disable(name, props.version)
                count += 1
        return count

    async def enabled_since(self, name: str) -> datetime | None:
        """When the newest enabled version of ``name`` was written (as Key Vault records it); None when no version
        is enabled, or there is no such secret (deleted, or never written)."""
        from azure.core.exceptions import ResourceNotFoundError

        newest: datetime | None = None
        with translated(KEY_VAULT, "list a secret's versions"):
            try:
                async for props in self._clients.secrets().list_properties_of_secret_versions(name):
                    if props.enabled and props.created_on is not None and (newest is None
                                                                          or props.created_on > newest):
                        newest = props.created_on
            except ResourceNotFoundError:
                return None
        return newest

    async def disable_tagged(self, name: str, tag: str, value: str) -> int:
        """Disable every enabled version of ``name`` tagged ``tag=value``; return how many."""
        return await self._disable_where(name, lambda version, tags: tags.get(tag) == value)

    async def _disable_where(self, name: str, doomed: Callable[[str, Mapping[str, str]], bool]) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        count = 0
        with translated(KEY_VAULT, "list a secret's versions"):
            try:
                async for props in self._clients.secrets().list_properties_of_secret_versions(name):
                    if props.enabled and props.version and doomed(props.version, props.tags or {}):
                        await self.disable(name, props.version)
                        count += 1
            except ResourceNotFoundError:
                return count
        return count
