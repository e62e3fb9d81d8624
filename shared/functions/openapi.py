"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document (Reader).

The document is generated from the pydantic models ahead of time (``shared/openapi.py``; regenerate with
``.venv/bin/python -m shared.openapi --write``) and checked in as ``shared/openapi.json``, which this route serves
as it is, read once per process: it depends on no setting, so nothing is filled in per request, and a cold process
answers without importing pydantic or the models. ``tests/shared/test_openapi.py`` keeps the file in step.
"""

from __future__ import annotations

import functools
import os

import azure.functions as func

from shared.functions.connections import OPEN
from shared.functions.http import endpoint, json_bytes_response

bp = func.Blueprint()

DOCUMENT_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "openapi.json")


@functools.cache
def document_bytes() -> bytes:
    """The checked-in document, as served (read once per process)."""
    with open(DOCUMENT_FILE, "rb") as file:
        return file.read()


@bp.function_name("get_openapi_document")
@bp.route(route="api/v1/openapi.json", methods=["GET"], auth_level=OPEN)
@endpoint("Reader", any_app=True)
async def get_openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    return json_bytes_response(document_bytes())
