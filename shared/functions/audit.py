"""The audit log: ``GET /api/v1/audit-logs`` (Auditor: of every app, or of the apps a role limited to one grants)
and the timer that enforces ``AUDIT_RETENTION_DAYS`` (on the audit log and the rotation history)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func

from shared.functions.connections import OPEN
from shared.functions.http import endpoint, granted_apps, json_response, query_int
from shared.functions.invocation import traced_timer

bp = func.Blueprint()
log = logging.getLogger(__name__)

# Daily at 03:15 UTC: a fixed time, as retention needs no tuning (the number of days is the setting).
RETENTION_SCHEDULE = "0 15 3 * * *"


def _when(req: func.HttpRequest, name: str) -> datetime | None:
    from shared.errors import FieldError, InvalidRequest

    raw = req.params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"The query parameter {name} must be an ISO 8601 time.",
                             errors=[FieldError(f"/{name}", "must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z")]
                             ) from None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not _EARLIEST <= value < _LATEST:  # nothing is recorded outside these (and the day arithmetic stays in range)
        raise InvalidRequest(f"The query parameter {name} is out of range.",
                             errors=[FieldError(f"/{name}", "must be between 1970-01-01T00:00:00Z and 9000-01-01")])
    return value


def _apps_searched(app: str | None) -> set[str] | None:
    """The apps whose records the search reads: the one the query names (the caller's role for it was checked), else
    every record (None) for an Auditor or Admin of every app, else those of the apps the caller's roles limited to
    one app grant (a record of no app, such as a sign-in, is none of them)."""
    from shared.apps import APPS
    from shared.auth import AUDITOR
    from shared.errors import FieldError, InvalidRequest

    if app is None:
        return granted_apps(AUDITOR)
    if app not in APPS:
        raise InvalidRequest("The query parameter app names no app of this service.",
                             errors=[FieldError("/app", f"must be one of {', '.join(sorted(APPS))}")])
    return {app}


_EARLIEST, _LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)
ACTOR_MAX = 256  # characters of an actor's id: an object id, an application's client id, "system"
CONNECTION_ID_MAX = 128  # a connection's id is a GUID; a refused request's record names the path's value as it came


def _filters(req: func.HttpRequest) -> dict[str, str | None]:
    """The search's filters, checked before any is sent to Table Storage (a value it cannot take, such as one of
    20,000 characters, was a 502): a connection's id printable text of at most ``CONNECTION_ID_MAX`` characters,
    a GUID searched lower-cased, as records name it whatever the spelling the request used, anything else as given
    (a refused request's record names the path's value as it came, escaped, which need not be a GUID),
    an action a dotted slug (``connection.create``), an actor's id printable text of at most ``ACTOR_MAX``
    characters. None: not asked for."""
    import re

    from shared.errors import FieldError, InvalidRequest
    from shared.fields import GUID_RE

    errors: list[FieldError] = []
    connection_id = req.params.get("connectionId") or None
    if connection_id is not None and GUID_RE.fullmatch(connection_id):
        connection_id = connection_id.lower()
    if connection_id is not None and (len(connection_id) > CONNECTION_ID_MAX or not connection_id.isprintable()):
        errors.append(FieldError("/connectionId", f"must be a connection's id: at most {CONNECTION_ID_MAX} "
                                                  "printable characters"))
    action = req.params.get("action") or None
    if action is not None and not re.fullmatch(r"[a-z][a-z0-9.-]{0,63}", action):
        errors.append(FieldError("/action", "must be an audit action such as connection.create"))
    actor = req.params.get("actor") or None
    if actor is not None and (len(actor) > ACTOR_MAX or not actor.isprintable()):
        errors.append(FieldError("/actor", f"must be an actor's id: at most {ACTOR_MAX} printable characters"))
    if errors:
        raise InvalidRequest("The audit search's filters are not valid.", errors=errors)
    return {"connection_id": connection_id, "actor": actor, "action": action}


@bp.function_name("list_audit_logs")
@bp.route(route="api/v1/audit-logs", methods=["GET"], auth_level=OPEN)
@endpoint("Auditor", any_app=True,
          query=("from", "to", "app", "connectionId", "actor", "action", "limit", "continuationToken"))
async def list_audit_logs(req: func.HttpRequest) -> func.HttpResponse:
    from shared.settings import get_settings
    from shared.wiring import audit_log

    records, token = await audit_log().search(
        _when(req, "from"), _when(req, "to"), **_filters(req), limit=query_int(req, "limit"),
        continuation=req.params.get("continuationToken") or None,
        retention_days=get_settings().audit_retention_days, apps=_apps_searched(req.params.get("app") or None),
    )
    return json_response({"auditLogs": [record.as_dict() for record in records], "continuationToken": token})


@bp.function_name("enforce_audit_retention")
@bp.timer_trigger(schedule=RETENTION_SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=True)
@traced_timer
async def enforce_audit_retention(timer: func.TimerRequest) -> None:
    from shared.settings import get_settings
    from shared.wiring import audit_log, rotation_history, sessions

    days, audit = get_settings().audit_retention_days, audit_log()
    try:
        await audit.purge_expired(days)
    finally:
        # Each purge runs whether or not the one before could (one does not when its own record cannot be
        # written): the rotation history's entries of the same age, then the console's expired sessions and pending
        # sign-ins, which any number of anonymous sign-in starts can leave behind (a sign-in removes a page of them
        # only).
        try:
            await audit.purge_expired_history(rotation_history(), days)
        finally:
            await sessions().purge_all_expired()
