"""Translation between HTTP (azure.functions) and the domain: bodies in, JSON and problems out.

Every handler is wrapped by :func:`endpoint`: domain errors become RFC 9457 problems, Azure
failures the domain did not map become a 502, and anything else a generic 500 that says
nothing about the request (the details go to the log, never a secret).

Registering the routes needs only azure.functions and this module: the errors, the domain and ``uuid`` are
imported where they are used, so that indexing the function app stays cheap (cold start).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import azure.functions as func

from shared import telemetry
from shared.functions.invocation import accept_context, host_trace

if TYPE_CHECKING:  # imported where used: registering the routes needs neither (cold start)
    from shared.audit import RequestContext
    from shared.auth import Principal
    from shared.errors import ServiceError
    from shared.records import Actor

log = logging.getLogger(__name__)

# On every API answer (JSON or a problem): never cached, never sniffed as another type, and nothing in it runs or
# is framed should a browser open it (a problem's detail may quote a path or a name the caller chose).
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
# On every answer to a request that came over HTTPS (the front end's scheme, as the request's URL gives it): the
# browser uses HTTPS only for this host from then on, so a first visit typed as http:// cannot be intercepted. Not
# for a loopback host (a developer's other local servers) nor over plain HTTP (RFC 6797 §8.1: ignored there).
HSTS = "max-age=31536000; includeSubDomains"
_LOOPBACK_HOSTS = ("https://localhost", "https://127.", "https://[::1]")
MAX_BODY_BYTES = 64 * 1024
# The patch documents a PATCH takes (its 415 says so in ``Accept-Patch``): a JSON object, merged (RFC 7396).
ACCEPT_PATCH = "application/json, application/merge-patch+json"
NOT_A_BODY = frozenset({"application/json-patch+json"})  # +json, but an array of operations (RFC 6902): refused
MAX_JSON_DEPTH = 32

Handler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    from shared.json_codec import dumps  # orjson: not loaded to index the app

    return json_bytes_response(dumps(data), status, headers)


def json_bytes_response(body: bytes | str, status: int = 200,
                        headers: dict[str, str] | None = None) -> func.HttpResponse:
    """An answer whose JSON body is already serialized (UTF-8)."""
    return func.HttpResponse(
        body,
        status_code=status,
        headers={**API_HEADERS, **(headers or {})},
        mimetype="application/json",
        charset="utf-8",
    )


def problem_response(error: ServiceError, instance: str | None = None) -> func.HttpResponse:
    from shared.errors import PROBLEM_CONTENT_TYPE

    problem = error.to_problem(instance)
    try:
        body = json.dumps(problem, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate quoted from the request: escaped, as JSON may
        body = json.dumps(problem).encode("ascii")
    return func.HttpResponse(
        body,
        status_code=error.status,
        headers={**API_HEADERS, **error.headers},
        mimetype=PROBLEM_CONTENT_TYPE,
        charset="utf-8",
    )


def _not_json(constant: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity``, which Python's parser takes and JSON (RFC 8259) does not have."""
    raise ValueError(f"{constant} is not JSON")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    from shared.errors import FieldError, InvalidRequest

    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest(
                "The JSON body has a key more than once.",
                errors=[FieldError("", f"the key {json.dumps(key[:64])} appears more than once")],
            )
        result[key] = value
    return result


def _depth(value: Any, limit: int) -> int:
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def read_json(req: func.HttpRequest) -> Any:
    """The request's JSON body: within size, UTF-8, well-formed, no duplicate keys, not too deep."""
    from shared.errors import InvalidRequest, PayloadTooLarge, ServiceError, UnsupportedMediaType

    body = req.get_body() or b""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body is larger than {MAX_BODY_BYTES // 1024} KiB.")
    content_type = (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    taken = content_type == "application/json" or content_type.endswith("+json")
    if content_type and (not taken or content_type in NOT_A_BODY):
        # A PATCH's 415 says the patch formats it takes (RFC 5789 2.2): a JSON Patch (an array of operations) is not
        # one of them, though its type ends in +json.
        headers = {"Accept-Patch": ACCEPT_PATCH} if req.method == "PATCH" else None
        raise UnsupportedMediaType(
            "Send the body as application/json or application/merge-patch+json: a JSON object of the fields to "
            "change (a JSON Patch is not taken)." if headers else "Send the body as application/json.",
            headers=headers)
    encoding = (req.headers.get("content-encoding") or "identity").strip().lower()
    if encoding != "identity":  # a gzip body, say: not decoded here, so it is refused for what it is (RFC 7694)
        raise UnsupportedMediaType("Send the body without a Content-Encoding (no gzip or other compression).",
                                   headers={"Accept-Encoding": "identity"})
    if not body.strip():
        raise InvalidRequest("The body is empty; send a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The body is not valid UTF-8.") from None
    # The depth check runs before parsing too: json's recursion must not be the limit.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _bracket_depth(text) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_not_json)
    except ServiceError:
        raise
    except (ValueError, RecursionError):
        raise InvalidRequest("The body is not well-formed JSON.") from None
    # An escaped lone surrogate ("\ud800") is well-formed JSON but not Unicode text: it cannot be stored, logged or
    # sent on (RFC 8259 §8.2), so the body is refused rather than failing wherever the string goes.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("The body holds a lone surrogate (\\uD800 to \\uDFFF without its pair), which is "
                                 "not Unicode text.") from None
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _bracket_depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


_INTEGER = re.compile(r"-?[0-9]+")
_MAX_DIGITS = 20  # past this many digits a number is out of any range a route takes: it is not parsed (nor its cost)
_OUT_OF_RANGE: int = 10**_MAX_DIGITS


def query_int(req: func.HttpRequest, name: str) -> int | None:
    from shared.errors import FieldError, InvalidRequest

    raw = req.params.get(name)
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw):  # int() would also take " 5", "+5", "1_000" and non-ASCII digits
        raise InvalidRequest(
            f"The query parameter {name} must be an integer.", errors=[FieldError(f"/{name}", "must be an integer")]
        )
    digits = raw.lstrip("-").lstrip("0")
    if len(digits) > _MAX_DIGITS:  # as large as it is out of range: the route's range check says so
        return -_OUT_OF_RANGE if raw.startswith("-") else _OUT_OF_RANGE
    value = int(digits or "0")  # the digits alone: int() of thousands of leading zeros would refuse them (a 500)
    return -value if raw.startswith("-") else value


def query_bool(req: func.HttpRequest, name: str) -> bool:
    from shared.errors import FieldError, InvalidRequest

    raw = (req.params.get(name) or "").lower()
    if raw in ("", "false"):
        return False
    if raw == "true":
        return True
    raise InvalidRequest(f"The query parameter {name} must be true or false.",
                         errors=[FieldError(f"/{name}", "must be true or false")])


RoleRule = Callable[[func.HttpRequest], tuple[str, ...]]


def endpoint(role: str | RoleRule, *, action: str | None = None, app: str | None = None,
             any_app: bool = False, query: Collection[str] | None = ()) -> Callable[[Handler], Handler]:
    """Wrap a handler: the caller's access token is validated and must carry ``role`` (or every role a rule reads
    from the request), for the route's app or ``app`` for a route whose path names none (``any_app``: a role
    limited to any one app is enough, or for the app its ``app`` query parameter names, when it names one; the
    handler reads which with :func:`granted_apps`); the request runs as that caller; a route with an audit ``action`` is
    recorded before it runs (fail closed) and its outcome after; every failure is answered with a problem.
    ``query``: the query parameters the route reads; any other is a 400 (None: the handler checks its query)."""

    allowed = None if query is None else frozenset(query)

    def decorate(handler: Handler) -> Handler:
        async def guarded(req: func.HttpRequest) -> func.HttpResponse:
            return await _guarded(req, _path(req.url))

        async def _guarded(req: func.HttpRequest, instance: str) -> func.HttpResponse:
            from shared.audit import acting
            from shared.auth import Principal, authorize
            from shared.errors import Forbidden, ServiceError
            from shared.records import Actor

            params = req.route_params or {}
            route_app = app or params.get("app") or ((req.params or {}).get("app") if any_app else None)
            principal = None
            try:
                principal = await caller(req, changes=action is not None)
                claims = []
                for needed in (role,) if isinstance(role, str) else role(req):
                    if any_app and not route_app and principal.apps_granted(needed) != set():
                        claims.append(principal.grant(needed, None) or f"AppConnections.{needed}.*")
                    else:
                        claims.append(authorize(principal, needed, route_app))
                used = ",".join(dict.fromkeys(claims))
            except ServiceError as error:
                if isinstance(error, Forbidden):
                    refused = principal or error.principal  # refused once identified (a forged change, a scope)
                    if isinstance(refused, Principal):
                        await audit_refusal(req, instance, refused, route_app, error)
                return problem_response(error, instance)
            except Exception as error:  # the session's Table read failed (a 502), or a defect (a 500)
                return unexpected(error, req, instance, "The caller could not be authenticated.")
            context = request_context(req, Actor(principal.id, principal.name, principal.type, used),
                                      principal.roles)
            with acting(context):
                if action is None:
                    return await answer(handler, req, instance, allowed)
                return await _audited(req, instance, route_app, _named_connection(req))

        async def _audited(req: func.HttpRequest, instance: str, route_app: str | None,
                           connection_id: str | None) -> func.HttpResponse:
            from shared.errors import ServiceError
            from shared.wiring import audit_log

            assert action is not None
            audit = audit_log()
            recorded_app = _recorded_app(route_app)
            asked = f"{req.method} {_escaped(instance, 200)}"
            try:
                await audit.record(action, "started", app=recorded_app, connection_id=connection_id,
                                   detail=" ".join(filter(None, (asked, change_summary(req, action)))))
            except ServiceError as error:
                return problem_response(error, instance)
            response = await answer(handler, req, instance, allowed)
            connection = _connection_of(response)
            await audit.record(action, str(response.status_code), app=recorded_app,
                               connection_id=connection_id or _recorded_connection(connection.get("id")),
                               connection_name=connection.get("name"), detail=asked)
            return response

        wrapper = _traced(handler, guarded)
        wrapper.required_role = role  # type: ignore[attr-defined]  # read by the tests of the access model
        wrapper.audit_action = action  # type: ignore[attr-defined]
        wrapper.query_parameters = allowed  # type: ignore[attr-defined]
        return wrapper

    return decorate


def granted_apps(role: str) -> set[str] | None:
    """The apps the request's caller holds ``role`` for: None when for every app (an ``any_app`` route's
    handler narrows what it answers to these)."""
    from shared.auth import granted_apps as granted  # imported with the request, not with the function app

    return granted(role)


async def audit_refusal(req: func.HttpRequest, instance: str, principal: Principal, app: str | None,
                        error: ServiceError) -> None:
    """An authenticated caller refused (for want of a role, a change forged by a session's cookie, a token without
    the API's scope; the console's sign-out forged too): recorded (``access.refused``), as an audit device records
    denied requests; who probes for what shows in the audit log, not only in telemetry. The refusal's message is
    the service's own, and quotes what the caller chose escaped (:func:`shared.auth.authorize`)."""
    from shared.audit import acting
    from shared.records import Actor
    from shared.wiring import audit_log

    with acting(request_context(req, Actor(principal.id, principal.name, principal.type), principal.roles)):
        await audit_log().record("access.refused", "403", app=_recorded_app(app),
                                 connection_id=_named_connection(req),
                                 detail=f"{req.method} {_escaped(instance, 200)}: {error.detail}")


def _escaped(value: str, limit: int) -> str:
    """A value the caller chose, for an audit record (:func:`shared.errors.escaped`: the one escaping a refusal's
    message uses for the app it quotes)."""
    from shared.errors import escaped

    return escaped(value, limit)


def _recorded_app(app: str | None) -> str | None:
    """The app for an audit record: a known app's id, else (a route's segment or query value anyone signed in may
    send, of any length) ``unknown:`` and that value escaped and cut short."""
    from shared.apps import find_app

    if app is None or find_app(app) is not None:
        return app
    return "unknown:" + _escaped(app, 32)


def _recorded_connection(value: object) -> str | None:
    """A connection id for an audit record: a GUID as connection ids are written (lower-case, hyphenated: another
    spelling, ``{...}`` or ``urn:uuid:``, finds no connection and names none), else the value escaped and cut short
    (a route segment is URL-decoded: it may hold a newline or an escape sequence)."""
    if not isinstance(value, str) or not value:
        return None
    return value.lower() if _is_guid(value) else _escaped(value, 40)


def _is_guid(value: str) -> bool:
    from shared.fields import GUID_RE

    return GUID_RE.fullmatch(value) is not None


def _named_connection(req: func.HttpRequest) -> str | None:
    """The connection a request names: its route's, or (the OAuth authorize route, which re-authorizes one) its
    ``connectionId`` query parameter when that is an id at all; for the audit record."""
    routed = (req.route_params or {}).get("connectionId")
    if routed:
        return _recorded_connection(routed)
    asked = (req.params or {}).get("connectionId")
    if not asked:
        return None
    import uuid

    try:
        return str(uuid.UUID(asked))
    except ValueError:
        return None


_CHANGES = ("name", "description", "method", "credentials", "isAutoRotationEnabled", "rotation")
SUMMARIZED = frozenset({"connection.create", "connection.update", "connection.delete"})


def change_summary(req: func.HttpRequest, action: str | None = None) -> str:
    """What an audited change asks for, for its ``started`` record, never a secret: a create's name and method, the
    fields a PATCH changes; the tenant and client ID, the client secret's Key ID and rotation on or off when given
    (GUIDs only; any other value is named as not one); ``force=true`` on a DELETE that forces. Only for a create, a
    PATCH and a DELETE (``action``): any other change's handler reads no body, and the caller is not to write it into
    the record. The body is read again, as the handler reads it (bounded), and one that cannot be read is summarized
    as nothing: the handler answers it."""
    parts: list[str] = []
    if action not in SUMMARIZED:
        return ""
    if req.method == "DELETE" and (req.params or {}).get("force", "").lower() == "true":
        parts.append("force=true")
    if req.method not in ("POST", "PATCH"):
        return " ".join(parts)
    try:
        body = read_json(req)
    except Exception:  # the handler answers it (a 400, 413 or 415)
        body = None
    if not isinstance(body, dict):
        return " ".join(parts)
    if req.method == "POST":  # a name or method only as the create takes it (a secret pasted there is not one)
        from shared.apps import Method
        from shared.fields import NAME_RE

        name, method = body.get("name"), body.get("method")
        if isinstance(name, str):
            parts.append(f"name='{name}'" if NAME_RE.fullmatch(name) else "name=(not a name)")
        if isinstance(method, str):
            parts.append(f"method='{method}'" if method in set(Method) else "method=(not a method)")
    else:
        fields = [field for field in _CHANGES if field in body]
        others = len(body) - len(fields)
        parts.append("changes=" + (",".join(fields) or "-") + (f" (+{others} unknown)" if others else ""))
    credentials = body.get("credentials")
    if isinstance(credentials, dict):
        for field in ("tenantId", "clientId", "clientSecretKeyId"):
            if field in credentials:
                parts.append(f"{field}={_guid_or_not(credentials[field])}")
    rotation = body.get("isAutoRotationEnabled")
    if isinstance(rotation, bool):
        parts.append(f"rotation={'on' if rotation else 'off'}")
    return " ".join(parts)


def _guid_or_not(value: object) -> str:
    return value.lower() if isinstance(value, str) and _is_guid(value) else "(not a GUID)"


def traced(handler: Handler) -> Handler:
    """Wrap a handler that answers every request itself (no access token) in the invocation's server span."""
    return _traced(handler, handler)


def _traced(handler: Handler, run: Handler) -> Handler:
    """``run`` inside the invocation's SERVER span: a child of the host's span (the invocation's
    ``context.trace_context``; the request's ``traceparent`` header when the host gives none), named and
    attributed as OpenTelemetry's HTTP conventions say, with ``http.route`` the function's route template.
    The wrapper takes the ``context`` argument the Functions worker passes to a function that declares it."""

    @functools.wraps(handler)
    async def wrapper(req: func.HttpRequest, context: func.Context | None = None) -> func.HttpResponse:
        route = http_route(wrapper)
        traceparent, tracestate = _incoming_trace(req, context)
        attributes = None
        if not telemetry.quiet():  # a quiet span records nothing: its attributes are not worked out
            params = req.route_params or {}
            attributes = {
                "http.request.method": req.method, "http.route": route, "url.path": _path(req.url),
                "url.scheme": req.url.split("://", 1)[0] if "://" in req.url else None,
                "faas.trigger": "http", "faas.name": handler.__name__,
                "faas.invocation_id": getattr(context, "invocation_id", None),
                "app": params.get("app"), "connection.id": params.get("connectionId"),
            }
        name = f"{req.method} {route}" if route else req.method
        from shared.azure.retry import answering_within  # no retry starts once Azure's front end may give up

        with (telemetry.server_span(name, attributes, traceparent=traceparent, tracestate=tracestate) as span,
              answering_within()):
            try:
                response = await run(req)
            except Exception:  # the worker answers it 500: the request's row says so (review of telemetry, 7)
                span.set_attributes({"http.response.status_code": 500})
                raise
            if req.url.startswith("https://") and not req.url.startswith(_LOOPBACK_HOSTS):
                response.headers["Strict-Transport-Security"] = HSTS
            status = response.status_code
            span.set_attributes({"http.response.status_code": status,
                                 "outcome": "ok" if status < 400 else "client-error" if status < 500 else "error"})
            if status >= 500:
                telemetry.set_error(span, str(status))
            return response

    accept_context(wrapper, handler)
    return wrapper


def http_route(function: Callable[..., Any]) -> str | None:
    """The route template of the HTTP function whose Python function is ``function`` (as declared with
    ``bp.route``; host.json's routePrefix is empty), read once from its module's blueprint."""
    if function in _ROUTES:
        return _ROUTES[function]
    route = None
    module = sys.modules.get(getattr(function, "__module__", ""))
    for blueprint in vars(module).values() if module is not None else ():
        if not isinstance(blueprint, func.Blueprint):
            continue
        for builder in getattr(blueprint, "_function_builders", ()):
            declared = getattr(builder, "_function", None)
            if declared is not None and declared.get_user_function() is function:
                trigger = declared.get_trigger()
                route = getattr(trigger, "route", None) or declared.get_function_name()
    _ROUTES[function] = route
    return route


_ROUTES: dict[Callable[..., Any], str | None] = {}


def _incoming_trace(req: func.HttpRequest, context: func.Context | None) -> tuple[str | None, str | None]:
    """The host's span (``context.trace_context``), else the caller's ``traceparent`` and ``tracestate``."""
    traceparent, tracestate = host_trace(context)
    if traceparent:
        return traceparent, tracestate
    return req.headers.get("traceparent"), req.headers.get("tracestate")


async def caller(req: func.HttpRequest, changes: bool = False) -> Principal:
    """Who calls: the bearer token, else the console's session cookie (``shared.sessions``: a change, which is
    any method but GET and HEAD, and any route that ``changes`` state or is audited, needs the session's CSRF
    token and the service's Origin); the same role checks and audit follow for both."""
    from shared.wiring import sessions, token_validator

    authorization, cookies = req.headers.get("authorization"), req.headers.get("cookie")
    if authorization:  # a bearer token: the sessions' module is not loaded (cold start)
        return await token_validator().validate(authorization)
    from shared.sessions import CSRF_HEADER, SESSION_COOKIE, cookie_value

    if cookie_value(cookies, SESSION_COOKIE) is None:
        return await token_validator().validate(authorization)
    return await sessions().caller(cookies, req.method, req.headers.get("origin"), req.headers.get(CSRF_HEADER),
                                   changes)


def refuse_repeated_query(req: func.HttpRequest) -> None:
    """A query parameter given twice is a 400: which one counts would be the host's choice, not the caller's."""
    query = req.url.partition("?")[2].partition("#")[0]
    if "&" not in query:
        return
    from urllib.parse import parse_qsl

    from shared.errors import FieldError, InvalidRequest
    from shared.fields import pointer_part

    seen: set[str] = set()
    repeated: list[str] = []
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    if repeated:
        raise InvalidRequest("A query parameter is given more than once.",
                             errors=[FieldError(f"/{pointer_part(name)}", "is given more than once")
                                     for name in repeated])


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(req: func.HttpRequest) -> str:
    """The caller's ``X-Request-Id`` for the audit record when it is a short plain token (1 to 64 letters, digits
    and ``._:-``), else a new one: it correlates, it must not smuggle text into the record."""
    given = (req.headers.get("x-request-id") or "").strip()
    if _REQUEST_ID.fullmatch(given):
        return given
    import uuid

    return uuid.uuid4().hex


def request_context(req: func.HttpRequest, actor: Actor, roles: frozenset[str] = frozenset()) -> RequestContext:
    """Who acts in a request, for its audit records: ``actor`` (with ``roles``), from the address the front end
    saw, with the caller's user agent and request id, and the trace of the invocation's span (every HTTP function
    runs in one: its ``operation_Id`` in Application Insights)."""
    from shared.audit import RequestContext

    return RequestContext(actor=actor, roles=roles, client_ip=_client_ip(req),
                          user_agent=req.headers.get("user-agent"), request_id=request_id(req),
                          trace_id=telemetry.current_trace_id())


def refuse_unknown_query(req: func.HttpRequest, allowed: frozenset[str]) -> None:
    """A query parameter the route does not read is a 400 (a misspelt ``limt`` would otherwise be ignored). The
    function key (``code``) may always travel in the query."""
    unknown = [name for name in req.params if name not in allowed and name != "code"]
    if unknown:
        from shared.errors import FieldError, InvalidRequest
        from shared.fields import pointer_part

        known = ", ".join(sorted(allowed)) or "none"
        raise InvalidRequest(f"This route reads no such query parameter (it reads: {known}).",
                             errors=[FieldError(f"/{pointer_part(name)}", "is not a known query parameter")
                                     for name in sorted(unknown)])


async def answer(handler: Handler, req: func.HttpRequest, instance: str,
                 query: frozenset[str] | None = None) -> func.HttpResponse:
    """Run ``handler``: a domain error becomes its problem, an unmapped Azure failure a 502, anything else a 500
    that says nothing of the request (the details go to the log, never a secret). ``query``: the query parameters
    the route reads (None: not checked here)."""
    from shared.errors import ServiceError

    try:
        refuse_repeated_query(req)
        if query is not None:
            refuse_unknown_query(req, query)
        return await handler(req)
    except ServiceError as error:
        if error.status >= 500:
            log.warning("%s %s: %s", req.method, instance, error.detail)
        return problem_response(error, instance)
    except Exception as error:
        return unexpected(error, req, instance, "The service failed to handle the request.")


def unexpected(error: Exception, req: func.HttpRequest, instance: str, failed: str) -> func.HttpResponse:
    """An exception no domain error maps: an Azure call that failed, or the network under it (a connection refused
    or reset, a name not resolved, TLS, a timeout), a 502 logged without its trace (a Table read of the caller's
    session as much as a call for a connection); anything else, another ``OSError`` too (a file missing from the
    package), a 500 that says ``failed`` and nothing of the request (its trace goes to the log, never a secret)."""
    import socket
    import ssl

    from azure.core.exceptions import AzureError

    from shared.azure.upstream import upstream_error
    from shared.errors import ServiceError

    if isinstance(error, AzureError | ConnectionError | TimeoutError | socket.gaierror | ssl.SSLError):
        # the service its transport labelled it with, its status and what to do (shared.azure.upstream); a 429 or
        # 503 left by the retries is a 503 whose Retry-After is the service's last wait
        told = upstream_error(error)
        log.warning("%s %s: Azure call failed (%s, status %s): %s", req.method, instance, type(error).__name__,
                    getattr(error, "status_code", None), told.detail)
        return problem_response(told, instance)
    log.exception("%s %s failed", req.method, instance)
    return problem_response(ServiceError(failed), instance)


def _client_ip(req: func.HttpRequest) -> str | None:
    """The caller's address as the platform's front end saw it: the last entry of ``X-Forwarded-For``, the one
    that front end appends (earlier entries are whatever the caller sent), without its port; None when it is not
    an IP address. Behind another proxy (Front Door, API Management) it is that proxy's address. An IPv6 zone
    (``fe80::1%eth0``) is dropped: any text passes as one, and it names nothing outside the host that saw it."""
    import ipaddress

    last = (req.headers.get("x-forwarded-for") or "").rsplit(",", 1)[-1].strip()
    if last.startswith("["):  # [IPv6]:port
        last = last[1:].split("]", 1)[0]
    elif last.count(":") == 1:  # IPv4:port
        last = last.split(":", 1)[0]
    last = last.split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None


def _connection_of(response: func.HttpResponse) -> dict[str, Any]:
    """The connection an answer carries (its id and name, for the audit record)."""
    if response.mimetype != "application/json" or response.status_code >= 300:
        return {}
    try:
        body = json.loads(response.get_body() or b"{}")
    except ValueError:
        return {}
    connection = body.get("appConnection") if isinstance(body, dict) else None
    return connection if isinstance(connection, dict) else {}


def _path(url: str) -> str:
    without_scheme = url.split("://", 1)[-1]
    path = "/" + without_scheme.split("/", 1)[1] if "/" in without_scheme else "/"
    return path.split("?", 1)[0]
