"""Starting an OAuth sign-in: the authorize route's whole work (``OAuthFlow.start`` is this).

The route checks its query, checks the connection's name is free (or that the connection to re-authorize is an
OAuth one), stores a pending authorization under a fresh single-use state and answers the authority's authorize
URL (PKCE, S256). It is the first thing a person's click on "Connect" reaches, often on a cold instance, so this
module needs nothing a write of connections needs: not pydantic (the query is checked with the field rules of
``shared.fields``, as ``AuthorizeIn`` of ``shared.oauth`` checks it, to the same field errors: a test holds the
two to it), not the connection service, not the SDKs. Its reads and writes go through the ports it is given: a
connection's reads and the OAuth states (``shared.wiring.oauth_start`` hands in the lean Table Storage ones).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import fields
from shared.apps import AppSpec, Method
from shared.audit import acting_actor
from shared.errors import FieldError, InvalidRequest, NotFound, shown
from shared.oauth_tokens import instance_client
from shared.records import PendingAuthorization
from shared.store.oauth_states import new_state
from shared.views import ensure_name_free, require_app

if TYPE_CHECKING:
    from shared.ports import ConnectionReads, OAuthStateStore
    from shared.settings import Settings

log = logging.getLogger(__name__)

STATE_LIFETIME = timedelta(minutes=10)
DEFAULT_TENANT = "organizations"


# -- PKCE and the authorize URL -------------------------------------------------------------------------
def new_verifier() -> str:
    """A PKCE code verifier (RFC 7636): 86 characters of the unreserved URL-safe alphabet."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """The S256 challenge of a verifier: BASE64URL(SHA256(ASCII(verifier))), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def oauth_scopes(app: AppSpec, settings: Settings) -> str:
    # profile: the ID token names who signed in (oid, preferred_username) only with it (Entra's ID token claims
    # reference), and the connection records that person and refuses another's re-authorization by it.
    return f"openid profile offline_access {app.oauth_scope(settings)}"


def authorize_url(
    settings: Settings, app: AppSpec, client_id: str, tenant: str | None, state: str, challenge: str,
    choose_account: bool = False,
) -> str:
    """``choose_account``: Entra shows its account picker (``prompt=select_account``) however the browser is signed
    in: a sign-in not bound to the browser that started it (an API client hands its URL to someone) is never
    completed by a single click on a link, with whatever account that browser holds (RFC 9700 §4.7.1)."""
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
            **({"prompt": "select_account"} if choose_account else {}),
        },
        quote_via=urllib.parse.quote,
    )
    return f"{settings.authority_host}/{tenant or DEFAULT_TENANT}/oauth2/v2.0/authorize?{query}"


# -- the query ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuthorizeQuery:
    """The authorize route's query, checked (``AuthorizeIn`` of ``shared.oauth`` is its schema)."""

    name: str | None = None
    description: str | None = None
    tenantId: str | None = None
    connectionId: str | None = None
    allowDifferentUser: str | None = None


def _description(value: str) -> str:
    if len(value) > fields.DESCRIPTION_MAX:
        raise ValueError(f"is too long (limit {fields.DESCRIPTION_MAX} characters)")
    return fields.no_controls(value)


def _true_or_false(value: str) -> str:
    if value not in ("true", "false"):
        raise ValueError("Input should be 'true' or 'false'")
    return value


# Each field of the query and its rule, in AuthorizeIn's order (the order its errors are listed in).
QUERY_FIELDS: dict[str, Callable[[str], str]] = {
    "name": fields.name,
    "description": _description,
    "tenantId": fields.guid,
    "connectionId": fields.guid,
    "allowDifferentUser": _true_or_false,
}


def parse_authorize_query(query: Mapping[str, str]) -> AuthorizeQuery:
    """The query checked field by field, every error at once (each field's, then each unknown name's), as
    ``parse_model(AuthorizeIn, query)`` reports them; a 400 with field errors that never echo a value."""
    values: dict[str, str] = {}
    errors: list[FieldError] = []
    for key, rule in QUERY_FIELDS.items():
        if key in query:
            try:
                values[key] = rule(query[key])
            except ValueError as error:
                errors.append(FieldError(f"/{fields.pointer_part(key)}", str(error)))
    errors += [FieldError(f"/{fields.pointer_part(key)}", "is not a known field")
               for key in query if key not in QUERY_FIELDS]
    if errors:
        raise InvalidRequest("Some fields are not valid.", errors=errors)
    return AuthorizeQuery(**values)


# -- the starting browser ---------------------------------------------------------------------------------
BINDING_COOKIE_PREFIX = "__Host-appconn-oauth-"  # + a tag of the value: one cookie per sign-in, so tabs coexist


def new_browser_binding() -> tuple[str, str]:
    """A new binding: the cookie's name and its value (random, 256 bits)."""
    value = secrets.token_urlsafe(32)
    return BINDING_COOKIE_PREFIX + binding_hash(value)[:12], value


def binding_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def held_by(binding: str, cookies: Mapping[str, str]) -> bool:
    """Whether ``cookies`` (name to value) hold the value whose hash is ``binding``."""
    return any(name.startswith(BINDING_COOKIE_PREFIX) and hmac.compare_digest(binding_hash(value), binding)
               for name, value in cookies.items())


# -- start ----------------------------------------------------------------------------------------------
class OAuthStart:
    """Starts sign-ins: ``settings``, a connection's reads, the OAuth states and the clock are handed in."""

    def __init__(self, settings: Settings, connections: ConnectionReads, states: OAuthStateStore,
                 clock: Callable[[], datetime]) -> None:
        self._settings = settings
        self._connections = connections
        self._states = states
        self._clock = clock

    async def start(self, app_id: str, params: Mapping[str, str], browser_binding: str | None = None) -> str:
        """Validate the request, store its state and return the URL to send the user's browser to.
        ``browser_binding``: the value of the cookie the starting browser gets (:func:`new_browser_binding`); the
        answer is then taken only from the browser that holds it (RFC 9700 §4.7.1)."""
        app = require_app(app_id)
        settings = self._settings
        client = instance_client(settings, app)
        # ``code`` is the function key when it travels in the query; empty fields count as absent.
        request = parse_authorize_query({key: value for key, value in params.items()
                                         if key != "code" and value != ""})
        tenant = request.tenantId
        if request.connectionId is not None:
            try:
                record = await self._connections.get(app.id, request.connectionId)
            except NotFound:
                raise NotFound(
                    f"No {app.id} connection has the id '{shown(request.connectionId)}'.",
                    errors=[FieldError("/connectionId", "is not a connection of this app")],
                ) from None
            if record.method != Method.OAUTH:
                raise InvalidRequest(
                    "Only OAuth connections are authorized by signing in.",
                    errors=[FieldError("/connectionId", f"must be an oauth connection, not {record.method}")],
                )
            tenant = tenant or record.tenant_id
            if request.name is not None and request.name.lower() != record.name.lower():
                await ensure_name_free(self._connections, app.id, request.name)
        else:
            if request.name is None:
                raise InvalidRequest(
                    "A new connection needs a name.",
                    errors=[FieldError("/name", "is required (or give connectionId to re-authorize a connection)")],
                )
            await ensure_name_free(self._connections, app.id, request.name)
        now = self._clock()
        verifier = new_verifier()
        pending = PendingAuthorization(
            app=app.id, client_id=client.client_id, redirect_uri=settings.oauth_redirect_uri, verifier=verifier,
            created_at=now, expires_at=now + STATE_LIFETIME, name=request.name, description=request.description,
            tenant_id=tenant,  # for a re-authorization without tenantId: the connection's own
            connection_id=request.connectionId, started_by=acting_actor(),
            allow_different_user=request.allowDifferentUser == "true",
            browser_binding=binding_hash(browser_binding) if browser_binding else None,
        )
        state = new_state(pending.expires_at)
        await self._states.put(state, pending)
        try:
            await self._states.purge_expired(now)
        except Exception as error:  # best effort: abandoned states are harmless until the next purge
            log.info("Could not purge expired OAuth states (%s)", type(error).__name__)
        return authorize_url(settings, app, client.client_id, tenant, state, code_challenge(verifier),
                             choose_account=browser_binding is None)

