"""Turning a request's rotation fields into a connection's rotation settings, and finding the Key ID.

The original secret's Key ID is what the first rotation revokes: given as ``clientSecretKeyId`` (and then
checked to be that secret's), or looked up on the application's password credentials by ``hint`` (the
secret's first three characters) when exactly one matches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.apps import Method
from shared.errors import CredentialRejected, FieldError, InvalidRequest, NotFound, UpstreamError, UpstreamForbidden
from shared.models import RotationIn
from shared.rotation.schedule import RotationSchedule, ScheduleError, parse_hhmm
from shared.rotation.state import rotate_at_utc

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.ports import Directory, GraphSession, PasswordCredential


@dataclass(frozen=True)
class RotationConfig:
    interval_days: int
    rotate_at: str
    time_zone: str

    @property
    def schedule(self) -> RotationSchedule:
        return RotationSchedule(self.interval_days, parse_hhmm(self.rotate_at), self.time_zone)


def parse_rotation(rotation: RotationIn) -> RotationConfig:
    if (rotation.rotateAtUtc is None) == (rotation.rotateAt is None):
        raise InvalidRequest(
            "Give the time of day as rotateAtUtc {hours, minutes} or as rotateAt \"HH:MM\" with a timeZone.",
            errors=[FieldError("/rotation", "needs exactly one of rotateAtUtc and rotateAt")],
        )
    if rotation.rotateAtUtc is not None:
        if rotation.timeZone not in (None, "UTC"):
            raise InvalidRequest(
                "rotateAtUtc is in UTC; use rotateAt for a local time.",
                errors=[FieldError("/rotation/timeZone", "goes with rotateAt, not rotateAtUtc")],
            )
        config = RotationConfig(
            rotation.rotationInterval, rotate_at_utc(rotation.rotateAtUtc.hours, rotation.rotateAtUtc.minutes), "UTC"
        )
    else:
        assert rotation.rotateAt is not None
        config = RotationConfig(rotation.rotationInterval, rotation.rotateAt, rotation.timeZone or "UTC")
    try:
        config.schedule  # noqa: B018 - validates the time and the zone
    except ScheduleError as error:
        raise InvalidRequest(
            "The rotation schedule is not valid.", errors=[FieldError(f"/rotation/{error.field}", error.message)]
        ) from None
    return config


def require_rotatable(method: Method, rotation_methods: tuple[Method, ...], pointer: str) -> None:
    """``pointer`` names the request field that asked for rotation."""
    if method not in rotation_methods:
        allowed = ", ".join(m.value for m in rotation_methods)
        raise InvalidRequest(
            f"Automatic credential rotation is only available for the {allowed} method.",
            errors=[FieldError(pointer, f"needs the {allowed} method")],
        )


async def resolve_key_id(graph: GraphSession, client_id: str, client_secret: str,
                         given: str | None) -> PasswordCredential:
    """The Key ID of ``client_secret`` on the application: the given one, which must be the Key ID of that very
    secret (the secret starts with that password's ``hint``), or the one password whose hint it starts with."""
    registration = await graph.find(client_id)
    if given is not None:
        password = next((p for p in registration.passwords if p.key_id == given.lower()), None)
        if password is None:
            raise InvalidRequest(
                "The application has no client secret with that Key ID.",
                errors=[FieldError("/credentials/clientSecretKeyId", "is not a Key ID of the application's secrets")],
            )
        if not password.hint or not client_secret.startswith(password.hint):
            raise InvalidRequest(
                "The Key ID belongs to another client secret of the application than the one given.",
                errors=[FieldError("/credentials/clientSecretKeyId", "must be the Key ID of clientSecret")],
            )
        return password
    matches = [p for p in registration.passwords if p.hint and client_secret.startswith(p.hint)]
    if len(matches) != 1:
        found = "none" if not matches else f"{len(matches)}"
        raise InvalidRequest(
            f"The Key ID of the client secret could not be found by its hint ({found} of the application's secrets "
            "match); give it as clientSecretKeyId (Certificates & secrets > Secret ID in the Azure portal).",
            errors=[FieldError("/credentials/clientSecretKeyId", "is required to rotate this secret")],
        )
    return matches[0]


async def require_interval_allowed(directory: Directory, method: Method, tenant_id: str, client_id: str,
                                   material: Mapping[str, str], interval_days: int) -> None:
    """Refuse (400 ``rotation-interval-exceeds-policy``, naming the limit) a rotation interval whose credentials
    cannot outlive the next rotation plus the grace period under the application's app-management policy, as the
    connection's credential reads it. An application that may not read itself or its policy refuses nothing here:
    its rotations cap the lifetime, or retry within Graph's refusal."""
    from shared.rotation.kinds import ROLLS
    from shared.rotation.lifetimes import require_interval_fits

    roll = ROLLS.get(method.value)
    if roll is None:
        return
    try:
        async with directory.graph(method, tenant_id, client_id, material) as graph:
            registration = await graph.find(client_id)
            policy = await graph.lifetime_policy(registration.object_id, registration.created_at)
    except (UpstreamForbidden, CredentialRejected, UpstreamError, NotFound) as unread:
        # Not readable now: the change is not refused for it (a rotation reports what Graph answers).
        log.info("The app-management policy of %s could not be read (%s); the interval is not checked",
                 client_id, type(unread).__name__)
        return
    require_interval_fits(roll, policy, interval_days)
