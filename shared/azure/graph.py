"""Microsoft Graph, through msgraph-sdk: an app registration's password credentials and the app list.

msgraph is imported here, when Graph is first used, never at start-up (it loads ~1,200 modules).
Its own retry handler is switched off: Graph calls go through ``with_retries`` with the service's one
policy (Retry-After honoured, jittered back-off), and Graph's "concurrent requests" 400 is retried too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from shared.azure.retry import RetryableError, parse_retry_after, with_retries
from shared.errors import NotFound, UpstreamError, UpstreamForbidden

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential

    from shared.azure.clients import AzureClients

PERMISSION_HINT = (
    "Grant the application the Microsoft Graph application permission Application.ReadWrite.OwnedBy "
    "(with admin consent), and make its service principal an owner of its own app registration "
    "(az ad app owner add --id <appId> --owner-object-id <service principal object id>)."
)
_CONCURRENT = re.compile(r"concurren", re.IGNORECASE)  # "concurrent requests", "ConcurrencyViolation"


@dataclass(frozen=True)
class PasswordCredential:
    key_id: str
    hint: str | None
    display_name: str | None
    end_date_time: datetime | None


@dataclass(frozen=True)
class AppRegistration:
    object_id: str
    app_id: str
    display_name: str | None
    passwords: tuple[PasswordCredential, ...]


@dataclass(frozen=True)
class NewPassword:
    key_id: str
    secret_text: str
    end_date_time: datetime | None


def graph_http_client(clients: AzureClients) -> httpx.AsyncClient:
    """One httpx client per event loop for every Graph call (pooled connections, no msgraph retries)."""
    import httpx
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph_core import GraphClientFactory

    client = httpx.AsyncClient(
        base_url=f"{clients.settings.graph_endpoint}/v1.0", timeout=httpx.Timeout(30.0), http2=False
    )
    no_retry = RetryHandlerOption(max_retries=0, should_retry=False)
    options = {no_retry.get_key(): no_retry}
    wrapped: httpx.AsyncClient = GraphClientFactory.create_with_default_middleware(client=client, options=options)
    return wrapped


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
    import httpx

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


class GraphApps:
    """App registrations seen with one connection's credential."""

    def __init__(self, clients: AzureClients, credential: AsyncTokenCredential) -> None:
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from msgraph import GraphServiceClient
        from msgraph.graph_request_adapter import GraphRequestAdapter

        endpoint = clients.settings.graph_endpoint
        provider = AzureIdentityAuthenticationProvider(
            credential, scopes=[f"{endpoint}/.default"], allowed_hosts=[urlparse(endpoint).hostname or ""]
        )
        adapter = GraphRequestAdapter(provider, client=clients.graph_http())
        adapter.base_url = f"{endpoint}/v1.0"
        self._client = GraphServiceClient(request_adapter=adapter)

    async def _call(self, action: str, call: Any) -> Any:
        try:
            return await with_retries(call, classify)
        except Exception as error:
            if _status(error) is None and classify(error) is None:
                raise
            raise translate(error, action) from None

    async def find(self, app_id: str) -> AppRegistration:
        app = await self._call(
            "read the app registration", lambda: self._client.applications_with_app_id(app_id).get()
        )
        if app is None or not app.id:
            raise NotFound(f"Microsoft Graph has no app registration with appId {app_id}.")
        return AppRegistration(
            object_id=str(app.id),
            app_id=str(app.app_id or app_id),
            display_name=app.display_name,
            passwords=tuple(
                PasswordCredential(
                    key_id=str(p.key_id).lower(), hint=p.hint, display_name=p.display_name,
                    end_date_time=p.end_date_time,
                )
                for p in (app.password_credentials or [])
                if p.key_id is not None
            ),
        )

    async def add_password(self, object_id: str, display_name: str, end: datetime) -> NewPassword:
        from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
            AddPasswordPostRequestBody,
        )
        from msgraph.generated.models.password_credential import PasswordCredential as GraphPassword

        body = AddPasswordPostRequestBody(
            password_credential=GraphPassword(display_name=display_name, end_date_time=end)
        )
        added = await self._call(
            "add a client secret",
            lambda: self._client.applications.by_application_id(object_id).add_password.post(body),
        )
        if added is None or not added.secret_text or added.key_id is None:
            raise UpstreamError("Microsoft Graph did not return the new client secret.")
        return NewPassword(str(added.key_id).lower(), added.secret_text, added.end_date_time)

    async def remove_password(self, object_id: str, key_id: str) -> None:
        """Revoke a client secret; one that is already gone is fine (idempotent)."""
        from uuid import UUID

        from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
            RemovePasswordPostRequestBody,
        )

        body = RemovePasswordPostRequestBody(key_id=UUID(key_id))
        try:
            await self._call(
                "revoke a client secret",
                lambda: self._client.applications.by_application_id(object_id).remove_password.post(body),
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
        page = await self._call("list app registrations", lambda: self._client.applications.get(config))
        found: list[dict[str, str]] = []
        while page is not None:
            found += [
                {"name": a.display_name or "", "id": str(a.id), "appId": str(a.app_id)} for a in page.value or []
            ]
            link = page.odata_next_link
            if not link:
                break
            page = await self._call(
                "list app registrations", lambda link=link: self._client.applications.with_url(link).get()
            )
        return found
