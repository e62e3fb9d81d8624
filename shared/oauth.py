"""OAuth connections: the authorization-code flow against the instance's own app registration, per app.

- :func:`start_authorization` validates the request, stores a single-use state (ten minutes, bound to the
  app, the instance client and the requested connection fields) with a PKCE S256 verifier, and returns the
  authorize URL of ``{authority}/{tenant or organizations}/oauth2/v2.0/authorize``.
- :func:`complete_authorization` (the anonymous callback) consumes the state atomically, redeems the code
  with the client secret and the verifier, and stores the refresh token in Key Vault as the connection's
  secret material (``{"refreshToken": ...}``): a new connection (method ``oauth``) or a new version of the
  one being re-authorized (its status back to active). Every failure is an :class:`OAuthFailed`.
- :func:`get_access_token` refreshes an access token for the app's scope, cached in the process until five
  minutes before it expires; a rotated refresh token is stored again (a new vault version, the entity's
  ``secret_version`` updated under its ETag). ``invalid_grant`` or ``interaction_required`` from Entra is
  :class:`ReauthorizationRequired`; :func:`validate_oauth_connection` records it as the connection's status.

Tokens never reach a log, a table or a response: only Key Vault holds the refresh token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from shared.apps import AppSpec, Method, find_app
from shared.connections import STATUS_ACTIVE, STATUS_INVALID, require_app
from shared.credentials import rejection_from
from shared.errors import (
    Conflict,
    CredentialRejected,
    FieldError,
    InvalidRequest,
    NotFound,
    ServiceError,
    UpstreamError,
)
from shared.models import Description, Guid, Name, parse_model
from shared.settings import Settings
from shared.store.oauth_states import OAuthStates, PendingAuthorization, new_state
from shared.store.tables import ConnectionRecord, ConnectionsTable
from shared.store.vault import SecretVault, secret_name_for

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

    from shared.azure.clients import AzureClients

log = logging.getLogger(__name__)

STATE_LIFETIME = timedelta(minutes=10)
REFRESH_MARGIN_SECONDS = 300
STATUS_REAUTHORIZATION_REQUIRED = "reauthorization-required"
DEFAULT_TENANT = "organizations"
CALLBACK_PARAMS = {"code": 8192, "state": 256, "error": 256, "error_description": 4096}  # name -> max length
# What Entra (or RFC 6749/9207) may add to the answer besides those: tolerated, never read. Any other
# query parameter makes the callback fail (a 400 page).
CALLBACK_IGNORED = frozenset({"session_state", "iss", "error_uri"})
# Entra's answers that only a new sign-in can fix (revoked, expired or consent-less refresh tokens).
REAUTHORIZE_ERRORS = frozenset({"invalid_grant", "interaction_required", "consent_required", "login_required"})


class OAuthNotConfigured(InvalidRequest):
    slug = "oauth-not-configured"
    title = "OAuth is not configured for this app"


class OAuthFailed(ServiceError):
    """The callback could not create or update the connection; ``detail`` says why (shown on the page)."""

    status = 400
    slug = "oauth-failed"
    title = "The connection was not authorized"


class ReauthorizationRequired(CredentialRejected):
    slug = "reauthorization-required"
    title = "The connection must be authorized again"


# -- PKCE and the authorize URL -------------------------------------------------------------------------
def new_verifier() -> str:
    """A PKCE code verifier (RFC 7636): 86 characters of the unreserved URL-safe alphabet."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """The S256 challenge of a verifier: BASE64URL(SHA256(ASCII(verifier))), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def oauth_scopes(app: AppSpec, settings: Settings) -> str:
    return f"openid offline_access {app.oauth_scope(settings)}"


def authorize_url(
    settings: Settings, app: AppSpec, client_id: str, tenant: str | None, state: str, challenge: str
) -> str:
    query = urllib.parse.urlencode(
        {
            "client_id": client_id,
            "response_type": "code",
            "response_mode": "query",
            "redirect_uri": settings.oauth_redirect_uri,
            "scope": oauth_scopes(app, settings),
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{settings.authority_host}/{tenant or DEFAULT_TENANT}/oauth2/v2.0/authorize?{query}"


@dataclass(frozen=True)
class InstanceClient:
    client_id: str
    client_secret: str = field(repr=False)


def instance_client(settings: Settings, app: AppSpec) -> InstanceClient:
    """The instance's app registration for ``app``, or a 400 naming the two settings to set."""
    client = settings.oauth_client(app.oauth_setting_prefix)
    if not (client.client_id and client.client_secret):
        names = [f"{app.oauth_setting_prefix}_CLIENT_ID", f"{app.oauth_setting_prefix}_CLIENT_SECRET"]
        raise OAuthNotConfigured(
            f"OAuth is not configured for {app.id}: set {names[0]} and {names[1]} (the application (client) ID "
            "and a client secret of the instance's app registration) and restart the service.",
            extensions={"settings": names},
        )
    return InstanceClient(client.client_id, client.client_secret)


# -- start ---------------------------------------------------------------------------------------------
class AuthorizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name | None = None
    description: Description | None = None
    tenantId: Guid | None = None
    connectionId: Guid | None = None


async def _ensure_name_free(table: ConnectionsTable, app_id: str, name: str) -> None:
    try:
        await table.get_by_name(app_id, name)
    except NotFound:
        return
    raise Conflict(
        f"A connection named '{name}' already exists for {app_id}.",
        errors=[FieldError("/name", "is already used by another connection of this app")],
    )


async def start_authorization(
    clients: AzureClients, app_id: str, params: Mapping[str, str], now: datetime | None = None
) -> str:
    """Validate the request, store its state and return the URL to send the user's browser to."""
    app = require_app(app_id)
    settings = clients.settings
    client = instance_client(settings, app)
    # ``code`` is the function key when it travels in the query; empty fields count as absent.
    query = {key: value for key, value in params.items() if key != "code" and value != ""}
    request = parse_model(AuthorizeIn, query)
    table = ConnectionsTable(clients)
    tenant = request.tenantId
    if request.connectionId is not None:
        try:
            record = await table.get(app.id, request.connectionId)
        except NotFound:
            raise NotFound(
                f"No {app.id} connection has the id '{request.connectionId}'.",
                errors=[FieldError("/connectionId", "is not a connection of this app")],
            ) from None
        if record.method != Method.OAUTH:
            raise InvalidRequest(
                "Only OAuth connections are authorized by signing in.",
                errors=[FieldError("/connectionId", f"must be an oauth connection, not {record.method}")],
            )
        tenant = tenant or record.tenant_id
        if request.name is not None and request.name.lower() != record.name.lower():
            await _ensure_name_free(table, app.id, request.name)
    else:
        if request.name is None:
            raise InvalidRequest(
                "A new connection needs a name.",
                errors=[FieldError("/name", "is required (or give connectionId to re-authorize a connection)")],
            )
        await _ensure_name_free(table, app.id, request.name)
    now = now or datetime.now(UTC)
    verifier = new_verifier()
    pending = PendingAuthorization(
        app=app.id,
        client_id=client.client_id,
        redirect_uri=settings.oauth_redirect_uri,
        verifier=verifier,
        created_at=now,
        expires_at=now + STATE_LIFETIME,
        name=request.name,
        description=request.description,
        tenant_id=tenant,  # for a re-authorization without tenantId: the connection's own
        connection_id=request.connectionId,
    )
    states = OAuthStates(clients)
    state = new_state(pending.expires_at)
    await states.put(state, pending)
    try:
        await states.purge_expired(now)
    except Exception as error:  # best effort: abandoned states are harmless until the next purge
        log.info("Could not purge expired OAuth states (%s)", type(error).__name__)
    return authorize_url(settings, app, client.client_id, tenant, state, code_challenge(verifier))


# -- the token endpoint ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenResult:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_on: int
    claims: dict[str, Any] = field(default_factory=dict, repr=False)  # id token's, else access token's

    @property
    def tenant_id(self) -> str | None:
        tid = self.claims.get("tid")
        return str(tid).lower() if tid else None

    @property
    def username(self) -> str | None:
        value = self.claims.get("preferred_username") or self.claims.get("upn")
        return str(value) if value else None


def jwt_claims(token: str | None) -> dict[str, Any]:
    """The payload of a JWT, unverified: the token came straight from the token endpoint over TLS (OIDC 3.1.3.7)."""
    if not token or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


async def redeem(clients: AzureClients, tenant: str, form: Mapping[str, str]) -> TokenResult:
    """POST a grant to ``{authority}/{tenant}/oauth2/v2.0/token``; Entra's refusal is a CredentialRejected."""
    from azure.core.exceptions import AzureError
    from azure.core.rest import HttpRequest

    url = f"{clients.settings.authority_host}/{urllib.parse.quote(tenant, safe='')}/oauth2/v2.0/token"
    request = HttpRequest("POST", url, data=dict(form), headers={"Accept": "application/json"})
    started = time.time()
    try:
        response = await clients.entra_tokens().send_request(request)
        await response.read()
    except (AzureError, OSError, TimeoutError):
        raise UpstreamError("Entra ID could not be reached.") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UpstreamError(f"Entra ID answered {response.status_code} without a token response.")
    if response.status_code == 200 and isinstance(body.get("access_token"), str):
        try:
            expires_in = int(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            expires_in = 3600
        claims = jwt_claims(body.get("id_token")) or jwt_claims(body["access_token"])
        refresh = body.get("refresh_token")
        return TokenResult(
            access_token=body["access_token"],
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_on=int(started) + expires_in,
            claims=claims,
        )
    error = str(body.get("error") or "")
    description = str(body.get("error_description") or "")
    if error:
        rejected = rejection_from(Exception(f"({error}) {description}"))
        if rejected is None:
            detail = f"{error}: {description[:300]}".rstrip(": ")
            rejected = CredentialRejected(detail, extensions={"entraError": error})
        raise rejected
    raise UpstreamError(f"Entra ID answered {response.status_code} without a token response.")


# -- the callback ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthorizationOutcome:
    app: AppSpec
    record: ConnectionRecord
    created: bool
    username: str | None


def _declined(error: str, description: str | None) -> OAuthFailed:
    text = f"Entra ID did not grant access ({error})"
    return OAuthFailed(f"{text}: {description}" if description else f"{text}.", extensions={"entraError": error})


async def complete_authorization(
    clients: AzureClients, params: Mapping[str, str], now: datetime | None = None
) -> AuthorizationOutcome:
    """Finish the flow the callback received: only ``code``, ``state``, ``error`` and ``error_description``
    are read. The state is consumed whatever happens next, so a callback never runs twice."""
    values: dict[str, str | None] = {}
    for name, limit in CALLBACK_PARAMS.items():
        value = params.get(name) or None
        if value is not None and (len(value) > limit or any(ord(ch) < 32 and ch not in "\r\n\t" for ch in value)):
            raise OAuthFailed(f"The '{name}' parameter of the sign-in answer is not valid.")
        values[name] = value
    state, error = values["state"], values["error"]
    pending = await OAuthStates(clients).take(state) if state else None
    if error:
        raise _declined(error, values["error_description"])
    # Anything else fails too (a refusal from Entra above is reported as such, whatever came with it).
    if any(name not in CALLBACK_PARAMS and name not in CALLBACK_IGNORED for name in params):
        raise OAuthFailed("The sign-in answer carries a parameter it should not. Start again from the authorize link.")
    if not state:
        raise OAuthFailed("The sign-in answer carries no state. Start again from the authorize link.")
    if pending is None:
        raise OAuthFailed("This sign-in answer is unknown or was already used. Start again from the authorize link.")
    now = now or datetime.now(UTC)
    if pending.expires_at <= now:
        raise OAuthFailed("This sign-in took longer than 10 minutes and expired. Start again from the authorize link.")
    code = values["code"]
    if not code:
        raise OAuthFailed("Entra ID sent no authorization code. Start again from the authorize link.")
    app = find_app(pending.app)
    if app is None:
        raise OAuthFailed("The sign-in was for an app this service no longer offers.")
    settings = clients.settings
    client = instance_client(settings, app)
    if client.client_id != pending.client_id:
        raise OAuthFailed("The service's OAuth application changed during the sign-in. Start again.")
    try:
        result = await redeem(
            clients,
            pending.tenant_id or DEFAULT_TENANT,
            {
                "grant_type": "authorization_code",
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "code": code,
                "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier,
                "scope": oauth_scopes(app, settings),
            },
        )
    except CredentialRejected as rejected:
        raise OAuthFailed(f"Entra ID did not accept the sign-in: {rejected.detail}",
                          extensions=rejected.extensions) from None
    if result.refresh_token is None:
        raise OAuthFailed("Entra ID returned no refresh token (was offline_access consented?). Nothing was saved.")
    tenant = result.tenant_id or pending.tenant_id
    if tenant is None:
        raise OAuthFailed("Entra ID did not say which tenant the user signed in to. Start again with a tenantId.")
    if pending.tenant_id is not None and tenant != pending.tenant_id:
        raise OAuthFailed("The user signed in to another tenant than the one asked for. Nothing was saved.")
    if pending.connection_id is not None:
        record = await _reauthorize(clients, app, pending, client, tenant, result.refresh_token, now)
        created = False
    else:
        record = await _create(clients, app, pending, client, tenant, result.refresh_token, now)
        created = True
    TOKEN_CACHE.put((record.app, record.id, app.scope(settings)), record.secret_version,
                    result.access_token, result.expires_on)
    log.info("%s %s OAuth connection %s", "Created" if created else "Re-authorized", app.id, record.id)
    return AuthorizationOutcome(app, record, created, result.username)


def _tags(record_id: str, app: AppSpec) -> dict[str, str]:
    return {"connectionId": record_id, "app": app.id, "method": Method.OAUTH.value}


async def _create(clients: AzureClients, app: AppSpec, pending: PendingAuthorization, client: InstanceClient,
                  tenant: str, refresh_token: str, now: datetime) -> ConnectionRecord:
    assert pending.name is not None
    vault = SecretVault(clients)
    connection_id = str(uuid.uuid4())
    secret_name = secret_name_for(connection_id)
    version = await vault.put(secret_name, {"refreshToken": refresh_token}, _tags(connection_id, app))
    record = ConnectionRecord(
        app=app.id,
        id=connection_id,
        name=pending.name,
        description=pending.description,
        method=Method.OAUTH.value,
        tenant_id=tenant,
        client_id=client.client_id,
        created_at=now,
        updated_at=now,
        secret_name=secret_name,
        secret_version=version,
        last_validated_at=now,
    )
    try:
        return await ConnectionsTable(clients).insert(record)
    except Conflict as conflict:
        await vault.delete(secret_name)
        raise OAuthFailed(f"{conflict.detail} Nothing was saved; start again with another name.") from None
    except BaseException:
        await vault.delete(secret_name)
        raise


async def _reauthorize(clients: AzureClients, app: AppSpec, pending: PendingAuthorization, client: InstanceClient,
                       tenant: str, refresh_token: str, now: datetime) -> ConnectionRecord:
    assert pending.connection_id is not None
    table = ConnectionsTable(clients)
    vault = SecretVault(clients)
    try:
        record = await table.get(app.id, pending.connection_id)
    except NotFound:
        raise OAuthFailed("The connection being re-authorized was deleted meanwhile. Nothing was saved.") from None
    version = await vault.put(record.secret_name, {"refreshToken": refresh_token}, _tags(record.id, app))
    failure: Conflict | None = None
    for _attempt in range(3):  # a concurrent validation or refresh changed the entity: apply ours on top
        changes: dict[str, Any] = {
            "tenant_id": tenant,
            "client_id": client.client_id,
            "secret_version": version,
            "status": STATUS_ACTIVE,
            "status_message": None,
            "last_validated_at": now,
            "updated_at": now,
            "version": record.version + 1,
        }
        renamed = pending.name is not None and pending.name != record.name
        if renamed:
            changes["name"] = pending.name
        if pending.description is not None:
            changes["description"] = pending.description
        try:
            return await table.update(record.evolve(**changes), previous_name=record.name if renamed else None)
        except Conflict as conflict:
            failure = conflict
            try:
                record = await table.get(app.id, record.id)
            except NotFound:
                break
    await vault.disable(record.secret_name, version)
    detail = failure.detail if failure is not None else "The connection changed meanwhile."
    raise OAuthFailed(f"{detail} Nothing was saved; start again.")


# -- access tokens ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cached:
    token: str = field(repr=False)
    expires_on: int
    secret_version: str


class TokenCache:
    """Access tokens per (app, connection, scope), good until ``margin`` seconds before they expire, and only
    for the refresh-token version they came from."""

    def __init__(self, margin: float = REFRESH_MARGIN_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.margin = margin
        self.clock = clock
        self._entries: dict[tuple[str, str, str], _Cached] = {}

    def get(self, key: tuple[str, str, str], secret_version: str) -> tuple[str, int] | None:
        entry = self._entries.get(key)
        if entry is None or entry.secret_version != secret_version:
            return None
        if entry.expires_on - self.margin <= self.clock():
            return None
        return entry.token, entry.expires_on

    def put(self, key: tuple[str, str, str], secret_version: str, token: str, expires_on: int) -> None:
        self._entries[key] = _Cached(token, expires_on, secret_version)

    def clear(self) -> None:
        self._entries.clear()


TOKEN_CACHE = TokenCache()
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, str], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _lock(key: tuple[str, str, str]) -> asyncio.Lock:
    """One refresh at a time per connection and scope in this event loop (a refresh token is used once)."""
    locks = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(key, asyncio.Lock())


def _access_token(token: str, expires_on: int) -> AccessToken:
    from azure.core.credentials import AccessToken

    return AccessToken(token, expires_on)


async def get_access_token(
    clients: AzureClients,
    app: AppSpec,
    record: ConnectionRecord,
    *,
    scope: str | None = None,
    force_refresh: bool = False,
    cache: TokenCache | None = None,
) -> tuple[ConnectionRecord, AccessToken]:
    """An access token of an OAuth connection (cached unless ``force_refresh``) and the connection as it is
    afterwards (its ``secret_version`` moves when Entra rotated the refresh token)."""
    cache = TOKEN_CACHE if cache is None else cache
    scope = scope or app.scope(clients.settings)
    key = (record.app, record.id, scope)
    if not force_refresh and (hit := cache.get(key, record.secret_version)) is not None:
        return record, _access_token(*hit)
    async with _lock(key):
        current = await ConnectionsTable(clients).get(record.app, record.id)  # the newest refresh token
        if not force_refresh and (hit := cache.get(key, current.secret_version)) is not None:
            return current, _access_token(*hit)
        current, result = await _refresh(clients, app, current, scope)
        cache.put(key, current.secret_version, result.access_token, result.expires_on)
        return current, _access_token(result.access_token, result.expires_on)


async def _refresh(
    clients: AzureClients, app: AppSpec, record: ConnectionRecord, scope: str
) -> tuple[ConnectionRecord, TokenResult]:
    client = instance_client(clients.settings, app)
    vault = SecretVault(clients)
    table = ConnectionsTable(clients)
    for attempt in (1, 2):
        material = await vault.get(record.secret_name, record.secret_version)
        refresh_token = material.get("refreshToken")
        if not refresh_token:
            raise UpstreamError("The connection's secret in Key Vault holds no refresh token.")
        try:
            result = await redeem(
                clients,
                record.tenant_id,
                {
                    "grant_type": "refresh_token",
                    "client_id": client.client_id,
                    "client_secret": client.client_secret,
                    "refresh_token": refresh_token,
                    "scope": f"offline_access {scope}",
                },
            )
        except CredentialRejected as rejected:
            if rejected.extensions.get("entraError") not in REAUTHORIZE_ERRORS:
                raise
            if attempt == 1:  # another instance may have used and rotated it a moment ago
                fresh = await table.get(record.app, record.id)
                if fresh.secret_version != record.secret_version:
                    record = fresh
                    continue
            raise ReauthorizationRequired(rejected.detail, extensions=rejected.extensions) from None
        break
    if result.refresh_token is not None and result.refresh_token != refresh_token:
        record = await _store_rotated(clients, app, record, result.refresh_token)
    return record, result


async def _store_rotated(
    clients: AzureClients, app: AppSpec, record: ConnectionRecord, refresh_token: str
) -> ConnectionRecord:
    """Keep the refresh token Entra rotated to: the old one may no longer work, so this must not be lost."""
    vault = SecretVault(clients)
    table = ConnectionsTable(clients)
    version = await vault.put(record.secret_name, {"refreshToken": refresh_token}, _tags(record.id, app))
    used = record.secret_version
    current = record
    for _attempt in range(5):
        try:
            return await table.update(current.evolve(secret_version=version))
        except Conflict:
            current = await table.get(record.app, record.id)
            if current.secret_version != used:  # re-authorized (or refreshed elsewhere) meanwhile: theirs is newer
                await vault.disable(record.secret_name, version)
                return current
    raise Conflict(f"The connection '{record.id}' keeps changing; its refresh token could not be saved.")


# -- validation ------------------------------------------------------------------------------------------
async def _record_status(clients: AzureClients, record: ConnectionRecord, status: str, message: str | None,
                         now: datetime) -> ConnectionRecord:
    table = ConnectionsTable(clients)
    for _attempt in range(2):
        updated = record.evolve(status=status, status_message=message, last_validated_at=now)
        try:
            return await table.update(updated)
        except Conflict:
            record = await table.get(record.app, record.id)
    log.info("Connection %s kept changing during validation; its status is left as is", record.id)
    return record.evolve(status=status, status_message=message, last_validated_at=now)


async def validate_oauth_connection(
    clients: AzureClients, app: AppSpec, record: ConnectionRecord, now: Callable[[], datetime]
) -> ConnectionRecord:
    """Refresh a token now (never from the cache) and record the outcome as the connection's status."""
    try:
        record, _token = await get_access_token(clients, app, record, force_refresh=True)
    except ReauthorizationRequired as error:
        error.extensions["connectionStatus"] = STATUS_REAUTHORIZATION_REQUIRED
        hint = f" Authorize it again: GET /api/v1/app-connections/{app.id}/oauth/authorize?connectionId={record.id}"
        await _record_status(clients, record, STATUS_REAUTHORIZATION_REQUIRED, error.detail + hint, now())
        raise
    except CredentialRejected as error:
        await _record_status(clients, record, STATUS_INVALID, error.detail, now())
        raise
    return await _record_status(clients, record, STATUS_ACTIVE, None, now())


class OAuthCredential:
    """An ``AsyncTokenCredential`` over an OAuth connection (cached tokens, rotated refresh tokens kept)."""

    def __init__(self, clients: AzureClients, record: ConnectionRecord) -> None:
        self._clients = clients
        self._app = require_app(record.app)
        self.record = record

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.record, token = await get_access_token(
            self._clients, self._app, self.record, scope=scopes[0] if scopes else None
        )
        return token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> OAuthCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None
