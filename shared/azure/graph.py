"""Microsoft Graph: an app registration's password credentials (plain JSON requests) and the app list (msgraph-sdk).

msgraph is imported here, when the app list is first asked for, never at start-up (it loads ~1,200 modules);
a rotation never imports it.
Its own retry handler is switched off: Graph calls go through ``with_retries`` with the service's one
policy (Retry-After honoured, jittered back-off), and Graph's "concurrent requests" 400 is retried too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

import httpx

from shared import telemetry
from shared.azure.retry import RetryableError, parse_retry_after, with_retries
from shared.errors import NotFound, UpstreamError, UpstreamForbidden
from shared.ports import AppRegistration, NewPassword, PasswordCredential

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


def graph_http_client(clients: AzureClients) -> httpx.AsyncClient:
    """One httpx client per event loop for every Graph call (no msgraph retries), with msgraph-core's middleware,
    whose requests go out over the service's one aiohttp session (:class:`SessionTransport`)."""
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
    decompress them; httpx does, as it asked for the encodings), redirects are left to the middleware, and
    aiohttp's failures become httpx's transport errors, which :func:`classify` retries.

    Each request is a client span of ``shared.telemetry`` (``upstream=graph``): OpenTelemetry's httpx
    instrumentation wraps httpx's own transports only, so it never sees these.
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        self._session = session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        with telemetry.client_span(request.method, url, request.headers, {"upstream": "graph"}) as span:
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


def _status(error: Exception) -> int | None:
    status = getattr(error, "response_status_code", None)
    return int(status) if isinstance(status, int) else None


def _code(error: Exception) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "code", "") or "")


def _message(error: Exception) -> str:
    inner = getattr(error, "error", None)
    return str(getattr(inner, "message", "") or "")


def classify(error: Exception) -> RetryableError | None:
    """Graph failures worth another try: throttling, unavailability, concurrency conflicts, network."""
    if isinstance(error, httpx.TransportError):
        return RetryableError("Microsoft Graph could not be reached")
    status = _status(error)
    if status is None:
        return None
    headers = getattr(error, "response_headers", None) or {}
    lowered = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    retry_after = parse_retry_after(lowered.get("retry-after"))
    if status in (429, 503, 500, 502, 504):
        return RetryableError(f"Microsoft Graph answered {status}", retry_after)
    if status in (400, 409) and (_CONCURRENT.search(_message(error)) or _CONCURRENT.search(_code(error))):
        return RetryableError("Microsoft Graph refused concurrent changes", retry_after)
    return None


def translate(error: Exception, action: str) -> Exception:
    """A Graph failure that retries did not fix, as a domain error with a useful message."""
    status = _status(error)
    code = _code(error)
    if status == 403:
        return UpstreamForbidden(
            f"Microsoft Graph refused to {action} (403 {code or 'Forbidden'}). {PERMISSION_HINT}",
            extensions={"graphCode": code or None, "requiredPermission": "Application.ReadWrite.OwnedBy"},
        )
    if status == 404:
        return NotFound(f"Microsoft Graph found nothing to {action} (404 {code}).")
    if status is not None:
        return UpstreamError(f"Microsoft Graph failed to {action} ({status} {code}).")
    return UpstreamError(f"Microsoft Graph could not be reached to {action}.")


class GraphCallError(Exception):
    """A Graph answer that is not a success, with what :func:`classify` and :func:`translate` read: the status,
    the response headers and Graph's ``{"error": {"code", "message"}}`` (empty when the body is not one)."""

    def __init__(self, status: int, headers: Mapping[str, str], code: str, message: str) -> None:
        super().__init__(f"Microsoft Graph answered {status} {code}".rstrip())
        self.response_status_code = status
        self.response_headers = dict(headers)
        self.error = _GraphErrorBody(code, message)


@dataclass(frozen=True)
class _GraphErrorBody:
    code: str
    message: str


# What a rotation reads of an application: ``$select`` keeps the answer small, as the rest is never used.
APPLICATION_SELECT = "id,appId,displayName,passwordCredentials"


def _quoted(value: str) -> str:
    """A key segment: an OData string literal's quotes doubled, then percent-encoded."""
    return quote(value.replace("'", "''"), safe="")


def _parse_datetime(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _error_of(response: httpx.Response) -> GraphCallError:
    code = message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code") or "")
        message = str(body["error"].get("message") or "")
    return GraphCallError(response.status_code, response.headers, code, message)


class GraphApps:
    """App registrations seen with one connection's credential.

    The three calls of a rotation (read an application, addPassword, removePassword) are plain JSON requests on
    the service's one Graph HTTP client (msgraph-core's, with its middleware and the sweep's response hook),
    with a bearer token from the connection's credential: msgraph-sdk's ``Application`` model costs about 17 ms
    of CPU to deserialize (its base class imports a thousand model modules on every call), more than the rest
    of a rotation's Graph work together. Listing app registrations (paged, not on the rotation path) still goes
    through msgraph-sdk, built on first use.
    """

    def __init__(self, clients: AzureClients, credential: AsyncTokenCredential) -> None:
        self._clients = clients
        self._credential = credential
        self._endpoint = clients.settings.graph_endpoint.rstrip("/")
        self._scope = f"{self._endpoint}/.default"
        self._client: Any = None

    def _msgraph(self) -> Any:
        """msgraph-sdk's client over the same HTTP client, built (and msgraph imported) on first use."""
        if self._client is None:
            from kiota_authentication_azure.azure_identity_authentication_provider import (
                AzureIdentityAuthenticationProvider,
            )
            from msgraph import GraphServiceClient
            from msgraph.graph_request_adapter import GraphRequestAdapter

            provider = AzureIdentityAuthenticationProvider(
                self._credential, scopes=[self._scope], allowed_hosts=[urlparse(self._endpoint).hostname or ""]
            )
            adapter = GraphRequestAdapter(provider, client=self._clients.graph_http())
            adapter.base_url = f"{self._endpoint}/v1.0"
            self._client = GraphServiceClient(request_adapter=adapter)
        return self._client

    async def _call(self, action: str, call: Any) -> Any:
        try:
            return await with_retries(call, classify)
        except Exception as error:
            if _status(error) is None and classify(error) is None:
                raise
            raise translate(error, action) from None

    async def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One Graph request (``path`` under ``/v1.0``): the JSON answer (None for 204), or :class:`GraphCallError`.
        The token is the credential's cached one (azure-identity acquires it once, and again near its expiry)."""
        token = await self._credential.get_token(self._scope)
        headers = {"Authorization": f"Bearer {token.token}", "Accept": "application/json"}
        response = await self._clients.graph_http().request(
            method, f"{self._endpoint}/v1.0{path}", headers=headers, json=body
        )
        if response.status_code >= 400:
            raise _error_of(response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UpstreamError("Microsoft Graph answered with a body that is not JSON.") from None

    async def find(self, app_id: str) -> AppRegistration:
        app = await self._call(
            "read the app registration",
            lambda: self._send("GET", f"/applications(appId='{_quoted(app_id)}')?$select={APPLICATION_SELECT}"),
        )
        if not isinstance(app, dict) or not app.get("id"):
            raise NotFound(f"Microsoft Graph has no app registration with appId {app_id}.")
        passwords = app.get("passwordCredentials") or []
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
        )

    async def add_password(self, object_id: str, display_name: str, end: datetime) -> NewPassword:
        """addPassword. ``display_name`` must be unique to this call (the rotation's marker): when a request is lost
        after it was sent (the connection dropped, no answer), Graph may have applied it, so the passwords of that
        name are removed before it is sent again; otherwise one would be left behind, live and unknown."""
        body = {"passwordCredential": {"displayName": display_name, "endDateTime": end.isoformat()}}
        path = f"/applications/{_quoted(object_id)}/addPassword"

        async def attempt() -> Any:
            try:
                return await self._send("POST", path, body)
            except httpx.TransportError as error:
                if not isinstance(error, httpx.ConnectError):  # it was sent: it may have been applied
                    await self._remove_named(object_id, display_name)
                raise

        added = await self._call("add a client secret", attempt)
        if not isinstance(added, dict) or not added.get("secretText") or not added.get("keyId"):
            raise UpstreamError("Microsoft Graph did not return the new client secret.")
        return NewPassword(
            str(added["keyId"]).lower(), str(added["secretText"]), _parse_datetime(added.get("endDateTime"))
        )

    async def _remove_named(self, object_id: str, display_name: str) -> None:
        app = await self._call(
            "read the app registration",
            lambda: self._send("GET", f"/applications/{_quoted(object_id)}?$select=id,passwordCredentials"),
        )
        for password in (app or {}).get("passwordCredentials") or []:
            if isinstance(password, dict) and password.get("displayName") == display_name and password.get("keyId"):
                await self.remove_password(object_id, str(password["keyId"]))

    async def remove_password(self, object_id: str, key_id: str) -> None:
        """Revoke a client secret; one that is already gone is fine (idempotent)."""
        from uuid import UUID

        body = {"keyId": str(UUID(key_id))}
        try:
            await self._call(
                "revoke a client secret",
                lambda: self._send("POST", f"/applications/{_quoted(object_id)}/removePassword", body),
            )
        except NotFound:
            return

    async def list_applications(self) -> list[dict[str, str]]:
        """Every app registration the credential can see, following ``@odata.nextLink``."""
        from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder

        config = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetRequestConfiguration(
            query_parameters=ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
                select=["id", "appId", "displayName"], top=100
            )
        )
        page = await self._call("list app registrations", lambda: self._msgraph().applications.get(config))
        found: list[dict[str, str]] = []
        while page is not None:
            found += [
                {"name": a.display_name or "", "id": str(a.id), "appId": str(a.app_id)} for a in page.value or []
            ]
            link = page.odata_next_link
            if not link:
                break
            page = await self._call(
                "list app registrations", lambda link=link: self._msgraph().applications.with_url(link).get()
            )
        return found
