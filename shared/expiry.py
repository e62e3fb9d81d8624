"""A credential's health from what is known of it: when it expires, whether Entra ID refused it."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.records import EXPIRED, EXPIRING, FAILING, HEALTHY, ConnectionRecord, HealthState

REFRESH_TOKEN_LIFETIME = timedelta(days=90)  # Entra ID's refresh tokens lapse after 90 days unused
RETRY_UNREACHABLE = timedelta(hours=1)  # when Entra or Graph could not be reached, the next check comes sooner


def status_of(expires_at: datetime | None, refused: bool, now: datetime, warning: timedelta) -> str:
    """Expired before failing before expiring before healthy."""
    if expires_at is not None and expires_at <= now:
        return EXPIRED
    if refused:
        return FAILING
    if expires_at is not None and expires_at - now <= warning:
        return EXPIRING
    return HEALTHY


def next_check(now: datetime, interval: timedelta, expires_at: datetime | None, warning: timedelta,
               scheduled: datetime | None = None) -> datetime:
    """When to check next: ``interval`` after the check was due (``scheduled``, when it is not in the future and
    this is not much later: a sweep picks a check up a little after its time, and counting from then would drift
    it past the next sweep, every 25 hours with hourly sweeps), else after ``now``; or sooner when the credential
    starts expiring or expires before then, so that the warning and the expiry are noticed when they happen."""
    due = (scheduled if scheduled is not None and now - interval < scheduled <= now else now) + interval
    if expires_at is not None:
        for milestone in (expires_at - warning, expires_at):
            if now < milestone < due:
                due = milestone
    return due


def fresh_health(record: ConnectionRecord, expires_at: datetime | None, now: datetime, warning: timedelta,
                 interval: timedelta) -> HealthState:
    """The health of credentials that just worked (created, changed, rotated): the notification memory kept."""
    return record.health.evolve(status=status_of(expires_at, False, now, warning), checked_at=now, message=None,
                                credential_expires_at=expires_at,
                                next_check_at=next_check(now, interval, expires_at, warning))
