"""A credential's health from what is known of it: when it expires, whether Entra ID refused it."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.apps import Method
from shared.records import EXPIRED, EXPIRING, FAILING, HEALTHY, STATUS_FAILED, ConnectionRecord, HealthState

REFRESH_TOKEN_LIFETIME = timedelta(days=90)  # Entra ID's refresh tokens lapse after 90 days unused
RETRY_UNREACHABLE = timedelta(hours=1)  # when Entra or Graph could not be reached, the next check comes sooner
# A renewal overdue by more than this is not counted on (the sweep has stopped, say): the expiry is warned of.
RENEWAL_OVERDUE = timedelta(days=1)


def status_of(expires_at: datetime | None, refused: bool, now: datetime, warning: timedelta,
              renewed_at: datetime | None = None) -> str:
    """Expired before failing before expiring before healthy. A credential that the service renews before it
    expires (``renewed_at``: see :func:`renewal`) is not expiring: nobody has anything to do."""
    if expires_at is not None and expires_at <= now:
        return EXPIRED
    if refused:
        return FAILING
    renewed = renewed_at is not None and expires_at is not None and now - RENEWAL_OVERDUE < renewed_at < expires_at
    if expires_at is not None and expires_at - now <= warning and not renewed:
        return EXPIRING
    return HEALTHY


def renewal(record: ConnectionRecord, next_check_at: datetime | None) -> datetime | None:
    """When the service itself renews the credential: an OAuth connection's refresh token at its next check (each
    refresh starts its 90 days again); another's next scheduled rotation, while automatic rotation is on and its
    last attempt did not fail (one that fails is warned of: nothing will replace the credential). None: nothing
    does, and its expiry is the user's to act on."""
    if record.method == Method.OAUTH:
        return next_check_at
    state = record.rotation
    # Its own outcome, not ``failures`` (which a failing clean-up of an application left behind counts too); a
    # retry under way of a rotation that failed is not a renewal yet.
    failing = state.status == STATUS_FAILED or state.failing_since is not None
    return state.next_at if state.enabled and not failing else None


def next_check(now: datetime, interval: timedelta, expires_at: datetime | None, warning: timedelta,
               scheduled: datetime | None = None, renewed_at: datetime | None = None) -> datetime:
    """When to check next: ``interval`` after the check was due (``scheduled``, when it is not in the future and
    this is not much later: a sweep picks a check up a little after its time, and counting from then would drift
    it past the next sweep, every 25 hours with hourly sweeps), else after ``now``; or sooner when the credential
    starts expiring or expires before then, so that the warning and the expiry are noticed when they happen."""
    due = (scheduled if scheduled is not None and now - interval < scheduled <= now else now) + interval
    if expires_at is not None:
        # ... and when a renewal that kept the warning off stops counting (overdue), should it not have come.
        overdue = renewed_at + RENEWAL_OVERDUE if renewed_at is not None else expires_at
        for milestone in (expires_at - warning, expires_at, overdue):
            if now < milestone < due:
                due = milestone
    return due


def fresh_health(record: ConnectionRecord, expires_at: datetime | None, now: datetime, warning: timedelta,
                 interval: timedelta) -> HealthState:
    """The health of credentials that just worked (created, changed, rotated): the notification memory kept."""
    renewed = renewal(record, now + interval)
    due = next_check(now, interval, expires_at, warning, renewed_at=renewed)
    return record.health.evolve(status=status_of(expires_at, False, now, warning, renewed),
                                checked_at=now, message=None, credential_expires_at=expires_at, next_check_at=due)


def redated(record: ConnectionRecord, now: datetime, warning: timedelta) -> HealthState:
    """The health of a connection whose renewal or end changed without a check (its rotation turned on or off, or
    rescheduled; its secret's Key ID given): a credential that worked at its last check is expiring, or not, by what
    renews it now and by its end, and is checked by the time that renewal is overdue, its warning starts or it ends.
    A failing, expired or unchecked one stays so until its next check."""
    health = record.health
    if health.status not in (HEALTHY, EXPIRING):
        return health
    renewed = renewal(record, health.next_check_at)
    due = health.next_check_at
    if renewed is not None and due is not None and now < renewed + RENEWAL_OVERDUE < due:
        due = renewed + RENEWAL_OVERDUE  # checked when the new renewal would stop counting, should it not come
    expires = health.credential_expires_at  # (and when its warning starts, or it ends, should its end be new)
    for milestone in (expires - warning, expires) if expires is not None and due is not None else ():
        if due is not None and now < milestone < due:
            due = milestone
    return health.evolve(status=status_of(health.credential_expires_at, False, now, warning, renewed),
                         next_check_at=due)
