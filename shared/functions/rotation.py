"""Rotation: rotate now, migrate to the federated method, the rotation history, the app registrations a Graph
connection sees, and the timer that sweeps due rotations (``%ROTATION_SWEEP_SCHEDULE%``)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.functions.connections import BASE, OPEN, _reader, _rotating, _service
from shared.functions.http import endpoint, json_response, query_int, read_json
from shared.functions.invocation import traced_timer

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("rotate_app_connection")
@bp.route(route=BASE + "/{app}/{connectionId}/rotate", methods=["POST"], auth_level=OPEN)
@endpoint("Rotator", action="connection.rotate")
async def rotate_app_connection(req: func.HttpRequest) -> func.HttpResponse:
    return await _rotating(_service().rotate(req.route_params["app"], req.route_params["connectionId"],
                                             if_match=req.headers.get("if-match")))


@bp.function_name("migrate_app_connection_to_federated")
@bp.route(route=BASE + "/{app}/{connectionId}/migrate-to-federated", methods=["POST"], auth_level=OPEN)
@endpoint("Rotator", action="connection.migrate-to-federated")
async def migrate_app_connection_to_federated(req: func.HttpRequest) -> func.HttpResponse:
    body = read_json(req) if (req.get_body() or b"").strip() else {}
    return await _rotating(_service().migrate_to_federated(req.route_params["app"], req.route_params["connectionId"],
                                                           body, if_match=req.headers.get("if-match")))


@bp.function_name("list_app_connection_rotations")
@bp.route(route=BASE + "/{app}/{connectionId}/rotations", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", query=("limit", "continuationToken"))
async def list_app_connection_rotations(req: func.HttpRequest) -> func.HttpResponse:
    events, token = await _reader().rotations(
        req.route_params["app"], req.route_params["connectionId"], query_int(req, "limit"),
        req.params.get("continuationToken"),
    )
    return json_response({"rotations": [event.as_dict() for event in events], "continuationToken": token})


@bp.function_name("list_azure_client_secrets_clients")
@bp.route(route=BASE + "/azure-client-secrets/{connectionId}/clients", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", app="azure-client-secrets", action="connection.list-clients", query=("limit", "continuationToken"))
async def list_azure_client_secrets_clients(req: func.HttpRequest) -> func.HttpResponse:
    clients, token = await _service().clients_visible(
        req.route_params["connectionId"], query_int(req, "limit"), req.params.get("continuationToken"))
    return json_response({"clients": clients, "continuationToken": token})


@bp.function_name("rotate_due_credentials")
@bp.timer_trigger(schedule="%ROTATION_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
@traced_timer
async def rotate_due_credentials(timer: func.TimerRequest) -> None:
    from shared.wiring import run_sweep

    if timer.past_due:
        log.info("The rotation sweep is running late")
    await run_sweep()
