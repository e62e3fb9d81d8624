"""What a rotation rolls: one kind of credential on an application, behind one small seam.

The rotator (:mod:`shared.rotation.protocol`) owns everything a rotation guarantees: the journal on the
connection record (ETag-guarded, one step at a time), the lease, resumption after a crash, the history entry of
each attempt, the audit of every change to an application, and the order of the steps, so that the credential
in use is never revoked before its successor has worked and every credential the service created is current,
journaled or removed. A :class:`CredentialRoll` owns only what differs between kinds of credential:

- ``add_successor``: create the successor on the application (``addPassword``; ``addKey`` with a proof signed
  by the key in use), named by the rotation's marker so that one left by a crash before it was journaled is
  found again (``rolled``), and return it with the material the vault keeps for the connection's method;
- ``test_successor``: acquire a token with the successor's material (retried by the rotator while Entra
  propagates it);
- ``store_successor``: the material, as the connection's method stores it, with the tags that tie the vault
  version to the rotation (the rotator writes it as a pending version before the test);
- ``remove_predecessor``: revoke one credential of the roll's kind (``removePassword``; ``removeKey`` with a
  proof signed by ``signer``, the material of the version in use *now*: the successor's at the revoke step,
  the predecessor's when a failed rotation removes its successor again). One already gone counts as done.

A migration to another method is a roll too, and gets the same journal, resumption and verify-before-revoke
for free: its ``method`` is the method after the migration (what ``test_successor`` probes with and
``store_successor`` stores), ``add_successor`` creates the new kind (e.g. a federated identity credential, whose
"material" names the issuer and subject instead of holding a secret), ``rolled`` lists the credentials of both
kinds on the application (so strays of the migration's marker are found whatever their kind), and
``remove_predecessor`` removes the old kind (the journal's ``previous_key_id`` is the old password's or key's
id). The rotator picks the roll of a record with :func:`shared.rotation.kinds.roll_of`; a migration journals which
roll it is running (so a resumed attempt picks the same one) and registers it in ``kinds.ROLLS`` under that name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from shared.apps import Method

if TYPE_CHECKING:
    from shared.apps import AppSpec
    from shared.ports import AppRegistration, Directory, GraphSession, LifetimePolicy, Lost
    from shared.records import ConnectionRecord

HINT_CHARS = 3  # Graph's ``hint`` of a password credential: the secret's first characters, all it shows of it


@dataclass(frozen=True)
class Rolled:
    """A credential of a roll's kind on an application: its Key ID and display name (the marker, when the
    service created it)."""

    key_id: str
    display_name: str | None


@dataclass(frozen=True)
class Successor:
    """A credential a roll has just added: its Key ID, what the vault keeps of it, and when it ends."""

    key_id: str
    material: dict[str, str] = field(repr=False)
    end: datetime | None


class CredentialRoll(Protocol):
    """One kind of credential a rotation can roll (see the module's docstring)."""

    @property
    def method(self) -> Method:
        """The connection method of the successor: tested with it, stored as its material."""
        ...

    @property
    def noun(self) -> str:
        """What the successor is called in messages: "client secret", "certificate"."""
        ...

    def max_lifetime(self, policy: LifetimePolicy) -> timedelta | None:
        """The longest lifetime ``policy`` allows a new credential of this kind (None: no limit)."""
        ...

    def addition_refused(self, policy: LifetimePolicy) -> bool:
        """``policy`` does not allow adding a credential of this kind at all."""
        ...

    def rolled(self, registration: AppRegistration) -> Sequence[Rolled]:
        """The credentials of this kind on the application (to find strays by marker, and what is still there)."""
        ...

    def identify(self, registration: AppRegistration, material: Mapping[str, str]) -> str | None:
        """The Key ID of the credential ``material`` is on the application, when the material tells (a
        certificate's thumbprint does; a client secret's Key ID is resolved when rotation is enabled)."""
        ...

    def may_be_same(self, one: Mapping[str, str], other: Mapping[str, str]) -> bool:
        """Whether two vault versions' materials may be one credential on the application (two connections given
        the same), as far as what the application shows of a credential can tell them apart: a connection holding
        ``other`` that tracks no Key ID may sign in with ``one``, so revoking ``one`` is not safe."""
        ...

    async def add_successor(self, graph: GraphSession, registration: AppRegistration, display_name: str,
                            end: datetime, current: Mapping[str, str], now: datetime,
                            fence: Callable[[], None], lost: Lost) -> Successor:
        """Create the successor on the application, ending at ``end``; ``current`` is the material of the credential
        in use; ``now`` the rotator's clock; ``fence`` is called right before the addition (it raises when the
        rotation is no longer this worker's); ``lost`` removes, audited, what an addition whose answer was lost
        may have made, before it is sent again (a kind that can find its successor again need not call it)."""
        ...

    async def test_successor(self, directory: Directory, app: AppSpec, record: ConnectionRecord,
                             material: Mapping[str, str]) -> None:
        """Acquire a token with the successor (``CredentialRejected`` / ``UpstreamError`` when it does not work)."""
        ...

    def store_successor(self, successor: Successor) -> dict[str, str]:
        """The material the vault keeps for the successor (the format the connection's method reads)."""
        ...

    async def remove_predecessor(self, graph: GraphSession, registration: AppRegistration, key_id: str,
                                 signer: Mapping[str, str], now: datetime) -> None:
        """Revoke the credential ``key_id``; ``signer`` is the material of the version in use now."""
        ...


class SignInRoll:
    """What the rolls of the service's secret-bearing kinds share: the successor is tested by signing in with its
    own material, with the connection's method, and the vault keeps that material as it is."""

    method: Method

    async def test_successor(self, directory: Directory, app: AppSpec, record: ConnectionRecord,
                             material: Mapping[str, str]) -> None:
        await directory.probe(app, self.method, record.tenant_id, record.client_id or "", material)

    def store_successor(self, successor: Successor) -> dict[str, str]:
        return dict(successor.material)


class PasswordRoll(SignInRoll):
    """Client secrets: ``addPassword`` / ``removePassword``."""

    method = Method.CLIENT_SECRET
    noun = "client secret"

    def max_lifetime(self, policy: LifetimePolicy) -> timedelta | None:
        return policy.password_max_lifetime

    def addition_refused(self, policy: LifetimePolicy) -> bool:
        return policy.password_addition_restricted

    def rolled(self, registration: AppRegistration) -> Sequence[Rolled]:
        return [Rolled(p.key_id, p.display_name) for p in registration.passwords]

    def identify(self, registration: AppRegistration, material: Mapping[str, str]) -> str | None:
        return None

    def may_be_same(self, one: Mapping[str, str], other: Mapping[str, str]) -> bool:
        """The same secret, or one Graph cannot tell from it: the same first characters (its ``hint``, all of a
        secret Graph shows). A Key ID resolved or given for ``one`` is only checked against that hint, so when two
        of the application's secrets share it the Key ID may be the other's: that secret is kept (review of this
        session's changes: a Key ID naming a hint twin revoked the secret another connection signs in with)."""
        import hmac

        mine, theirs = one.get("clientSecret", ""), other.get("clientSecret", "")
        return bool(mine) and hmac.compare_digest(mine[:HINT_CHARS].encode(), theirs[:HINT_CHARS].encode())

    async def add_successor(self, graph: GraphSession, registration: AppRegistration, display_name: str,
                            end: datetime, current: Mapping[str, str], now: datetime,
                            fence: Callable[[], None], lost: Lost) -> Successor:
        fence()
        added = await graph.add_password(registration.object_id, display_name, end, lost)
        return Successor(added.key_id, {"clientSecret": added.secret_text}, added.end_date_time or end)

    async def remove_predecessor(self, graph: GraphSession, registration: AppRegistration, key_id: str,
                                 signer: Mapping[str, str], now: datetime) -> None:
        await graph.remove_password(registration.object_id, key_id)
