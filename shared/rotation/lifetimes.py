"""Lifetimes the tenant allows: a new credential ends within its app-management policy's ``maxLifetime``.

Before a password or key is added, the effective policy is read (the application's own
``appManagementPolicies``, else the tenant's ``defaultAppManagementPolicy``); a credential that may not read it
(403) proceeds without a cap. The new credential's end (2 x interval + grace) is capped at ``maxLifetime`` less
a margin for clock skew. An interval whose credential could not outlive the next rotation plus the grace
period under that cap is refused when rotation is configured (:func:`require_interval_fits`); at rotation time, a
cap that leaves a new credential less than ``MIN_ROOM`` fails the attempt with that same error before anything is
added (:func:`require_room_to_rotate`).
Should Graph still answer ``CredentialInvalidLifetimeAsPerAppPolicy`` (a policy changed, or one the credential
cannot read), the rotator reads the policy again and retries once within it, or with the shortest lifetime
that still outlives the next rotation; and fails with a message that says what to change.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.errors import CredentialLifetimeRefused, FieldError, RotationIntervalTooLong

if TYPE_CHECKING:
    from shared.ports import LifetimePolicy
    from shared.rotation.rolls import CredentialRoll

GRACE_DAYS = 3
MARGIN = timedelta(hours=1)  # under the policy's maxLifetime: Graph's clock may be ahead of ours
# The shortest life a rotation gives a credential (its policy's cap less MARGIN): under it, the rotation is refused
# before anything is added. A longer one that leaves no grace period is rotated again at half its life, at most a
# day after it was made (``next_rotation``'s floor), each successor tested before the credential in use is revoked.
MIN_ROOM = timedelta(hours=2)
LIFETIME_CODE = "CredentialInvalidLifetimeAsPerAppPolicy"


def wanted_lifetime(interval_days: int) -> timedelta:
    """What a rotation asks for: valid over two intervals and the grace period (it outlives a missed rotation)."""
    return timedelta(days=2 * interval_days + GRACE_DAYS)


def needed_lifetime(interval_days: int) -> timedelta:
    """The least a rotated credential must live: until the next rotation, plus the grace period."""
    return timedelta(days=interval_days + GRACE_DAYS)


def capped_end(now: datetime, interval_days: int, cap: timedelta | None) -> datetime:
    lifetime = wanted_lifetime(interval_days)
    if cap is not None:
        lifetime = min(lifetime, cap - MARGIN)
    return now + lifetime


def _days(lifetime: timedelta) -> str:
    days = lifetime.total_seconds() / 86400
    return f"{days:g} days" if days == int(days) else f"{days:.1f} days"


def interval_limit(cap: timedelta) -> int:
    """The longest rotation interval (whole days) whose credentials fit in ``cap``."""
    return int((cap - MARGIN).total_seconds() // 86400) - GRACE_DAYS


def addition_refused(roll: CredentialRoll, policy: LifetimePolicy | None, code: str | None = None) -> str:
    """The failure message of a credential the policy does not allow to be added at all."""
    detail = f" ({code})" if code else ""
    if roll.noun == "client secret":
        return ("The tenant's app-management policy does not allow adding client secrets to this application "
                f"(passwordAddition restriction{detail}). Use the certificate method, whose keys the service rotates "
                "with addKey, or the federated method, which needs no secret at all.")
    return f"The tenant's app-management policy does not allow adding a {roll.noun} to this application{detail}."


def lifetime_refused(roll: CredentialRoll, lifetime: timedelta,
                     policy: LifetimePolicy | None) -> CredentialLifetimeRefused:
    cap = roll.max_lifetime(policy) if policy is not None else None
    limit = (f" Its {'passwordLifetime' if roll.noun == 'client secret' else 'asymmetricKeyLifetime'} maxLifetime is "
             f"{_days(cap)}: choose a rotation interval of at most {max(interval_limit(cap), 0)} days."
             if cap is not None else " The policy could not be read with the connection's credential; ask an "
             "administrator for its maxLifetime and choose a rotation interval that fits.")
    return CredentialLifetimeRefused(
        f"Microsoft Graph refused a new {roll.noun} valid {_days(lifetime)} under the tenant's app-management "
        f"policy ({LIFETIME_CODE}).{limit}",
        extensions={"graphCode": LIFETIME_CODE,
                    "maxLifetimeDays": cap.total_seconds() / 86400 if cap is not None else None},
    )


def require_interval_fits(roll: CredentialRoll, policy: LifetimePolicy | None, interval_days: int,
                          pointer: str = "/rotation/rotationInterval") -> None:
    """Refuse (400, naming the policy's limit) a rotation interval whose credentials cannot outlive the next
    rotation plus the grace period within the policy's ``maxLifetime``; an unreadable policy refuses nothing."""
    if policy is None:
        return
    if roll.addition_refused(policy):
        raise CredentialLifetimeRefused(addition_refused(roll, policy), extensions={"policySource": policy.source})
    cap = roll.max_lifetime(policy)
    if cap is None or cap - MARGIN >= needed_lifetime(interval_days):
        return
    limit = interval_limit(cap)
    kind = "passwordLifetime" if roll.noun == "client secret" else "asymmetricKeyLifetime"
    raise RotationIntervalTooLong(
        f"The {policy.source}'s app-management policy limits a new {roll.noun} to {_days(cap)} ({kind} "
        f"maxLifetime); a rotation every {interval_days} days needs credentials valid {interval_days + GRACE_DAYS} "
        f"days (the interval and {GRACE_DAYS} days of grace). Choose a rotation interval of at most "
        f"{max(limit, 0)} days.",
        errors=[FieldError(pointer, f"must be at most {max(limit, 0)} days under the tenant's policy")],
        extensions={"maxLifetimeDays": cap.total_seconds() / 86400, "policySource": policy.source,
                    "restrictionType": kind, "maxRotationInterval": max(limit, 0)},
    )


def require_room_to_rotate(roll: CredentialRoll, policy: LifetimePolicy | None, interval_days: int) -> None:
    """At rotation time, before anything is added: refuse, with the error configuring the interval gives
    (:func:`require_interval_fits`, 400 ``rotation-interval-exceeds-policy``), a policy whose ``maxLifetime`` leaves
    a new credential less than ``MIN_ROOM`` (review sweeps 1). A cap that fits no interval but leaves that much is
    not refused (refusing it would let the credential in use run out): the capped credential is rotated again at
    half its life, at most a day on (``next_rotation``), and one that fits a shorter interval ``GRACE_DAYS`` before
    it ends."""
    cap = roll.max_lifetime(policy) if policy is not None else None
    if cap is not None and cap - MARGIN < MIN_ROOM:
        require_interval_fits(roll, policy, interval_days)
