"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document, generated from the pydantic models (Reader)."""

from __future__ import annotations

import azure.functions as func

from shared.functions.connections import OPEN
from shared.functions.http import endpoint, json_response

bp = func.Blueprint()


@bp.function_name("get_openapi_document")
@bp.route(route="api/v1/openapi.json", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", any_app=True)
async def get_openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    from shared.openapi import openapi_document

    return json_response(openapi_document())
