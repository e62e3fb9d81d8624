"""Microsoft Graph: an app registration's password and key credentials and the app-management policies that bound
them, and the app list: plain JSON requests over msgraph-core's HTTP client (msgraph-sdk is not used).

msgraph-core's own retry handler is switched off: Graph calls go through ``with_retries`` with the service's one
policy (Retry-After honoured, jittered back-off), and Graph's "concurrent requests" 400 is retried too.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import httpx

from shared import telemetry
from shared.azure.retry import RetryableError, retry_after_of, with_retries
from shared.credentials import token_of
from shared.errors import (
    CredentialLifetimeRefused,
    CredentialLimitReached,
    FieldError,
    InvalidRequest,
    NotFound,
    ServiceError,
    UpstreamError,
    UpstreamForbidden,
    UpstreamThrottled,
)
from shared.ports import (
    AppRegistration,
    FederatedCredential,
    KeyCredential,
    LifetimePolicy,
    Lost,
    NewPassword,
    PasswordCredential,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import aiohttp
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.azure.clients import AzureClients

PERMISSION_HINT = (
    "Grant the application the Microsoft Graph application permission Application.ReadWrite.OwnedBy "
    "(with admin consent), and make its service principal an owner of its own app registration "
    "(az ad app owner add --id <appId> --owner-object-id <service principal object id>)."
)
_CONCURRENT = re.compile(r"concurren", re.IGNORECASE)  # "concurrent requests", "ConcurrencyViolation"
# Graph's failures that may come after it applied the request (a backend's or a gateway's), retried for every method
# but 502, which azure-core (and so the one policy) retries only where the method may be sent again.
MAY_BE_APPLIED = frozenset({500, 502, 504})
_SENT_ONCE = frozenset({"POST", "PATCH"})  # not sent again after a 502 (azure-core's rule: 500, 503, 504 only)


def graph_http_client(clients: AzureClients) -> httpx.AsyncClient:
    """One httpx client per event loop for every Graph call, made by msgraph-core's factory (retries off), whose
    requests go out over the service's one aiohttp session (:class:`SessionTransport`). Its middleware pipeline runs
    only for a request that carries kiota's options, which the service's plain requests never do: none of its
    retries, redirects or spans happen (the client spans are :class:`SessionTransport`'s)."""
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph_core import GraphClientFactory

    client = httpx.AsyncClient(
        base_url=f"{clients.settings.graph_endpoint}/v1.0", timeout=httpx.Timeout(30.0),
        transport=SessionTransport(clients.session),
    )
    no_retry = RetryHandlerOption(max_retries=0, should_retry=False)
    options = {no_retry.get_key(): no_retry}
    wrapped: httpx.AsyncClient = GraphClientFactory.create_with_default_middleware(client=client, options=options)
    return wrapped


class SessionTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request over the service's one aiohttp session, as every Azure SDK
    client does: one pool of keep-alive connections for all of them.

    httpx's own pool (httpcore) costs about 4 ms of CPU per Graph call with 32 calls in flight, against about
    1.4 ms this way: on every request and every answer it checks each pooled connection (a socket poll through
    anyio's attribute lookups), counts the whole pool once per connection, and looks for sniffio, which is not
    installed, through every ``sys.path`` entry. Bodies are passed through as they come (aiohttp does not
    decompress them; httpx does, as it asked for the encodings), a redirect is not followed (the caller takes it
    for a failure), and
    aiohttp's failures become httpx's transport errors, which :func:`classify` retries.

    Each request is a client span of ``shared.telemetry`` (``upstream=graph``): OpenTelemetry's httpx
    instrumentation wraps httpx's own transports only, so it never sees these.
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        self._session = session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        with telemetry.client_span(request.method, url, request.headers,
                                   {"upstream": "graph", **telemetry.resent(_RESENDS.get())}) as span:
            response = await self._send(request, url)
            telemetry.set_response(span, response.status_code)
            return response

    async def _send(self, request: httpx.Request, url: str) -> httpx.Response:
        import aiohttp

        timeouts = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
        )
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _HOP_HEADERS]
        body = await request.aread()
        try:
            async with self._session().request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False,
                auto_decompress=False, timeout=timeout,
            ) as answer:
                content = await answer.read()
                return httpx.Response(answer.status, headers=list(answer.raw_headers), content=content,
                                      request=request)
        except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError) as error:
            raise httpx.ConnectError(str(error), request=request) from error
        except (TimeoutError, aiohttp.ServerTimeoutError) as error:
            raise httpx.ReadTimeout(str(error) or "timed out", request=request) from error
        except aiohttp.ClientResponseError as error:  # the answer could not be parsed
            raise httpx.RemoteProtocolError(str(error), request=request) from error
        except (aiohttp.ClientError, OSError) as error:  # a dropped connection, a broken payload
            raise httpx.ReadError(str(error) or type(error).__name__, request=request) from error

    async def aclose(self) -> None:
        return None  # the session belongs to AzureClients, which closes it


_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# How many times the Graph call under way was sent before (its retries): each send is a client span of its own.
_RESENDS: contextvars.ContextVar[int] = contextvars.ContextVar("graph_resends", default=0)


def _status(error: Exception) -> int | None:
    status = getattr(error, "response_status_code", None)
    return int(status) if isinstance(status, int) else None


def _code(error: Exception) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "code", "") or "")


def _message(error: Exception) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "message", "") or "")


def _page_token(skip_token: str, listing: str) -> str:
    """The continuation token of a page of the app list: Graph's skiptoken and the list it is of (``listing``, the
    key :meth:`GraphApps.list_applications` was given: its connection), base64url over JSON."""
    return base64.urlsafe_b64encode(json.dumps([skip_token, listing]).encode()).decode().rstrip("=")


def _skip_token_of(continuation: str, listing: str) -> str:
    """The skiptoken a continuation token of the app list wraps, or a 400 for one the service did not hand out, or
    handed out for another list (another connection's: a cursor into a list it is not of). A token of the shape
    versions before handed out (the skiptoken alone, naming no list) reads on, as an audit token of two parts does:
    a client may hold one across an upgrade."""
    try:
        raw = base64.urlsafe_b64decode(continuation + "=" * (-len(continuation) % 4)).decode("ascii") \
            if len(continuation) <= 4 * (2048 + _LISTING_MAX) // 3 + 3 else ""
    except (ValueError, binascii.Error):
        raw = ""
    if raw.startswith("["):  # this version's shape; a skiptoken of Graph's never starts so (base64 text)
        try:
            parts = json.loads(raw)
        except (ValueError, RecursionError):  # nested past the parser's depth: forged
            parts = None
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts)
                and parts[1] == listing):
            raise _bad_page_token()
        raw = parts[0]
    if not _SKIP_TOKEN.fullmatch(raw):
        raise _bad_page_token()
    return raw


def _bad_page_token() -> InvalidRequest:
    return InvalidRequest("The continuation token is not valid; start again without it.",
                          errors=[FieldError("/continuationToken", "not a token this list handed out, or expired")])


def classify(error: Exception) -> RetryableError | None:
    """Graph failures worth another try: throttling, unavailability, concurrency conflicts, network; a 500 or 504
    for every method, a 502 but for a POST or PATCH (:class:`GraphCallError` names its method), as the one policy
    retries them. An addition's caller runs its clean-up before a retry of what may have been applied
    (``GraphApps._add_once``)."""
    if isinstance(error, httpx.TransportError):
        return RetryableError("Microsoft Graph could not be reached")
    status = _status(error)
    if status is None:
        return None
    headers = getattr(error, "response_headers", None) or {}
    lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    retry_after = retry_after_of(lowered)  # Retry-After, else retry-after-ms / x-ms-retry-after-ms
    if status == 502 and getattr(error, "method", None) in _SENT_ONCE:
        return None
    if status in (429, 503) or status in MAY_BE_APPLIED:
        return RetryableError(f"Microsoft Graph answered {status}", retry_after)
    if status in (400, 409) and (_CONCURRENT.search(_message(error)) or _CONCURRENT.search(_code(error))):
        return RetryableError("Microsoft Graph refused concurrent changes", retry_after)
    return None


# Graph's refusals of a new credential because the application holds as many of its kind as Entra ID allows
# (addPassword's ``TooManyAppPasswords``; an application a personal Microsoft account may sign in to has a limit of 2),
# and the credentials to remove. Graph documents no such code for addKey: its limit is the size of the
# application's keyCredentials, refused as any other 400.
LIMIT_CODES = {"TooManyAppPasswords": "client secrets"}


def _app_gone(app_id: str, code: object) -> str:
    """What a rotation says when Graph has no app registration of ``app_id`` (no secret: an id and Graph's code)."""
    said = f" (404 {code})" if isinstance(code, str) and code else ""
    return (f"Microsoft Graph has no app registration with appId {app_id}{said}: it was deleted, or never was in "
            "this tenant. Restore it from Entra ID's deleted applications (App registrations, Deleted applications: "
            "within 30 days of its deletion), or turn this connection's rotation off or delete the connection.")


# Graph's refusals of a new credential under an app-management policy: a lifetime over the policy's maxLifetime,
# or a kind of credential the policy does not allow to be added.
POLICY_CODES = frozenset({"CredentialInvalidLifetimeAsPerAppPolicy", "CredentialTypeNotAllowedAsPerAppPolicy"})


def translate(error: Exception, action: str) -> Exception:
    """A Graph failure that retries did not fix, as a domain error with a useful message."""
    status = _status(error)
    code = _code(error)
    if code in POLICY_CODES:
        return CredentialLifetimeRefused(
            f"Microsoft Graph refused to {action}: the tenant's app-management policy does not allow it ({code}).",
            extensions={"graphCode": code},
        )
    if status == 403:
        return UpstreamForbidden(
            f"Microsoft Graph refused to {action} (403 {code or 'Forbidden'}). {PERMISSION_HINT}",
            extensions={"graphCode": code or None, "requiredPermission": "Application.ReadWrite.OwnedBy"},
        )
    if status == 404:
        return NotFound(f"Microsoft Graph found nothing to {action} (404 {code}).",
                        extensions={"graphCode": code} if code else None)
    if status == 400 and code in LIMIT_CODES:
        return CredentialLimitReached(
            f"Microsoft Graph refused to {action}: the application has as many {LIMIT_CODES[code]} as Entra ID allows "
            f"it (400 {code}). Remove the application's unused {LIMIT_CODES[code]} (Entra ID, App registrations, "
            "Certificates & secrets), then rotate again.",
            extensions={"graphCode": code})
    if status in (429, 503):  # still throttling or unavailable when the retries ran out: its wait is the caller's
        retryable = classify(error)
        return UpstreamThrottled(f"Microsoft Graph is throttling or unavailable and did not {action} ({status} "
                                 f"{code}); try again later.", retry_after=retryable.retry_after if retryable else None)
    if status is not None:
        return UpstreamError(f"Microsoft Graph failed to {action} ({status} {code}).")
    return UpstreamError(f"Microsoft Graph could not be reached to {action}.")


class GraphCallError(Exception):
    """A Graph answer that is not a success, with what :func:`classify` and :func:`translate` read: the request's
    method, the status, the response headers and Graph's ``{"error": {"code", "message"}}`` (empty when the body
    is not one)."""

    def __init__(self, status: int, headers: Mapping[str, str], code: str, message: str, method: str = "") -> None:
        super().__init__(f"Microsoft Graph answered {status} {code}".rstrip())
        self.method = method.upper()
        self.response_status_code = status
        self.response_headers = dict(headers)
        self.error = _GraphErrorBody(code, message)


@dataclass(frozen=True)
class _GraphErrorBody:
    code: str
    message: str


# What a rotation reads of an application: ``$select`` keeps the answer small, as the rest is never used. Its key
# credentials only where a certificate is rolled: Graph throttles reads that select ``keyCredentials`` at 150 a
# minute per tenant (and returns each key's public value with them), so a session of any other method leaves
# them out.
APPLICATION_SELECT = "id,appId,displayName,createdDateTime,passwordCredentials"
APPLICATION_SELECT_WITH_KEYS = f"{APPLICATION_SELECT},keyCredentials"
GRAPH_AUDIENCE = "00000002-0000-0000-c000-000000000000"  # the ``aud`` of an addKey / removeKey proof
GRAPH_MAX_TOP = 999  # the largest page of app registrations Graph lists ($top)
# A skiptoken of Graph's, as the continuation token of a page of app registrations hands it back: printable
# ASCII, at most 2 KiB (a longer or other one is not one Graph gave).
_SKIP_TOKEN = re.compile(r"[\x21-\x7e]{1,2048}")
_LISTING_MAX = 64  # characters of a continuation token's JSON beside its skiptoken (its list's key, the syntax)
_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(value: object) -> timedelta | None:
    """An ISO 8601 duration as Graph writes a ``maxLifetime`` (``P90D``, ``P1Y``, ``P4DT12H``); a year counts
    365 days and a month 28 (never longer than the policy means). None when it is not one."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or value == "P" or str(value).endswith("T"):
        return None
    parts = {name: float(number) for name, number in match.groupdict().items() if number}
    try:
        return timedelta(days=365 * parts.get("years", 0) + 28 * parts.get("months", 0) + 7 * parts.get("weeks", 0)
                         + parts.get("days", 0), hours=parts.get("hours", 0), minutes=parts.get("minutes", 0),
                         seconds=parts.get("seconds", 0))
    except OverflowError:  # past what a date can hold: no bound worth the name
        return None


def _thumbprint(value: object) -> str | None:
    """``customKeyIdentifier`` (Edm.Binary: base64 of the SHA-1 thumbprint) as upper-case hex; a 40-digit hex
    text is taken as it is."""
    if not isinstance(value, str) or not value:
        return None
    if re.fullmatch(r"[0-9A-Fa-f]{40}", value):
        return value.upper()
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex().upper() if len(raw) == 20 else None


def _key_credential(k: Mapping[str, Any]) -> KeyCredential:
    return KeyCredential(key_id=str(k["keyId"]).lower(), display_name=k.get("displayName"),
                         thumbprint=_thumbprint(k.get("customKeyIdentifier")),
                         end_date_time=_parse_datetime(k.get("endDateTime")), usage=k.get("usage"))


def _applies(restriction: Mapping[str, Any], created: datetime | None) -> bool:
    """A restriction binds an application unless it is switched off or only binds applications created after a
    date this one is known to predate."""
    if str(restriction.get("state") or "enabled").lower() == "disabled":
        return False
    after = _parse_datetime(restriction.get("restrictForAppsCreatedAfterDateTime"))
    return after is None or created is None or created >= after


def _shaped(value: Any, kind: type, what: str) -> Any:
    """``value`` of a Graph answer when it has the JSON shape expected (None: absent, as empty), or an
    ``UpstreamError``: an answer of another shape is Graph's failure, not the caller's (never a 500)."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise UpstreamError(f"Microsoft Graph answered {what} in an unexpected shape.")
    return value


def _merged(own: Mapping[str, Any], tenant: Mapping[str, Any]) -> dict[str, list[Any]]:
    """An application's restrictions, and the tenant's of every restriction type the application's do not name."""
    merged: dict[str, list[Any]] = {}
    for kind in ("passwordCredentials", "keyCredentials"):
        mine = [r for r in _shaped(own.get(kind), list, "an app-management policy") if isinstance(r, dict)]
        named = {r.get("restrictionType") for r in mine}
        merged[kind] = mine + [r for r in _shaped(tenant.get(kind), list, "the tenant's app-management policy")
                               if isinstance(r, dict) and r.get("restrictionType") not in named]
    return merged


def lifetime_policy_of(restrictions: Mapping[str, Any], source: str, created: datetime | None) -> LifetimePolicy:
    """What ``restrictions`` (an appManagementPolicy's ``restrictions`` or the default policy's
    ``applicationRestrictions``) allow a new credential of an application created at ``created``."""
    def bounds(kind: str, restriction_type: str) -> list[Mapping[str, Any]]:
        items = _shaped(restrictions.get(kind), list, "an app-management policy")
        return [r for r in items if isinstance(r, dict) and r.get("restrictionType") == restriction_type
                and _applies(r, created)]

    def shortest(items: list[Mapping[str, Any]]) -> timedelta | None:
        lifetimes = [d for d in (parse_duration(r.get("maxLifetime")) for r in items) if d is not None]
        return min(lifetimes) if lifetimes else None

    return LifetimePolicy(
        source=source,
        password_max_lifetime=shortest(bounds("passwordCredentials", "passwordLifetime")),
        key_max_lifetime=shortest(bounds("keyCredentials", "asymmetricKeyLifetime")),
        password_addition_restricted=bool(bounds("passwordCredentials", "passwordAddition")),
    )


def _quoted(value: str) -> str:
    """A key segment: an OData string literal's quotes doubled, then percent-encoded."""
    return quote(value.replace("'", "''"), safe="")


def _parse_datetime(value: object) -> datetime | None:
    """A Graph ``DateTimeOffset``, always aware: one without its offset (which Graph does not write) is UTC, as Graph
    keeps them, so it compares with the service's clock."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _error_of(response: httpx.Response, method: str) -> GraphCallError:
    code = message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or "")
        message = str(body["error"].get("message") or "")
    return GraphCallError(response.status_code, response.headers, code, message, method)


class GraphApps:
    """App registrations seen with one connection's credential.

    The three calls of a rotation (read an application, addPassword, removePassword) are plain JSON requests on
    the service's one Graph HTTP client (made by msgraph-core's factory, with the sweep's response hook),
    with a bearer token from the connection's credential, and so is the list of app registrations (page by page):
    msgraph-sdk's ``Application`` model costs about 17 ms of CPU to deserialize (its base class imports a thousand
    model modules on every call), more than the rest of a rotation's Graph work together, and its kiota layer
    makes spans of its own through the global tracer, their ``url.full`` with every query value. The service does
    not depend on msgraph-sdk (392 MB installed); the stand-in's tests use it, to hold the stand-in to it.
    """

    def __init__(self, clients: AzureClients, credential: AsyncTokenCredential, *, read_keys: bool = False) -> None:
        """``read_keys``: :meth:`find` reads the application's key credentials too (a certificate's session)."""
        self._clients = clients
        self._credential = credential
        self._select = APPLICATION_SELECT_WITH_KEYS if read_keys else APPLICATION_SELECT
        self._endpoint = clients.settings.graph_endpoint.rstrip("/")
        self._scope = f"{self._endpoint}/.default"

    async def _call(self, action: str, call: Any) -> Any:
        sends = 0

        async def counted() -> Any:
            nonlocal sends
            token = _RESENDS.set(sends)
            sends += 1
            try:
                return await call()
            finally:
                _RESENDS.reset(token)

        try:
            return await with_retries(counted, classify)
        except Exception as error:
            if _status(error) is None and classify(error) is None:
                raise
            raise translate(error, action) from None

    async def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One Graph request (``path`` under ``/v1.0``): the JSON answer (None for 204), or :class:`GraphCallError`.
        The token is the credential's cached one (azure-identity acquires it once, and again near its expiry)."""
        token = await token_of(self._credential, self._scope)  # Entra's refusal: CredentialRejected, with its code
        headers = {"Authorization": f"Bearer {token.token}", "Accept": "application/json"}
        response = await self._clients.graph_http().request(
            method, f"{self._endpoint}/v1.0{path}", headers=headers, json=body
        )
        if not 200 <= response.status_code < 300:  # a redirect too: never followed, nor taken for a removal done
            raise _error_of(response, method)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UpstreamError("Microsoft Graph answered with a body that is not JSON.") from None

    async def find(self, app_id: str) -> AppRegistration:
        """The app registration of ``app_id``; :class:`NotFound` that says what to do when Graph has none (404: it
        was deleted, or never was in this tenant)."""
        try:
            app = await self._call(
                "read the app registration",
                lambda: self._send("GET", f"/applications(appId='{_quoted(app_id)}')?$select={self._select}"),
            )
        except NotFound as missing:
            raise NotFound(_app_gone(app_id, missing.extensions.get("graphCode")),
                           extensions=missing.extensions) from None
        if not isinstance(app, dict) or not app.get("id"):
            raise NotFound(_app_gone(app_id, None))
        passwords = app.get("passwordCredentials") or []
        keys = app.get("keyCredentials") or []
        return AppRegistration(
            object_id=str(app["id"]),
            app_id=str(app.get("appId") or app_id),
            display_name=app.get("displayName"),
            passwords=tuple(
                PasswordCredential(
                    key_id=str(p["keyId"]).lower(), hint=p.get("hint"), display_name=p.get("displayName"),
                    end_date_time=_parse_datetime(p.get("endDateTime")),
                )
                for p in (passwords if isinstance(passwords, list) else [])
                if isinstance(p, dict) and p.get("keyId")
            ),
            keys=tuple(_key_credential(k) for k in (keys if isinstance(keys, list) else [])
                       if isinstance(k, dict) and k.get("keyId")),
            created_at=_parse_datetime(app.get("createdDateTime")),
        )

    async def add_password(self, object_id: str, display_name: str, end: datetime, lost: Lost) -> NewPassword:
        """addPassword. ``display_name`` must be unique to this call (the rotation's marker): when a request is lost
        after it was sent (the connection dropped, no answer) or answered 500, 502 or 504, Graph may have applied
        it, and its secret is gone, so ``lost`` removes the passwords of that name before it is sent again, or
        before the failure is raised (otherwise one would be left behind, live and unknown). The caller removes
        them, so that the removal is audited and fenced as every other change of a credential is; this adapter
        changes nothing it was not asked to."""
        body = {"passwordCredential": {"displayName": display_name, "endDateTime": end.isoformat()}}
        added = await self._add_once("add a client secret", object_id, "addPassword", body, lost)
        if not isinstance(added, dict) or not added.get("secretText") or not added.get("keyId"):
            raise UpstreamError("Microsoft Graph did not return the new client secret.")
        return NewPassword(
            str(added["keyId"]).lower(), str(added["secretText"]), _parse_datetime(added.get("endDateTime"))
        )

    async def _add_once(self, what: str, object_id: str, action: str, body: Mapping[str, Any],
                        applied: Callable[[], Awaitable[Any]]) -> Any:
        """POST the application's ``action``; when a try is lost after it was sent (the connection dropped, no
        answer) or answered 500, 502 or 504, Graph may have applied it: ``applied`` finds (its answer is the
        result) or undoes it (None) before the next try, or before the failure is raised (a 502, not sent again;
        the last try)."""
        path = f"/applications/{_quoted(object_id)}/{action}"

        async def attempt() -> Any:
            try:
                return await self._send("POST", path, body)
            except (httpx.TransportError, GraphCallError) as error:
                if _may_be_applied(error):
                    found = await applied()
                    if found is not None:
                        return found
                raise

        return await self._call(what, attempt)

    async def _credentials(self, object_id: str, kind: str) -> list[Any]:
        """The application's ``kind`` (``passwordCredentials``, ``keyCredentials``) as Graph lists them."""
        app = await self._call(
            "read the app registration",
            lambda: self._send("GET", f"/applications/{_quoted(object_id)}?$select=id,{kind}"),
        )
        return list(_shaped(_shaped(app, dict, "the app registration").get(kind), list, "the app registration"))

    async def _remove_credential(self, what: str, object_id: str, action: str, body: Mapping[str, Any]) -> None:
        """POST the application's ``action`` (removePassword, removeKey); one already gone is fine (idempotent).

        A POST whose connection dropped, or answered 500 or 504, is sent again (``classify``), and if the first one
        was applied the second is refused (the key is unknown by then); one answered 502 is not sent again, and may
        have been applied too. So a refusal or a failure is checked against the application: when the key is no
        longer among its credentials, the removal is done, whichever attempt did it."""
        kind = "passwordCredentials" if action == "removePassword" else "keyCredentials"
        key_id = str(body["keyId"]).lower()
        try:
            await self._call(what, lambda: self._send("POST", f"/applications/{_quoted(object_id)}/{action}", body))
        except NotFound:
            return
        except ServiceError as refused:
            try:
                present = await self._credentials(object_id, kind)
            except ServiceError:  # an earlier attempt may have done it: a refusal would tell what did not happen.
                # A removal Graph throttled to the end (and its read, often: it throttles per application and
                # tenant) is told as such, with its wait: a throttled revoke is retried later without paging anyone
                # (it was a 502 "outcome not known", a first failure). One that failed otherwise (dropped, a 5xx:
                # it may have been applied) stays unknown.
                if isinstance(refused, UpstreamThrottled):
                    raise refused from None
                raise UpstreamError(f"Microsoft Graph refused to {what} ({refused.detail}), and the application "
                                    "could not be read to tell whether an earlier attempt did it: the outcome is not "
                                    "known.") from None
            if any(isinstance(item, Mapping) and str(item.get("keyId") or "").lower() == key_id for item in present):
                raise
            log.info("Microsoft Graph refused to %s, but it is done (an earlier attempt's answer was lost)", what)

    async def remove_password(self, object_id: str, key_id: str) -> None:
        """Revoke a client secret; one that is already gone is fine (idempotent)."""
        from uuid import UUID

        await self._remove_credential("revoke a client secret", object_id, "removePassword",
                                      {"keyId": str(UUID(key_id))})

    async def add_key(self, object_id: str, display_name: str, certificate_der: bytes, proof: str) -> KeyCredential:
        """addKey of a certificate's public part (``AsymmetricX509Cert``, usage ``Verify``; never a private key),
        ``proof`` signed by a key the application has. A request lost after it was sent may have been applied: the
        application's keys are read and a key of this certificate's thumbprint is the answer (adding it again
        would be refused or would add a duplicate)."""
        import hashlib

        thumbprint = hashlib.sha1(certificate_der, usedforsecurity=False).hexdigest().upper()
        body = {
            "keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify", "displayName": display_name,
                              "key": base64.b64encode(certificate_der).decode("ascii")},
            "passwordCredential": None,
            "proof": proof,
        }
        added = await self._add_once("add a certificate", object_id, "addKey", body,
                                     lambda: self._key_of(object_id, thumbprint))
        if not isinstance(added, dict) or not added.get("keyId"):
            raise UpstreamError("Microsoft Graph did not return the new certificate's key credential.")
        return _key_credential(added)

    async def _key_of(self, object_id: str, thumbprint: str) -> dict[str, Any] | None:
        for key in await self._credentials(object_id, "keyCredentials"):
            if isinstance(key, dict) and key.get("keyId") and _thumbprint(key.get("customKeyIdentifier")) == thumbprint:
                return key
        return None

    async def remove_key(self, object_id: str, key_id: str, proof: str) -> None:
        """removeKey, ``proof`` signed by a key the application keeps; one already gone is fine (idempotent)."""
        from uuid import UUID

        await self._remove_credential("remove a certificate", object_id, "removeKey",
                                      {"keyId": str(UUID(key_id)), "proof": proof})

    async def lifetime_policy(self, object_id: str, created_at: datetime | None = None) -> LifetimePolicy | None:
        """The effective app-management policy: the restrictions of an enabled policy assigned to the application,
        and the tenant's default (when enabled and readable) for the restriction types that one does not name.
        None when the credential may not read the application's policies (403): unknown, no cap."""
        async def read(path: str) -> Any:
            try:
                return await self._call("read the app-management policy", lambda: self._send("GET", path))
            except NotFound:  # a cloud without app-management policies: nothing bounds the credential
                return None

        try:
            assigned = await read(f"/applications/{_quoted(object_id)}/appManagementPolicies")
        except UpstreamForbidden:
            return None
        own: Mapping[str, Any] = {}
        policies = _shaped(_shaped(assigned, dict, "the app-management policies").get("value"), list,
                           "the app-management policies")
        for policy in policies:
            if isinstance(policy, dict) and policy.get("isEnabled", True) is not False:
                own = _shaped(policy.get("restrictions"), dict, "an app-management policy")
                break
        try:
            default = await read("/policies/defaultAppManagementPolicy")
        except UpstreamForbidden:  # commonly: it needs Policy.Read.All, which a connection seldom has
            default = None
        tenant: Mapping[str, Any] = {}
        default_policy = _shaped(default, dict, "the tenant's app-management policy")
        if default_policy.get("isEnabled") is not False:
            tenant = _shaped(default_policy.get("applicationRestrictions"), dict, "the tenant's app-management policy")
        return lifetime_policy_of(_merged(own, tenant), "application" if own else "tenant", created_at)

    async def list_applications(self, page_size: int, continuation: str | None = None, listing: str = "",
                                ) -> tuple[list[dict[str, str]], str | None]:
        """One page of the app registrations the credential can see (at most ``GRAPH_MAX_TOP``, Graph's largest),
        and the token of the next (None: the last).
        The token wraps the ``$skiptoken`` of Graph's ``@odata.nextLink``, which is read only when it names this
        Graph endpoint's app list (the bearer token goes nowhere else); a token is sent back to that list only. It
        names ``listing`` too (the list's key, short: its connection's, ``shared.connections``), and is taken only
        with the same ``listing``: another list's token is a 400 before Graph is asked (:func:`_skip_token_of`)."""
        if len(listing) > _LISTING_MAX - 8:
            raise ValueError("a listing key is short")
        path = f"/applications?$select=id,appId,displayName&$top={min(page_size, GRAPH_MAX_TOP)}"
        if continuation is not None:
            path += f"&$skiptoken={quote(_skip_token_of(continuation, listing), safe='')}"

        async def send() -> Any:
            try:
                return await self._send("GET", path)
            except GraphCallError as error:  # Graph refused the skiptoken it gave (expired, or not its own)
                if continuation is not None and error.response_status_code == 400 and classify(error) is None:
                    raise _bad_page_token() from None
                raise

        page = await self._call("list app registrations", send)
        items = page.get("value") if isinstance(page, dict) else None
        if not isinstance(items, list):
            raise UpstreamError("Microsoft Graph answered the list of app registrations without its value.")
        found = [{"name": str(a.get("displayName") or ""), "id": str(a.get("id")), "appId": str(a.get("appId"))}
                 for a in items if isinstance(a, dict) and a.get("id")]
        return found, self._next_page(page.get("@odata.nextLink"), listing)

    def _next_page(self, link: object, listing: str) -> str | None:
        """The continuation token of the next page Graph named (its ``$skiptoken``), None at the end; a link
        elsewhere, or without a skiptoken, is refused."""
        if link is None:
            return None
        prefix = f"{self._endpoint}/v1.0/applications?"
        if not isinstance(link, str) or not link.startswith(prefix):
            raise UpstreamError("Microsoft Graph named a next page that is not on its own endpoint; it was not read.")
        skip = [value for name, value in parse_qsl(link[len(prefix):]) if name in ("$skiptoken", "$skipToken")]
        if len(skip) != 1 or not _SKIP_TOKEN.fullmatch(skip[0]):
            raise UpstreamError("Microsoft Graph named a next page of app registrations without a skiptoken.")
        return _page_token(skip[0], listing)

    # -- federated identity credentials (the federated method; engineer B, issue 14) -------------------------
    async def federated_credentials(self, object_id: str) -> list[FederatedCredential]:
        """The application's federated identity credentials (at most 20: one page)."""
        answer = await self._call(
            "read the federated identity credentials",
            lambda: self._send("GET", f"/applications/{_quoted(object_id)}/federatedIdentityCredentials"),
        )
        items = (answer or {}).get("value") if isinstance(answer, dict) else None
        return [_federated(item) for item in (items if isinstance(items, list) else [])
                if isinstance(item, dict) and item.get("id")]

    async def add_federated_credential(self, object_id: str, credential: Mapping[str, Any]) -> FederatedCredential:
        """POST a federated identity credential (its name is unique per application: a lost answer is found again
        by the caller, by name)."""
        try:
            added = await self._call(
                "add a federated identity credential",
                lambda: self._send("POST", f"/applications/{_quoted(object_id)}/federatedIdentityCredentials",
                                   dict(credential)),
            )
        except ServiceError as refused:
            # Sent again after a dropped connection or a 500 or 504, an addition that was applied is refused (its name
            # is taken), and one answered 502 is not sent again though it may have been applied: the credential of
            # that name, issuer and subject is the one asked for, whichever attempt made it.
            try:
                present = await self.federated_credentials(object_id)
            except ServiceError:
                raise refused from None
            wanted = (credential.get("name"), credential.get("issuer"), credential.get("subject"))
            same = [c for c in present if (c.name, c.issuer, c.subject) == wanted]
            if not same:
                raise
            log.info("Microsoft Graph refused to add a federated identity credential that is there (an earlier "
                     "attempt's answer was lost)")
            return same[0]
        if not isinstance(added, dict) or not added.get("id"):
            raise UpstreamError("Microsoft Graph did not return the new federated identity credential.")
        return _federated(added)

    async def remove_federated_credential(self, object_id: str, credential_id: str) -> None:
        """DELETE a federated identity credential; one already gone is fine."""
        try:
            await self._call(
                "remove a federated identity credential",
                lambda: self._send("DELETE", f"/applications/{_quoted(object_id)}/federatedIdentityCredentials/"
                                             f"{_quoted(credential_id)}"),
            )
        except NotFound:
            return


def _may_be_applied(error: Exception) -> bool:
    """A POST that failed so may have been applied all the same: its connection dropped after it was sent (no
    answer, a timeout), or Graph answered 500, 502 or 504."""
    if isinstance(error, httpx.TransportError):
        return not isinstance(error, httpx.ConnectError)  # one that could not connect was never sent
    return _status(error) in MAY_BE_APPLIED


def _federated(item: Mapping[str, Any]) -> FederatedCredential:
    audiences = item.get("audiences")
    return FederatedCredential(
        id=str(item["id"]), name=str(item.get("name") or ""), issuer=str(item.get("issuer") or ""),
        subject=str(item.get("subject") or ""),
        audiences=tuple(str(a) for a in audiences) if isinstance(audiences, list) else (),
    )
