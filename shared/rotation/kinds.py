"""Which :class:`~shared.rotation.rolls.CredentialRoll` a rotation of a connection runs: the one of its method."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.apps import Method
from shared.errors import InvalidRequest
from shared.rotation.certificates import CertificateRoll
from shared.rotation.rolls import CredentialRoll, PasswordRoll

if TYPE_CHECKING:
    from shared.records import ConnectionRecord

ROLLS: dict[str, CredentialRoll] = {
    Method.CLIENT_SECRET.value: PasswordRoll(),
    Method.CERTIFICATE.value: CertificateRoll(),
}


def roll_of(record: ConnectionRecord) -> CredentialRoll:
    """The roll a rotation of ``record`` runs."""
    roll = ROLLS.get(record.method)
    if roll is None:
        raise InvalidRequest(f"A {record.method} connection has no credential the service can rotate.")
    return roll
