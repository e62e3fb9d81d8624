"""Fixtures of the reliability campaign. The local environment (Azurite, the stand-in, the local host) is the
end-to-end tests' own, from ``tests/local_environment.py``: one per session, shared."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


@pytest.fixture(scope="session")
def openapi_document(api: httpx.Client) -> dict[str, Any]:
    """The document as the service serves it (``GET /api/v1/openapi.json``)."""
    response = api.get("/api/v1/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    assert isinstance(document, dict)
    return document


class Conformance:
    """Checks an answer against the OpenAPI document: documented status, content type, headers and body schema."""

    def __init__(self, document: dict[str, Any]) -> None:
        import schemathesis

        self.document = document
        self.schema = schemathesis.openapi.from_dict(document)
        self.seen: list[str] = []

    def check(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        """``path`` is the documented template, e.g. ``/api/v1/app-connections/{app}``."""
        operation = self.document["paths"][path][method.lower()]
        documented = operation["responses"]
        status = str(response.status_code)
        assert status in documented, f"{method} {path}: {status} is not documented ({sorted(documented)})"
        content = documented[status].get("content")
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        if content:
            assert content_type in content, f"{method} {path} {status}: {content_type} not in {sorted(content)}"
        for name, header in (documented[status].get("headers") or {}).items():
            assert not header.get("required") or name.lower() in response.headers, f"{method} {path}: no {name}"
        if content_type.endswith("json"):
            self.schema[path][method.upper()].validate_response(response)
        self.seen.append(f"{method.upper()} {path} {status}")
        return response


@pytest.fixture(scope="session")
def conformance(openapi_document: dict[str, Any]) -> Conformance:
    return Conformance(openapi_document)
