"""Credential health: the summary (Reader), a check now (Writer), and the timer that checks what is due
(``%HEALTH_SWEEP_SCHEDULE%``)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.functions.connections import BASE, OPEN, _one
from shared.functions.http import endpoint, granted_apps, json_response
from shared.functions.invocation import traced_timer

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("get_app_connections_health")
@bp.route(route=f"{BASE}/health", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", any_app=True)
async def get_app_connections_health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.auth import READER
    from shared.wiring import connection_reader

    return json_response(await connection_reader().health_summary(granted_apps(READER)))


@bp.function_name("check_app_connection_health")
@bp.route(route=BASE + "/{app}/{connectionId}/health", methods=["POST"], auth_level=OPEN)
@endpoint("Writer", action="connection.check-health")
async def check_app_connection_health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.wiring import health_checker

    return _one(await health_checker().check_now(req.route_params["app"], req.route_params["connectionId"],
                                                   if_match=req.headers.get("if-match")))


@bp.function_name("check_connection_health")
@bp.timer_trigger(schedule="%HEALTH_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
@traced_timer
async def check_connection_health(timer: func.TimerRequest) -> None:
    from shared.wiring import run_health_sweep

    if timer.past_due:
        log.info("The health sweep is running late")
    await run_health_sweep()
