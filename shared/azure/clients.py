"""Every Azure SDK client of the service is built here, once, from settings.

One set of clients per event loop (the Functions worker runs every async function on one
loop, so in Azure that is once per process). All clients share one aiohttp session, so
connections to Entra ID, Key Vault and Table Storage are pooled across invocations, and
all go through the one retry policy of ``shared.azure.retry``. SDK modules are imported
here, lazily, so that importing the function app stays cheap.

Every request goes out through :meth:`AzureClients.transport`, which makes it a client span of
``shared.telemetry`` (each attempt of a retried call its own span), labelled with its ``upstream``:
``entra`` (every token request), ``key-vault``, ``tables``; Graph's transport does the same (``graph``).

Reads of connections (and of their rotation history), the audit records, the OAuth states and the console's
sessions do not go through the SDK: :meth:`AzureClients.rest` gives the lean client of ``shared.azure.rest``
(standard library only, same keep-alive, read timeout, retry schedule and spans), over which
``shared.store.table_reads`` reads Table Storage and ``shared.store.table_writes`` inserts, merges and deletes
single entities. In Azure the read's token comes over
the same client from the host's managed-identity endpoint (``shared.azure.managed_identity``, see
:meth:`AzureClients.storage_token`), not through azure-identity. Importing this module imports neither
aiohttp nor azure-core: the SDKs' retry policy (``shared.azure.retry_policy``) is imported where a client is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared import telemetry
from shared.azure.upstream import OWN_IDENTITY
from shared.errors import ServiceMisconfigured
from shared.settings import Settings, get_settings

# A pooled connection idle for longer than this is closed, not reused. Servers close idle keep-alive
# connections too, Azurite (Node's default) after 5 s; a request written on a connection the server is
# closing at that moment gets no answer (aiohttp: "Server disconnected"), and azure-core does not retry a
# POST then, such as a Table `$batch` (creating or renaming a connection), which may have been applied.
# Never reusing a connection near the server's limit removes that race at its source; the margin covers
# the time between the server's last byte and aiohttp's release of the connection on a busy event loop.
# It costs a new connection (a TLS handshake for Entra ID and Key Vault) after 3 s of quiet.
KEEPALIVE_SECONDS = 3.0
# Per read on a socket: an upstream that goes silent this long counts as a dropped connection (retried
# where that is safe, see shared.azure.retry) rather than holding the call for azure-core's 300 s.
READ_TIMEOUT_SECONDS = 60
# To open a connection (TCP and TLS): an upstream that cannot be reached this long counts as one that could not be
# reached (retried, for every method: nothing was sent), rather than azure-core's 300 s, ten times over.
CONNECT_TIMEOUT_SECONDS = 10.0

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp
    import httpx
    from azure.core import AsyncPipelineClient
    from azure.core.credentials import AccessToken as CoreAccessToken
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.core.rest import AsyncHttpResponse, HttpRequest
    from azure.data.tables.aio import TableClient, TableServiceClient
    from azure.keyvault.secrets.aio import SecretClient

    from shared.azure.managed_identity import AccessToken
    from shared.azure.rest import RestClient

STORAGE_SCOPE = "https://storage.azure.com/.default"
TOKEN_REFRESH_MARGIN = 300  # seconds before its expiry a cached bearer token is no longer used
TOKEN_REFRESH_RETRY_DELAY = 30  # seconds after a failed refresh before a still valid token is refreshed again


class AzureClients:
    """The service's Azure clients for one event loop; build with :func:`get_clients`."""

    # The lean client's class (None: ``shared.azure.rest.RestClient``, imported on first use); a benchmark counts its
    # requests with a subclass.
    rest_class: type[RestClient] | None = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._service_credential: OwnIdentity | None = None
        self._federation_credential: AsyncTokenCredential | None = None
        self._table_service: TableServiceClient | None = None
        self._tables: dict[str, TableClient] = {}
        # The state tables this process has created or written to: a table is created on first use only, so one
        # that vanishes later (the audit log deleted) is a failure, not a new empty table (fail closed).
        self.tables_in_use: set[str] = set()
        self._table_lock = asyncio.Lock()
        self._secrets: SecretClient | None = None
        self._graph_http: httpx.AsyncClient | None = None
        self._entra_tokens: AsyncPipelineClient[HttpRequest, AsyncHttpResponse] | None = None
        self._rest: dict[str, RestClient] = {}
        self._storage_token: AccessToken | None = None
        self._storage_token_fetch: asyncio.Task[str] | None = None  # the one fetch concurrent reads share
        self._on_close: list[Callable[[], Awaitable[None]]] = []

    # -- shared plumbing -------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import ssl

            import aiohttp

            # Built now, not at aiohttp's import, so SSL_CERT_FILE set by the host is honoured.
            tls = ssl.create_default_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=tls, limit=100, limit_per_host=64, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_SECONDS
                ),
                trust_env=False,
            )
            _no_hidden_resend(self._session)
        return self._session

    def transport(self, upstream: str) -> AioHttpTransport:
        """A transport over the shared session whose requests are client spans labelled ``upstream``; closing
        it leaves the session open."""
        return _traced_transport(self.session(), upstream)

    def rest(self, upstream: str) -> RestClient:
        """The lean client of the read path and of single-entity writes (``shared.azure.rest``: no aiohttp, no
        azure-core) to ``upstream``, one per upstream, on the same keep-alive and read timeout as the SDKs'
        session."""
        client = self._rest.get(upstream)
        if client is None:
            from shared.azure.rest import RestClient

            client = (self.rest_class or RestClient)(upstream, keepalive=KEEPALIVE_SECONDS,
                                                     read_timeout=READ_TIMEOUT_SECONDS,
                                                     connect_timeout=CONNECT_TIMEOUT_SECONDS)
            self._rest[upstream] = client
        return client

    async def storage_token(self) -> str:
        """A bearer token of the service's identity for Table Storage (the read path's; the SDK clients get
        theirs through their own policy), reused until ``TOKEN_REFRESH_MARGIN`` before it expires, or until the
        refresh time its issuer named, whichever is first.

        Where the host provides the managed-identity endpoint (``settings.managed_identity_endpoint``: Azure
        Functions), the token comes from there in one GET over the lean client (``shared.azure.managed_identity``,
        labelled ``entra``), so a cold read imports neither azure-identity nor MSAL, azure-core or aiohttp; the
        identity is the one DefaultAzureCredential is given (``AzureWebJobsStorage__clientId``, else
        ``AZURE_CLIENT_ID``, else the system-assigned one). Elsewhere (environment credentials locally, the CLI) it is
        :meth:`service_credential`'s. Concurrent reads that find no usable token share one fetch (a task, with
        its retries, run without the first reader's deadline): each gets its token or its error, at the same moment,
        or gives up at its own deadline. A refresh that fails while
        the cached token is still usable keeps the cached token (logged, without it) and is tried again
        ``TOKEN_REFRESH_RETRY_DELAY`` later, as azure-identity does; otherwise the error (an
        RFC 9457 ``ServiceError`` on the lean path) reaches the caller."""
        import time

        cached = self._storage_token
        if cached is not None and time.time() < _renew_at(cached):
            return cached.token
        from shared.azure.retry import shared_task, waited

        fetch = self._storage_token_fetch
        if fetch is None:
            fetch = self._storage_token_fetch = shared_task(self._renew_storage_token())
            fetch.add_done_callback(_retrieved)
        return await waited(fetch, _token_too_late)

    async def _renew_storage_token(self) -> str:
        """The shared fetch of :meth:`storage_token`."""
        import time

        cached = self._storage_token
        try:
            fresh = await self._fetch_storage_token()
        except Exception as error:
            now = time.time()
            if cached is None or now >= cached.expires_on - TOKEN_REFRESH_MARGIN:
                raise
            import logging

            logging.getLogger(__name__).warning(
                "The Table Storage token could not be refreshed (%s); the cached one, valid %d s more, is used",
                type(error).__name__, int(cached.expires_on - now))
            # Not asked again for a while, so that reads do not each wait for a failing endpoint.
            self._storage_token = replace(cached, refresh_on=now + TOKEN_REFRESH_RETRY_DELAY)
            return cached.token
        else:
            self._storage_token = fresh
            return fresh.token
        finally:
            if self._storage_token_fetch is asyncio.current_task():
                self._storage_token_fetch = None  # the next read that finds no usable token fetches anew

    async def _fetch_storage_token(self) -> AccessToken:
        from shared.azure.managed_identity import AccessToken, get_token

        endpoint = self.settings.managed_identity_endpoint
        if endpoint is not None:
            return await get_token(self.rest(ENTRA), endpoint, STORAGE_SCOPE,
                                   self.settings.storage.managed_identity_client_id)
        token = await self.service_credential().get_token(STORAGE_SCOPE)
        return AccessToken(token.token, float(token.expires_on))

    def identity_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any azure-identity credential the service builds."""
        from shared.azure.retry_policy import JitteredRetryPolicy

        return {
            "authority": self.settings.authority_host,
            "transport": self.transport(ENTRA),
            "retry_policy_class": JitteredRetryPolicy,
        }

    def service_credential(self) -> OwnIdentity:
        """The service's own identity (managed identity in Azure, environment credentials locally).

        Where DefaultAzureCredential would sign in with the host's managed identity anyway
        (``settings.managed_identity_endpoint``: the rule of ``shared.settings``, which the read path's token follows
        too), it is that ManagedIdentityCredential alone: on its first token request DefaultAzureCredential's chain
        turns the identity's failure into a ``ClientAuthenticationError`` without its status or headers, so an
        endpoint still throttling (429 with ``Retry-After``) would be a ``502`` rather than a ``503`` with its
        wait (``shared.azure.upstream``). Elsewhere (environment credentials locally, the CLI) it is
        DefaultAzureCredential."""
        if self._service_credential is not None:
            return self._service_credential
        inner: AsyncTokenCredential
        if self.settings.managed_identity_endpoint is not None:
            from azure.identity.aio import ManagedIdentityCredential

            from shared.azure.retry_policy import JitteredRetryPolicy

            inner = ManagedIdentityCredential(
                client_id=self.settings.storage.managed_identity_client_id,
                transport=_traced_transport(self.session(), ENTRA, OWN_IDENTITY),
                retry_policy_class=JitteredRetryPolicy)
        else:
            from azure.identity.aio import DefaultAzureCredential

            inner = DefaultAzureCredential(
                managed_identity_client_id=self.settings.storage.managed_identity_client_id,
                exclude_interactive_browser_credential=True,
                **self.identity_kwargs(),
            )
        self._service_credential = OwnIdentity(inner)
        return self._service_credential

    def federation_credential(self) -> AsyncTokenCredential:
        """The user-assigned managed identity (``FEDERATION_IDENTITY_CLIENT_ID``) whose tokens for the token-exchange
        audience are client assertions: of federated connections, and of the console's sign-in. One per process,
        so its token is cached between sign-ins; concurrent requests for a token it has not cached yet share one
        (:class:`SharedTokenRequests`)."""
        if self._federation_credential is None:
            client_id = self.settings.federation_identity_client_id
            if client_id is None:
                raise RuntimeError("FEDERATION_IDENTITY_CLIENT_ID is not set")
            from azure.identity.aio import ManagedIdentityCredential

            from shared.azure.retry_policy import JitteredRetryPolicy

            self._federation_credential = SharedTokenRequests(ManagedIdentityCredential(
                client_id=client_id, transport=self.transport(ENTRA), retry_policy_class=JitteredRetryPolicy))
        return self._federation_credential

    # -- Table Storage ---------------------------------------------------------------------
    def table_service(self) -> TableServiceClient:
        if self._table_service is None:
            service = _tables_with_the_retry_policy()
            storage = self.settings.storage
            common: dict[str, Any] = {"transport": self.transport(TABLES)}
            if storage.connection_string:
                self._table_service = service.from_connection_string(storage.connection_string, **common)
            else:
                assert storage.table_service_uri
                self._table_service = service(storage.table_service_uri, credential=self.service_credential(),
                                              **common)
        return self._table_service

    async def table(self, suffix: str) -> TableClient:
        """The state table ``{prefix}{suffix}``, created on first use in this process."""
        name = f"{self.settings.table_prefix}{suffix}"
        client = self._tables.get(name)
        if client is not None:
            return client
        async with self._table_lock:
            client = self._tables.get(name)
            if client is None:
                from azure.core.exceptions import ResourceExistsError

                service = self.table_service()
                with contextlib.suppress(ResourceExistsError):
                    await service.create_table(name)
                client = service.get_table_client(name)
                self._tables[name] = client
                self.tables_in_use.add(name)
        return client

    # -- Key Vault -------------------------------------------------------------------------
    def secrets(self) -> SecretClient:
        if self._secrets is None:
            if not self.settings.key_vault_url:
                raise ServiceMisconfigured("KEY_VAULT_URL is not set, so no secret can be stored or read.")
            from azure.keyvault.secrets.aio import SecretClient

            from shared.azure.retry_policy import retry_policy

            self._secrets = SecretClient(
                self.settings.key_vault_url,
                self.service_credential(),
                verify_challenge_resource=self.settings.key_vault_verify_challenge_resource,
                transport=self.transport(KEY_VAULT),
                retry_policy=retry_policy(),
            )
        return self._secrets

    # -- Microsoft Graph -------------------------------------------------------------------
    def graph_http(self) -> httpx.AsyncClient:
        """The one HTTP client of every Graph call (msgraph's adapters share it, so connections pool)."""
        if self._graph_http is None:
            from shared.azure.graph import graph_http_client

            self._graph_http = graph_http_client(self)
        return self._graph_http

    # -- Entra ID token endpoint (OAuth authorization-code and refresh-token grants) ------------
    def entra_tokens(self) -> AsyncPipelineClient[HttpRequest, AsyncHttpResponse]:
        """A pipeline to the authority's token endpoint: the shared session, the one retry policy, and no
        logging policy (the bodies carry codes and tokens)."""
        if self._entra_tokens is None:
            from azure.core import AsyncPipelineClient
            from azure.core.pipeline.policies import UserAgentPolicy

            from shared.azure.retry_policy import retry_policy

            self._entra_tokens = AsyncPipelineClient(
                self.settings.authority_host,
                policies=[UserAgentPolicy(sdk_moniker="app-connections-oauth"), retry_policy()],
                transport=self.transport(ENTRA),
            )
        return self._entra_tokens

    def on_close(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Have :meth:`close` await ``hook`` before it closes anything: what runs behind the requests over these
        clients (the daily read of the API's signing keys, ``shared.wiring.token_validator``) ends first, so that
        no task is left pending at the host's shutdown and none goes on over closed clients."""
        self._on_close.append(hook)

    async def close(self) -> None:
        hooks, self._on_close = self._on_close, []
        for hook in hooks:
            try:
                await hook()
            except Exception as error:  # one hook's failure does not keep the clients open
                import logging

                logging.getLogger(__name__).warning("A hook run at the clients' close failed (%s); closing on",
                                                    type(error).__name__)
        fetch, self._storage_token_fetch = self._storage_token_fetch, None
        if fetch is not None:
            fetch.cancel()
        rest, self._rest = self._rest, {}
        for lean in rest.values():
            await lean.close()
        self._storage_token = None
        if self._graph_http is not None:
            await self._graph_http.aclose()
            self._graph_http = None
        for client in self._tables.values():
            await client.close()
        self._tables.clear()
        for closable in (self._secrets, self._table_service, self._service_credential, self._federation_credential):
            if closable is not None:
                await closable.close()
        self._secrets = self._table_service = self._service_credential = self._federation_credential = None
        if self._session is not None:
            await self._session.close()
            self._session = None


# The ``upstream`` attribute of a client span: which service a request went to.
ENTRA = "entra"
KEY_VAULT = "key-vault"
TABLES = "tables"
GRAPH = "graph"

_TRACED_TRANSPORT: type[AioHttpTransport] | None = None


def _traced_transport(session: aiohttp.ClientSession, upstream: str,
                      labelled: str | None = None) -> AioHttpTransport:
    """azure-core's aiohttp transport, each ``send`` inside a client span, its response (or error) labelled with
    ``labelled`` (default ``upstream``) so that an error raised from it names the service (``shared.azure.upstream``;
    built on first use: azure-core is imported only when a client is)."""
    global _TRACED_TRANSPORT
    if _TRACED_TRANSPORT is None:
        from azure.core.pipeline.transport import AioHttpTransport

        from shared.azure.upstream import label

        class TracedTransport(AioHttpTransport):  # type: ignore[misc]  # azure-core exports it untyped
            def __init__(self, upstream: str, labelled: str | None = None, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.upstream = upstream
                self.labelled = labelled or upstream
                self.sends: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

            async def send(self, request: Any, **config: Any) -> Any:
                # azure-core's retries (and its Key Vault challenge) send the same request object again
                sends = self.sends.get(request, 0)
                self.sends[request] = sends + 1
                with telemetry.client_span(request.method, request.url, request.headers,
                                           {"upstream": self.upstream, **telemetry.resent(sends)}) as span:
                    try:
                        response = await super().send(request, **config)
                    except Exception as error:  # an error raised later from it names the service
                        label(error, self.labelled)
                        raise
                    label(response, self.labelled)
                    telemetry.set_response(span, response.status_code, challenge=_challenged(request, response))
                    return response

        _TRACED_TRANSPORT = TracedTransport
    transport_class: Any = _TRACED_TRANSPORT
    traced: AioHttpTransport = transport_class(
        upstream, labelled, session=session, session_owner=False, read_timeout=READ_TIMEOUT_SECONDS,
        connection_timeout=CONNECT_TIMEOUT_SECONDS,
    )
    return traced


class SharedTokenRequests:
    """An ``AsyncTokenCredential`` (azure-identity's ``ManagedIdentityCredential``, ``DefaultAzureCredential``) whose
    concurrent requests for the same token share one: azure-identity's async credentials do not combine them, so N
    first uses at once (N federated connections validated, a sweep's first round, sign-ins, N Key Vault calls once
    its challenge is known or when the token is refreshed) asked the identity endpoint N times. The request in flight
    is every waiter's (its token, or its error, after one retry schedule, not one each in turn), keyed by its scopes
    and options, through ``get_token`` and ``get_token_info`` alike (azure-core's policies call the latter); the token
    is then in the credential's own cache, and a failure is not kept (the next call asks again). One per
    ``AzureClients``, so per event loop; closing it cancels a request still in flight."""

    def __init__(self, inner: AsyncTokenCredential) -> None:
        self.inner = inner
        self._asked: dict[tuple[Any, ...], asyncio.Task[Any]] = {}

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> CoreAccessToken:
        if kwargs:  # options no caller of the service passes: not shared
            return await self.inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae,
                                              **kwargs)
        result: CoreAccessToken = await self._shared(
            ("token", scopes, claims, tenant_id, enable_cae),
            lambda: self.inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae))
        return result

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        inner = self.inner.get_token_info  # type: ignore[attr-defined]  # AsyncSupportsTokenInfo
        try:
            key = ("info", scopes, tuple(sorted((options or {}).items())))
            hash(key)
        except TypeError:  # an option that is not hashable (none the SDKs pass): not shared
            return await inner(*scopes, options=options)
        return await self._shared(key, lambda: inner(*scopes, options=options))

    async def _shared(self, key: tuple[Any, ...], ask: Callable[[], Awaitable[Any]]) -> Any:
        from shared.azure.retry import shared_task, waited

        asked = self._asked.get(key)
        if asked is None:
            asked = self._asked[key] = shared_task(self._ask(key, ask))
            asked.add_done_callback(_retrieved)
        return await waited(asked, _token_too_late)

    async def _ask(self, key: tuple[Any, ...], ask: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await ask()
        finally:
            if self._asked.get(key) is asyncio.current_task():
                del self._asked[key]

    async def close(self) -> None:
        asked, self._asked = list(self._asked.values()), {}
        for task in asked:
            task.cancel()
        await self.inner.close()

    async def __aenter__(self) -> SharedTokenRequests:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class OwnIdentity(SharedTokenRequests):
    """The service's own credential (``inner``): its concurrent requests for one token share one
    (:class:`SharedTokenRequests`: Key Vault's and the Table SDK's policies, the read path's token where the host has
    no managed-identity endpoint), and each failure to get a token is labelled as its own identity's
    (``shared.azure.upstream.OWN_IDENTITY``) before it goes on: the SDKs raise it from their own calls, and
    DefaultAzureCredential's chain raises a new error that carries no response (nor its transport's label), so
    without it a refusal of the environment's credentials was told as "Key Vault could not be reached"."""

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> CoreAccessToken:
        try:
            return await super().get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae,
                                           **kwargs)
        except Exception as error:
            _own(error)
            raise

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        try:
            return await super().get_token_info(*scopes, options=options)
        except Exception as error:
            _own(error)
            raise

    async def __aenter__(self) -> OwnIdentity:
        return self


def _token_too_late() -> Exception:
    """What a caller of a shared token request gets once its own deadline is reached (:func:`~shared.azure.retry.
    waited`)."""
    from shared.errors import UpstreamError

    return UpstreamError("The service's identity did not give a token before the request had to be answered; try "
                         "again.")


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take what a shared task raised (its waiters may all have been cancelled), so that asyncio does not log it as
    never retrieved; the waiters that are there raise it themselves."""
    if not task.cancelled():
        task.exception()


def _own(error: BaseException) -> None:
    from shared.azure.upstream import label

    label(error, OWN_IDENTITY)


def _no_hidden_resend(session: aiohttp.ClientSession) -> None:
    """Stop ``session`` from sending an idempotent request once more, at once and unseen, when its connection drops
    (``ServerDisconnectedError``, ``ClientOSError``): aiohttp does so inside each attempt of the one retry policy,
    which then sent a GET dropped every time twice as often as it says, in pairs without back-off, and neither the
    policy nor the client spans saw the second. The switch is aiohttp's own attribute (``_retry_connection`` in
    the locked aiohttp 3.14, listed in ``ClientSession.ATTRS``; no argument sets it): where a version has none,
    nothing is set, and ``tests/shared/azure/test_clients.py`` counts the requests a dropped GET makes, so a
    version that moves it fails there."""
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False


def _challenged(request: Any, response: Any) -> bool:
    """Whether ``response`` is a bearer challenge to a request sent without credentials (Key Vault answers the first
    request of a client so, naming the authority and resource to get a token for; the request is then sent again
    with one)."""
    return (response.status_code == 401 and "authorization" not in {name.lower() for name in request.headers}
            and response.headers.get("WWW-Authenticate", "").lower().startswith("bearer"))


def _renew_at(token: AccessToken) -> float:
    """When a cached token is no longer used as it is: its refresh time, or ``TOKEN_REFRESH_MARGIN`` before its
    expiry if that is sooner."""
    renew = token.expires_on - TOKEN_REFRESH_MARGIN
    return renew if token.refresh_on is None else min(renew, token.refresh_on)


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AzureClients] = weakref.WeakKeyDictionary()


def get_clients() -> AzureClients:
    """The clients of the running event loop, built on first use."""
    loop = asyncio.get_running_loop()
    clients = _BY_LOOP.get(loop)
    if clients is None:
        clients = AzureClients(get_settings())
        _BY_LOOP[loop] = clients
    return clients


async def close_clients() -> None:
    """Close the running loop's clients (called on host shutdown)."""
    clients = _BY_LOOP.pop(asyncio.get_running_loop(), None)
    if clients is not None:
        await clients.close()


@lru_cache(maxsize=1)
def _tables_with_the_retry_policy() -> type[TableServiceClient]:
    """The Tables SDK's service client with the service's retry policy. azure-data-tables ignores ``retry_policy=``
    and builds its own (three status retries, no jitter, any Retry-After waited for): this puts the one policy in
    its place in the pipeline it builds, which its table clients share (review W)."""
    from azure.core.pipeline.policies import AsyncRetryPolicy
    from azure.data.tables.aio import TableServiceClient

    from shared.azure.retry_policy import TablesRetryPolicy

    class Tables(TableServiceClient):
        def _configure_policies(self, **kwargs: Any) -> list[Any]:
            policies: list[Any] = super()._configure_policies(**kwargs)
            return [TablesRetryPolicy() if isinstance(policy, AsyncRetryPolicy) else policy for policy in policies]

    return Tables
