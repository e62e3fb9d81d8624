"""The OpenAPI 3.1 document of the service, generated from the pydantic models that validate requests
(``CreateConnectionIn``, ``UpdateConnectionIn``, ``AuthorizeIn``) and shape responses (``ConnectionOut``,
``Problem``, ...): the document cannot drift from the code that enforces it.

It names no secret and depends on no setting (the server is ``/``, the token's audience is named, not given), so
it is generated ahead of time and checked in as ``shared/openapi.json``, which ``GET /api/v1/openapi.json``
serves as it is: a cold process answers it without importing pydantic or the models.
``tests/shared/test_openapi.py`` fails when the file differs from what this module generates. Regenerate with::

    .venv/bin/python -m shared.openapi --write
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.apps import APPS
from shared.errors import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, ServiceError
from shared.fields import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from shared.models import (
    AuditLogOut,
    AuthorizationUrlOut,
    CertificateCredentialsIn,
    ClientSecretCredentialsIn,
    ClientSecretKeyIdIn,
    ClientsOut,
    ConnectionEnvelope,
    ConnectionList,
    CreateConnectionIn,
    DeletedOut,
    FederatedCredentialsIn,
    HealthSummaryOut,
    MigrateToFederatedIn,
    OptionsOut,
    Problem,
    RotationContinuesOut,
    RotationHistoryOut,
    RotationIn,
    UpdateConnectionIn,
)
from shared.oauth import CALLBACK_PARAMS, AuthorizeIn

DOCUMENT_FILE = Path(__file__).with_name("openapi.json")  # what the route serves (shared.functions.openapi)
REGENERATE = ".venv/bin/python -m shared.openapi --write"

BASE = "/api/v1/app-connections"
OPENAPI_PATH = "/api/v1/openapi.json"
AUDIT_PATH = "/api/v1/audit-logs"
CALLBACK_PATH = "/organization/app-connections/azure/oauth/callback"

_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    CreateConnectionIn, UpdateConnectionIn, ClientSecretCredentialsIn, CertificateCredentialsIn, FederatedCredentialsIn,
    ClientSecretKeyIdIn, RotationIn, AuthorizeIn, MigrateToFederatedIn,
)
_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ConnectionEnvelope, ConnectionList, DeletedOut, RotationHistoryOut, OptionsOut, ClientsOut, AuthorizationUrlOut,
    AuditLogOut, HealthSummaryOut, Problem, RotationContinuesOut,
)

_PROBLEM_TEXT = {
    400: "The request is not valid (field errors in `errors`), or Entra ID refused the credentials (`aadstsCode`).",
    401: "No valid Entra ID access token for this API (`Authorization: Bearer`; `WWW-Authenticate` says why).",
    403: "The token lacks the app role the route needs (`requiredRole`).",
    404: "No such app, connection or route.",
    405: "`…/options` and `…/health` answer `GET` only (`Allow`).",
    409: "The name is taken (`name-taken`), another change to the connection won the race (`concurrent-change`; "
         "with `If-Match`, a race it loses is a 412), a rotation of it is in progress (`rotation-in-progress`, with "
         "`rotationId`, `rotationStep` and `retryAfterSeconds`, null when the record has none, and `Retry-After`), "
         "it is being deleted (`connection-being-deleted`: only another `DELETE` ends that), or credentials on the "
         "application could not be removed (`credentials-not-removed`, with `keyIds`, and `Retry-After` when Graph "
         "has not confirmed a removal yet: on `DELETE`, nothing is deleted, the connection stays marked deleting, "
         "and `?force=true` deletes it anyway). The problem types: `x-problem-types` of the Problem schema.",
    412: "`If-Match` names another version of the connection than its current one (`precondition-failed`: "
         "`version`, and its `ETag`), when it was read or when another request's change overtook this one.",
    413: "The body is larger than 64 KiB.",
    415: "The body is not `application/json` (a `PATCH`'s may be `application/merge-patch+json`, never a JSON Patch: "
         "`Accept-Patch` says so), or it has a `Content-Encoding` (`Accept-Encoding: identity`).",
    502: "An Azure service (Entra ID, Graph, Key Vault, Table Storage: the console session's store too) failed or "
         "could not be reached.",
    503: "The service is not configured for this (authentication included), the audit record of the action could "
         "not be written, so the action did not run, or an Azure service was still throttling when the retries ran "
         "out (`upstream-throttled`, with `Retry-After`).",
}


def problem_types() -> dict[str, dict[str, Any]]:
    """Every problem type the service answers (a ``ServiceError`` subclass), by type URI: its status and title. A
    client keys its handling on ``type`` (RFC 9457 3.1.1): here is the set it can meet."""
    import shared.oauth_callback
    import shared.oauth_tokens  # noqa: F401  (they define problem types of their own)

    def below(cls: type[ServiceError]) -> list[type[ServiceError]]:
        return [found for sub in cls.__subclasses__() for found in (sub, *below(sub))]

    found: dict[str, dict[str, Any]] = {}
    classes: list[type[ServiceError]] = [ServiceError, *below(ServiceError)]
    for cls in classes:
        found.setdefault(PROBLEM_TYPE_BASE + cls.slug, {"status": cls.status, "title": cls.title})
    return dict(sorted(found.items()))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _header(description: str, *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


# The headers a problem carries: always (``Allow``, the current ``ETag``), to a token only (``WWW-Authenticate``), or
# on the 409s of a rotation in progress only (``Retry-After``, on the operations that wait for one).
_PROBLEM_HEADERS = {
    401: {"WWW-Authenticate": _header("The Bearer challenge: why the token was refused (RFC 6750); not on the "
                                      "`unauthenticated` of a console session, which gives `loginUrl`.",
                                      required=False)},
    405: {"Allow": _header("The methods the path answers: `GET`.")},
    412: {"ETag": _header("The connection's current version, quoted.")},
    415: {"Accept-Patch": _header("On a `PATCH`: the patch formats it takes (`application/json, "
                                  "application/merge-patch+json`).", required=False),
          "Accept-Encoding": _header("When the body had a `Content-Encoding`: `identity` (none).", required=False)},
    503: {"Retry-After": _header("With `upstream-throttled`: seconds to wait before trying again (the Azure "
                                 "service's own wait, when it said one).", required=False)},
}
RETRY_AFTER = {"Retry-After": _header("With `rotation-in-progress`: seconds to wait before trying again (as its "
                                      "`retryAfterSeconds`); with `credentials-not-removed`: when to ask again.",
                                      required=False)}


def _problems(*statuses: int, retry_after: bool = False) -> dict[str, Any]:
    """The problems an operation answers: its ``statuses``, and those every route may answer (400: a query it does not
    read; 401, 403: the caller; 502: the console session's store could not be read; 503: authentication
    unconfigured). Only an operation that reads a body names 413 and 415."""
    responses: dict[str, Any] = {}
    for status in sorted({400, 401, 403, 502, 503, *statuses}):
        headers = {**_PROBLEM_HEADERS.get(status, {}), **(RETRY_AFTER if status == 409 and retry_after else {})}
        responses[str(status)] = {"description": _PROBLEM_TEXT[status],
                                  "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
                                  **({"headers": headers} if headers else {})}
    return responses


def _path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema when it is given: its ``anyOf`` without the null, without pydantic's title."""
    given = [part for part in schema.get("anyOf", [schema]) if part.get("type") != "null"]
    return {key: value for key, value in given[0].items() if key != "title"}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


APP = _path_param("app", "The app.", enum=sorted(APPS))
CONNECTION_ID = _path_param("connectionId", "The connection's id (a GUID).")
PAGING = [
    _query("limit", f"Page size, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE}).",
           {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}),
    _query("continuationToken", "The `continuationToken` of the previous page of the same list (any other: 400).",
           {"type": "string"}),
]


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _operation(operation_id: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "tags": [more.pop("tag", "app-connections")],
            **more, "responses": responses}


def _paths() -> dict[str, Any]:
    etag = {"ETag": {"description": "The connection's version, quoted: what `If-Match` takes to make a change "
                                    "conditional. It moves with every change a caller makes (PATCH, a new "
                                    "credential), not with what the service records by itself (validations, health "
                                    "checks, rotations).", "required": True, "schema": {"type": "string"}}}
    one = {**_json("ConnectionEnvelope", "The connection."), "headers": etag}
    # A request whose rotation (or move to federated) was still testing its new credential when it had to be answered.
    continues = {**_json("RotationContinuesOut", "The new credential was still being tested when the request had to "
                         "be answered (Azure's front end waits 230 s): nothing failed, nothing was withdrawn, and the "
                         "rotation sweep finishes it. The connection as it is (`rotation.status` `rotating`)."),
                 "headers": {**etag, "Retry-After": _header("Seconds after which to read the connection again.")}}
    item = f"{BASE}/{{app}}/{{connectionId}}"
    created = {**_json("ConnectionEnvelope", "Validated and created (with rotation on, its first rotation may still be "
                       "testing its new credential when the request has to be answered: `rotation.status` "
                       "`rotating`, and the rotation sweep finishes it)."),
               "headers": {"Location": {"description": "The new connection's path.", "required": True,
                                        "schema": {"type": "string"}}, **etag}}
    if_match = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "Only if the connection is still at this version (its `ETag`; `*`: any), else 412 "
                "(evaluated on the read the operation starts from, before it changes anything)."}
    authorize_query = [
        _query(name, f"See `AuthorizeIn.{name}`.", _present(schema))
        for name, schema in AuthorizeIn.model_json_schema()["properties"].items()
    ]
    return {
        f"{BASE}/options": {"get": _operation(
            "list_app_connection_options",
            "The apps, their methods (and those unavailable here, with why), permissions, the OAuth redirect URI, "
            "and the federated identity credential the federated method needs.",
            {"200": _json("OptionsOut", "The options."), **_problems()})},
        f"{BASE}/{{app}}": {
            "parameters": [APP],
            "post": _operation(
                "create_app_connection", "Create a connection (validated first).",
                {"201": created, **_problems(400, 404, 405, 409, 413, 415, 502, 503)},
                requestBody=_body("CreateConnectionIn")),
            "get": _operation(
                "list_app_connections", "List the app's connections, paged.",
                {"200": _json("ConnectionList", "A page of connections."), **_problems(400, 404, 502)},
                parameters=PAGING),
        },
        f"{BASE}/{{app}}/connection-name/{{connectionName}}": {
            "parameters": [APP, _path_param("connectionName", "The connection's name (case-insensitive).")],
            "get": _operation("get_app_connection_by_name", "One connection, by name.",
                              {"200": one, **_problems(400, 404, 502)}),
        },
        item: {
            "parameters": [APP, CONNECTION_ID],
            "get": _operation("get_app_connection", "One connection.", {"200": one, **_problems(400, 404, 502)}),
            "patch": _operation(
                "update_app_connection", "Change name, description, credentials (re-validated) or rotation.",
                {"200": one, "202": continues,
                 **_problems(400, 404, 409, 412, 413, 415, 502, 503, retry_after=True)},
                requestBody=_body("UpdateConnectionIn"),
                parameters=[if_match]),
            "delete": _operation(
                "delete_app_connection",
                "Delete the connection, the client secrets the service created on its application, and its Key "
                "Vault secret.",
                {"200": _json("DeletedOut", "The connection as it was, and the client secrets removed or left live."),
                 **_problems(400, 404, 409, 412, 502, retry_after=True)},
                parameters=[if_match, _query(
                    "force", "`true`: delete even when Graph refuses to remove the client secrets the service "
                    "created (they are listed in `keyIdsLeftLive`).", {"type": "string", "enum": ["true", "false"]})]),
        },
        f"{item}/validate": {
            "parameters": [APP, CONNECTION_ID],
            "post": _operation("validate_app_connection", "Acquire a token now; records status and lastValidatedAt.",
                               {"200": one, **_problems(400, 404, 409, 412, 502, 503)}, parameters=[if_match]),
        },
        f"{item}/health": {
            "parameters": [APP, CONNECTION_ID],
            "post": _operation("check_app_connection_health",
                               "Check the connection's credential now (AppConnections.Writer): its health and expiry.",
                               {"200": one, **_problems(400, 404, 409, 412, 502)}, parameters=[if_match],
                               tag="health"),
        },
        f"{BASE}/health": {"get": _operation(
            "get_app_connections_health",
            "Counts of connections by health and app, and those that need attention (the caller's apps).",
            {"200": _json("HealthSummaryOut", "The summary."), **_problems(502)}, tag="health")},
        f"{item}/rotate": {
            "parameters": [APP, CONNECTION_ID],
            "post": _operation(
                "rotate_app_connection", "Rotate the client secret or certificate now (or finish a half-done one).",
                {"200": {**one, "description": "The rotation completed."}, "202": continues,
                 **_problems(400, 404, 409, 412, 502, 503, retry_after=True)}, parameters=[if_match],
                tag="rotation"),
        },
        f"{item}/migrate-to-federated": {
            "parameters": [APP, CONNECTION_ID],
            "post": _operation(
                "migrate_app_connection_to_federated",
                "Go secretless: add the federated identity credential to the application (with the connection's own "
                "credential), check a federated sign-in, switch the connection to the federated method, then remove "
                "the credentials the service created (and the one given, with `revokeOriginal`) and the Key Vault "
                "secret. Journaled: the same request finishes one that stopped half way (AppConnections.Rotator).",
                {"200": one, "202": continues,
                 **_problems(400, 404, 409, 412, 413, 415, 502, 503, retry_after=True)},
                requestBody={"required": False,
                             "content": {"application/json": {"schema": _ref("MigrateToFederatedIn")}}},
                parameters=[if_match], tag="rotation"),
        },
        f"{item}/rotations": {
            "parameters": [APP, CONNECTION_ID],
            "get": _operation("list_app_connection_rotations", "Rotation history, newest first.",
                              {"200": _json("RotationHistoryOut", "A page of rotations."),
                               **_problems(400, 404, 502)}, parameters=PAGING, tag="rotation"),
        },
        f"{BASE}/azure-client-secrets/{{connectionId}}/clients": {
            "parameters": [CONNECTION_ID],
            "get": _operation("list_azure_client_secrets_clients",
                              "App registrations the connection can see in Microsoft Graph, paged.",
                              {"200": _json("ClientsOut", "A page of app registrations."),
                               **_problems(400, 404, 409, 502, 503)}, parameters=PAGING, tag="rotation"),
        },
        f"{BASE}/{{app}}/oauth/authorize": {
            "parameters": [APP],
            "get": _operation(
                "authorize_app_connection_oauth", "Start an OAuth sign-in.",
                {"200": _json("AuthorizationUrlOut", "With `Accept: application/json`: where to send the browser."),
                 "302": {"description": "Otherwise: a redirect to Entra ID.",
                         "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                 **_problems(400, 404, 409, 502, 503)},
                parameters=authorize_query, tag="oauth"),
        },
        CALLBACK_PATH: {"get": _operation(
            "app_connection_oauth_callback",
            "Finish an OAuth sign-in (anonymous: Entra ID redirects the browser here). Any query parameter but "
            "these (and Entra's `session_state`, `iss`, `error_uri`, which are ignored) is refused.",
            {**{str(status): {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}
                for status, text in ((200, "The connection was created or authorized again."),
                                     (400, "The sign-in failed; the page says why."),
                                     (500, "The service failed; the page says nothing more (the log does)."),
                                     (502, "An Azure service failed."),
                                     (503, "The service is not configured for it; the page says what is missing."))},
             "303": {"description": "A browser signed in to the console: back to the connection's page there.",
                     "headers": {"Location": {"required": True, "schema": {"type": "string"}}}}},
            parameters=[_query(name, f"At most {limit} characters.", {"type": "string", "maxLength": limit})
                        for name, limit in CALLBACK_PARAMS.items()],
            security=[], tag="oauth")},
        AUDIT_PATH: {"get": _operation(
            "list_audit_logs", "The audit log, newest first (AppConnections.Auditor: every record; a role limited "
            "to one app: that app's records).",
            {"200": _json("AuditLogOut", "A page of audit records."), **_problems(400, 502)},
            parameters=[
                _query("from", "ISO 8601 start, from 1970 (default: 30 days before `to`; no earlier than the "
                               "retention).", {"type": "string", "format": "date-time"}),
                _query("to", "ISO 8601 end, before 9000 (default: now).", {"type": "string", "format": "date-time"}),
                _query("app", "Only this app's records (the caller's role must be for it).",
                       {"type": "string", "enum": sorted(APPS)}),
                _query("connectionId", "Only this connection's records (a GUID in any case; another value as a "
                       "refused request's record names it).",
                       {"type": "string", "maxLength": 128}),
                _query("actor", "Only this actor's records (its object id).", {"type": "string", "maxLength": 256}),
                _query("action", "Only this action, e.g. `connection.delete` or `credential.remove`.",
                       {"type": "string", "pattern": "^[a-z][a-z0-9.-]{0,63}$"}),
                *PAGING],
            tag="audit")},
        OPENAPI_PATH: {"get": _operation(
            "get_openapi_document", "This document.",
            {"200": {"description": "The OpenAPI 3.1 document.",
                     "content": {"application/json": {"schema": {"type": "object"}}}}, **_problems()},
            tag="meta")},
    }


def _schemas() -> dict[str, Any]:
    template = "#/components/schemas/{model}"
    _, requests = models_json_schema([(m, "validation") for m in _REQUEST_MODELS], ref_template=template)
    _, responses = models_json_schema([(m, "serialization") for m in _RESPONSE_MODELS], ref_template=template)
    schemas: dict[str, Any] = {**requests.get("$defs", {}), **responses.get("$defs", {})}
    # ``credentials`` is checked against the method's model once ``method`` is known; say which ones.
    for name in ("CreateConnectionIn", "UpdateConnectionIn"):
        credentials = schemas[name]["properties"]["credentials"]
        credentials["description"] = ("ClientSecretCredentialsIn, CertificateCredentialsIn or "
                                     "FederatedCredentialsIn, by method.")
    schemas["Problem"]["x-problem-types"] = problem_types()
    schemas["UpdateConnectionIn"]["properties"]["credentials"]["description"] += (
        " On a client-secret connection, ClientSecretKeyIdIn alone instead: the Key ID of the secret stored, which "
        "a rotation revokes (nothing secret is sent again; needs Writer, as any change of credentials).")
    return schemas


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Azure App Connections",
            "version": "1",
            "description": "Stores, validates and rotates the credentials Entra ID applications use to reach "
            "Azure Key Vault, Azure App Configuration and Microsoft Graph. Errors are RFC 9457 problem details.",
        },
        "servers": [{"url": "/"}],
        "security": [{"entraId": []}],
        "tags": [{"name": name} for name in ("app-connections", "rotation", "health", "oauth", "audit", "meta")],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "entraId": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                            "description": "An Entra ID access token for the service's API registration (audience "
                            "AUTH_AUDIENCE), whose `roles` claim carries the route's app role: "
                            "AppConnections.Reader, .Writer, .Rotator, .Auditor or .Admin, optionally limited to "
                            "one app with a suffix (`AppConnections.Writer.azure-key-vault`)."},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())


def rendered() -> str:
    """The document as checked in: indented (reviewable diffs), in the generator's order, UTF-8, one final newline."""
    return json.dumps(_document(), ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.openapi", description=(
        f"Generate the OpenAPI document that GET /api/v1/openapi.json serves ({DOCUMENT_FILE.name})."))
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"write it to shared/{DOCUMENT_FILE.name}")
    action.add_argument("--check", action="store_true", help="exit 1 when the checked-in file is out of date")
    args = parser.parse_args(argv)
    text = rendered()
    if args.write:
        DOCUMENT_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {DOCUMENT_FILE}")
    elif args.check:
        current = DOCUMENT_FILE.read_text(encoding="utf-8") if DOCUMENT_FILE.is_file() else None
        if current != text:
            print(f"{DOCUMENT_FILE} is out of date; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
