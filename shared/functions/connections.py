"""HTTP functions for app connections: options, create, list, read, update, delete, validate.

The domain is imported inside each handler so that indexing the function app stays cheap
(cold start); each handler translates HTTP to one domain call and back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import azure.functions as func

from shared.functions.http import endpoint, json_response, query_bool, query_int, read_json

if TYPE_CHECKING:
    from shared.connections import ConnectionService
    from shared.records import ConnectionRecord
    from shared.views import ConnectionReader

bp = func.Blueprint()

BASE = "api/v1/app-connections"
# The access token is the gate (shared.auth), checked by every handler's ``endpoint``: there is no function key.
OPEN = func.AuthLevel.ANONYMOUS
ROTATION_FIELDS = ("isAutoRotationEnabled", "rotation")
GET_ONLY = frozenset({"options", "health"})  # GET routes (``…/options``, ``…/health``), not apps


def writer_and_rotator(req: func.HttpRequest) -> tuple[str, ...]:
    """A create or an edit needs Writer for what it changes of the connection and Rotator for what it changes of
    its rotation (a body that is not a JSON object needs Writer, and gets its 400 from the handler)."""
    from shared.errors import MethodNotAllowed, ServiceError

    if req.method == "POST" and (req.route_params or {}).get("app") in GET_ONLY:  # before any role is asked for
        raise MethodNotAllowed(f"This path answers GET only: …/{req.route_params['app']} is not an app.",
                               headers={"Allow": "GET"})
    try:  # parsed as the handler parses it (size and depth bounded first): a body it refuses needs Writer
        body = read_json(req)
    except ServiceError:
        return ("Writer",)
    if not isinstance(body, dict):
        return ("Writer",)
    rotation = any(body.get(name) not in (None, False) for name in ROTATION_FIELDS)
    if req.method == "PATCH":
        # ``credentials`` of any shape needs Writer, a client secret's Key ID alone too: it says which of the
        # application's secrets the connection holds (so which one a rotation revokes), which the service can check
        # only by Graph's three-character hint (review of this session's changes: a Rotator's word picked the twin).
        rotation = any(name in body for name in ROTATION_FIELDS)
        other = any(name not in ROTATION_FIELDS for name in body) or not body
        return ("Writer", "Rotator") if rotation and other else ("Rotator",) if rotation else ("Writer",)
    return ("Writer", "Rotator") if rotation else ("Writer",)


def _service() -> ConnectionService:
    from shared.wiring import connection_service

    return connection_service()


def _reader() -> ConnectionReader:
    from shared.wiring import connection_reader

    return connection_reader()


def _one(record: ConnectionRecord, status: int = 200, headers: dict[str, str] | None = None,
         detail: str | None = None) -> func.HttpResponse:
    from shared.views import etag_of, to_response

    body: dict[str, object] = {"appConnection": to_response(record)}
    if detail is not None:
        body["detail"] = detail
    return json_response(body, status, {"ETag": etag_of(record), **(headers or {})})


async def _rotating(started: Awaitable[ConnectionRecord], status: int = 200,
                    headers: Callable[[ConnectionRecord], dict[str, str]] | None = None) -> func.HttpResponse:
    """The answer of a route that may start a rotation (or a move to federated): the connection as ``started`` left
    it (``status``, ``headers`` of it); or, once the request had to be answered while the new credential was still
    being tested (``RotationContinues``: the rotation sweep finishes it), the connection as it is, with the same
    headers: ``202`` with ``Retry-After`` and the ``detail`` of what goes on, but for a create, whose ``201`` stands
    (the connection is created, and works with the credential given; its rotation's status and message tell the rest,
    as they tell a first rotation that failed)."""
    from shared.connections import RotationContinues

    try:
        record = await started
    except RotationContinues as continues:
        more = headers(continues.record) if headers is not None else {}
        if status == 201:
            return _one(continues.record, status, more)
        return _one(continues.record, 202, {**more, "Retry-After": str(continues.retry_after)}, continues.detail)
    return _one(record, status, headers(record) if headers is not None else None)


def _location(record: ConnectionRecord) -> dict[str, str]:
    return {"Location": f"/{BASE}/{record.app}/{record.id}"}


@bp.function_name("list_app_connection_options")
@bp.route(route=f"{BASE}/options", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", any_app=True)
async def list_app_connection_options(req: func.HttpRequest) -> func.HttpResponse:
    from shared.options import app_options
    from shared.settings import get_settings

    return json_response({"appConnectionOptions": app_options(get_settings())})


@bp.function_name("create_app_connection")
@bp.route(route=BASE + "/{app}", methods=["POST"], auth_level=OPEN)
@endpoint(writer_and_rotator, action="connection.create")
async def create_app_connection(req: func.HttpRequest) -> func.HttpResponse:
    return await _rotating(_service().create(req.route_params["app"], read_json(req)), 201, _location)


@bp.function_name("list_app_connections")
@bp.route(route=BASE + "/{app}", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", query=("limit", "continuationToken"))
async def list_app_connections(req: func.HttpRequest) -> func.HttpResponse:
    from shared.views import to_response

    records, token = await _reader().list_connections(
        req.route_params["app"], query_int(req, "limit"), req.params.get("continuationToken")
    )
    return json_response({"appConnections": [to_response(r) for r in records], "continuationToken": token})


@bp.function_name("get_app_connection")
@bp.route(route=BASE + "/{app}/{connectionId}", methods=["GET"], auth_level=OPEN)
@endpoint("Reader")
async def get_app_connection(req: func.HttpRequest) -> func.HttpResponse:
    return _one(await _reader().get(req.route_params["app"], req.route_params["connectionId"]))


@bp.function_name("get_app_connection_by_name")
@bp.route(route=BASE + "/{app}/connection-name/{connectionName}", methods=["GET"], auth_level=OPEN)
@endpoint("Reader")
async def get_app_connection_by_name(req: func.HttpRequest) -> func.HttpResponse:
    return _one(await _reader().get_by_name(req.route_params["app"], req.route_params["connectionName"]))


@bp.function_name("update_app_connection")
@bp.route(route=BASE + "/{app}/{connectionId}", methods=["PATCH"], auth_level=OPEN)
@endpoint(writer_and_rotator, action="connection.update")
async def update_app_connection(req: func.HttpRequest) -> func.HttpResponse:
    params = req.route_params
    return await _rotating(_service().update(params["app"], params["connectionId"], read_json(req),
                                             if_match=req.headers.get("if-match")))


@bp.function_name("delete_app_connection")
@bp.route(route=BASE + "/{app}/{connectionId}", methods=["DELETE"], auth_level=OPEN)
@endpoint("Writer", action="connection.delete", query=("force",))
async def delete_app_connection(req: func.HttpRequest) -> func.HttpResponse:
    from shared.views import to_response

    deleted = await _service().delete(req.route_params["app"], req.route_params["connectionId"],
                                      force=query_bool(req, "force"), if_match=req.headers.get("if-match"))
    return json_response({"appConnection": to_response(deleted.record), "removedKeyIds": deleted.removed_key_ids,
                          "keyIdsLeftLive": deleted.key_ids_left_live,
                          "applicationsNotRead": deleted.applications_not_read})


@bp.function_name("validate_app_connection")
@bp.route(route=BASE + "/{app}/{connectionId}/validate", methods=["POST"], auth_level=OPEN)
@endpoint("Writer", action="connection.validate")
async def validate_app_connection(req: func.HttpRequest) -> func.HttpResponse:
    return _one(await _service().validate(req.route_params["app"], req.route_params["connectionId"],
                                          if_match=req.headers.get("if-match")))
