"""Credentials that several connections of one application sign in with.

An owner may give the same client secret or certificate to two connections (say one for Key Vault and one for App
Configuration, both of one application). Revoking it when one of them is rotated, or migrated with
``revokeOriginal``, would lock the other out: what another connection signs in with stays on the application.
Only a credential the owner gave can be shared (one the service made is known to its connection alone), so this
is asked when such a credential is to be revoked, right before its revocation.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.apps import APPS
from shared.errors import NotFound, SecretGone, VersionDisabled
from shared.fields import MAX_PAGE_SIZE
from shared.ports import ConnectionStore, SecretStore
from shared.records import STATUS_DELETING, ConnectionRecord
from shared.rotation.rolls import CredentialRoll


def same_application(one: ConnectionRecord, other: ConnectionRecord, *, any_tenant: bool = False) -> bool:
    """Whether two connections sign in as one application of one tenant (by client ID and tenant); ``any_tenant``:
    by client ID alone (a multi-tenant application's connections in other tenants sign in with the credentials of
    its one application object). The federated sharing keeps to one tenant: the service manages a federated
    credential through the application object, which a connection of another tenant cannot reach (Graph finds
    only a service principal there)."""
    same_client = (one.client_id or "").lower() == (other.client_id or "").lower()
    return same_client and (any_tenant or one.tenant_id.lower() == other.tenant_id.lower())


async def of_the_same_application(store: ConnectionStore, record: ConnectionRecord, *,
                                  any_tenant: bool = False) -> list[ConnectionRecord]:
    """The other connections of ``record``'s application (:func:`same_application`, of every app), but those being
    deleted (they go, and need nothing kept)."""
    found: list[ConnectionRecord] = []
    for app_id in APPS:
        continuation: str | None = None
        while True:
            page, continuation = await store.list_page(app_id, MAX_PAGE_SIZE, continuation)
            found += [other for other in page if other.id != record.id and other.status != STATUS_DELETING
                      and same_application(other, record, any_tenant=any_tenant)]
            if continuation is None:
                break
    return found


async def signing_in_with(store: ConnectionStore, vault: SecretStore, roll: CredentialRoll,
                          record: ConnectionRecord, key_id: str, material: Mapping[str, str] | None,
                          ) -> list[ConnectionRecord]:
    """The other connections of ``record``'s application that sign in with its credential ``key_id`` of ``roll``'s
    kind (whose ``material`` it is, when known): one that tracks that Key ID, or one of that method that tracks
    none and whose stored material is the same credential. One whose stored material is gone or disabled, or a
    credential whose material is not known, counts as signing in with it (it is kept: a revocation cannot be
    undone); a failure to read it (Key Vault not answering) is raised: the caller's attempt fails, and is tried
    again."""
    sharing: list[ConnectionRecord] = []
    for other in await of_the_same_application(store, record, any_tenant=True):
        if other.method != roll.method.value:
            continue
        if other.rotation.key_id:
            if other.rotation.key_id.lower() == key_id.lower():
                sharing.append(other)
            continue
        if material is None or other.secret_version is None:
            sharing.append(other)
            continue
        try:
            theirs = await vault.get(other.secret_name, other.secret_version)
        except (SecretGone, VersionDisabled, NotFound):
            sharing.append(other)
            continue
        if roll.same_credential(material, theirs):
            sharing.append(other)
    return sharing


def named(connections: list[ConnectionRecord]) -> str:
    """``'kv' (azure-key-vault)``, ...: the connections as a message names them."""
    return ", ".join(f"'{c.name}' ({c.app})" for c in connections)
