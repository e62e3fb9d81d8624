"""OAuth connections: the authorization-code flow against the instance's own app registration, per app.

- :meth:`OAuthFlow.start` validates the request, stores a single-use state (ten minutes, bound to the app, the
  instance client and the requested connection fields) with a PKCE S256 verifier, and returns the authorize URL
  of ``{authority}/{tenant or organizations}/oauth2/v2.0/authorize``.
- :meth:`OAuthFlow.complete` (the anonymous callback) consumes the state atomically, redeems the code with the
  client secret and the verifier, and hands the refresh token to the connection lifecycle: a new connection
  (method ``oauth``) or a new current version of the one being re-authorized. Every failure is an
  :class:`OAuthFailed`.

Access tokens, refresh and rotated refresh tokens are ``shared.oauth_tokens``. Tokens never reach a log, a table
or a response: only the vault holds the refresh token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.apps import AppSpec, find_app
from shared.audit import AuditLog, acting, current
from shared.connections import ConnectionService
from shared.errors import (
    ConcurrentChange,
    CredentialRejected,
    NameTaken,
    NotFound,
    ServiceError,
    entra_said,
)
from shared.models import Description, Guid, Name
from shared.oauth_callback import CALLBACK_IGNORED as CALLBACK_IGNORED  # the callback's names are the flow's too
from shared.oauth_callback import CALLBACK_PARAMS as CALLBACK_PARAMS
from shared.oauth_callback import OAuthFailed as OAuthFailed
from shared.oauth_callback import callback_values, no_pending_sign_in, unexpected_parameter
from shared.oauth_start import DEFAULT_TENANT, OAuthStart, held_by, oauth_scopes
from shared.oauth_tokens import instance_client
from shared.ports import Adapters, TokenResult
from shared.records import Actor, Authorization, ConnectionRecord, PendingAuthorization

log = logging.getLogger(__name__)


# -- start (shared.oauth_start) ------------------------------------------------------------------------
# The authorize route's query: its schema in the OpenAPI document; shared.oauth_start checks a query by the same
# rules (shared.fields), to the same field errors.
class AuthorizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name | None = None
    description: Description | None = None
    tenantId: Guid | None = None
    connectionId: Guid | None = None
    allowDifferentUser: Literal["true", "false"] | None = None


@dataclass(frozen=True)
class AuthorizationOutcome:
    app: AppSpec
    record: ConnectionRecord
    created: bool
    username: str | None  # who signed in
    started_by: Actor | None  # who started the sign-in


def _declined(error: str, description: str | None) -> OAuthFailed:
    return OAuthFailed(f"Entra ID did not grant access ({entra_said(error, description)}).",
                       extensions={"entraError": entra_said(error, None)})


class OAuthFlow:
    def __init__(self, adapters: Adapters, connections: ConnectionService) -> None:
        self.adapters = adapters
        self.connections = connections

    async def start(self, app_id: str, params: Mapping[str, str], browser_binding: str | None = None) -> str:
        """Validate the request, store its state and return the URL to send the user's browser to
        (``shared.oauth_start``, over this flow's adapters)."""
        adapters = self.adapters
        return await OAuthStart(adapters.settings, adapters.connections, adapters.oauth_states,
                                adapters.clock).start(app_id, params, browser_binding)

    async def complete(self, params: Mapping[str, str], cookies: Mapping[str, str] | None = None,
                       ) -> AuthorizationOutcome:
        """Finish the flow the callback received: only ``code``, ``state``, ``error`` and ``error_description``
        are read, and the browser's ``cookies`` (name to value) for a sign-in bound to the browser that started
        it. The state is consumed whatever happens next, so a callback never runs twice."""
        values = callback_values(params)
        state = values["state"]
        pending = await self.adapters.oauth_states.take(state) if state else None
        if pending is None:  # not an answer to a sign-in of ours (an error's text is not shown then)
            raise no_pending_sign_in(values, params)
        # From here the sign-in is used up: whatever ends it is audited, as the person who started it (from the
        # browser that brought the answer back).
        started_by = pending.started_by or Actor("unknown", "unknown", "user")
        action = "connection.create" if pending.connection_id is None else "connection.reauthorize"
        audit = AuditLog(self.adapters.audit, self.adapters.clock)
        with acting(replace(current(), actor=started_by)):
            try:
                return await self._redeem(pending, values, params, cookies or {}, audit, action)
            except DifferentUser as refused:
                await audit.record(action, "refused", app=pending.app, connection_id=pending.connection_id,
                                   connection_name=pending.name, detail=refused.audit_detail)
                raise OAuthFailed(refused.detail) from None
            except Exception as failed:
                detail = failed.detail if isinstance(failed, ServiceError) else "the service failed"
                await audit.record(action, "failed", app=pending.app, connection_id=pending.connection_id,
                                   connection_name=pending.name, detail=f"OAuth sign-in not completed: {detail}")
                raise

    async def _redeem(self, pending: PendingAuthorization, values: Mapping[str, str | None],
                      params: Mapping[str, str], cookies: Mapping[str, str], audit: AuditLog, action: str,
                      ) -> AuthorizationOutcome:
        """Redeem the answer of the pending sign-in ``pending`` and save the connection."""
        if pending.browser_binding is not None and not held_by(pending.browser_binding, cookies):
            # Started in a browser (the console): a sign-in's URL opened in another one (sent to someone, say)
            # would bind their grant to a connection the starter chose. Nothing is redeemed.
            raise OAuthFailed("This sign-in was started in another browser. Start it again from the App "
                              "Connections page in the browser you sign in with. Nothing was saved.")
        error = values["error"]
        if error:
            raise _declined(error, values["error_description"])
        # Anything else fails too (a refusal from Entra above is reported as such, whatever came with it).
        unexpected = unexpected_parameter(params)
        if unexpected is not None:
            raise unexpected
        if pending.expires_at <= self.adapters.clock():
            raise OAuthFailed(
                "This sign-in took longer than 10 minutes and expired. Start again from the authorize link.")
        code = values["code"]
        if not code:
            raise OAuthFailed("Entra ID sent no authorization code. Start again from the authorize link.")
        app = find_app(pending.app)
        if app is None:
            raise OAuthFailed("The sign-in was for an app this service no longer offers.")
        settings = self.adapters.settings
        client = instance_client(settings, app)
        if client.client_id != pending.client_id:
            raise OAuthFailed("The service's OAuth application changed during the sign-in. Start again.")
        try:
            result = await self.adapters.tokens.redeem(
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
            raise OAuthFailed(
                "Entra ID returned no refresh token (was offline_access consented?). Nothing was saved.")
        tenant = result.tenant_id or pending.tenant_id
        if tenant is None:
            raise OAuthFailed(
                "Entra ID did not say which tenant the user signed in to. Start again with a tenantId.")
        if pending.tenant_id is not None and tenant != pending.tenant_id:
            raise OAuthFailed("The user signed in to another tenant than the one asked for. Nothing was saved.")
        consent = authorization_of(result, tenant)
        return await self._save(app, pending, client.client_id, tenant, result, consent, audit, action)

    async def _save(self, app: AppSpec, pending: PendingAuthorization, client_id: str, tenant: str,
                    result: TokenResult, consent: Authorization | None, audit: AuditLog, action: str,
                    ) -> AuthorizationOutcome:
        """Create or re-authorize the connection as the person who started the sign-in (audited before)."""
        assert result.refresh_token is not None
        created = pending.connection_id is None
        signed_in = consent.upn or consent.oid if consent else "an unknown user"
        await audit.record(action, "started", app=app.id, connection_id=pending.connection_id,
                           connection_name=pending.name, detail=f"OAuth sign-in by {signed_in}")

        replaced: list[str] = []  # what a re-authorization changes, for its audit record

        def same_person(record: ConnectionRecord) -> None:
            replaced.clear()  # (a retry of the write calls it again, on the connection as it is then)
            before = record.authorized_by
            if before is not None and (consent is None or before.oid != consent.oid):
                replaced.append(f"replaces the authorization of {before.upn or before.oid}")
            if record.tenant_id.lower() != tenant.lower():
                replaced.append(f"moves it from tenant {record.tenant_id} to {tenant}")
            if pending.allow_different_user:
                return
            refused = f"OAuth sign-in by {signed_in}: another person than the one who consented"
            if before is None:
                # Nobody recorded (an older connection, or a sign-in that named nobody). From the browser that
                # started it (the console), and signed in as the person who asked to re-authorize it, it is theirs;
                # otherwise it cannot be shown to be anyone in particular: fail closed.
                if pending.browser_binding is None or consent is None or not _is_starter(pending, consent):
                    raise DifferentUser(
                        "Nobody is recorded as having authorized this connection, so this sign-in cannot be shown to "
                        "be theirs. To authorize it as you, start again with allowDifferentUser=true. Nothing was "
                        "saved.", audit_detail=refused)
                return
            if consent is None:  # who signed in is not known: it cannot be shown to be the same person (fail closed)
                raise DifferentUser(
                    f"Entra ID did not say who signed in, so it cannot be checked against who authorized this "
                    f"connection ({before.upn or before.oid}). To replace their authorization, start again with "
                    "allowDifferentUser=true. Nothing was saved.", audit_detail=refused)
            if before.oid == consent.oid:
                return
            raise DifferentUser(
                f"You signed in as {signed_in}, but this connection was authorized by {before.upn or before.oid}. "
                "To replace their authorization with yours, start again with allowDifferentUser=true. Nothing was "
                "saved.", audit_detail=refused)

        try:
            if pending.connection_id is not None:
                record = await self.connections.reauthorize(app, pending.connection_id, tenant, client_id,
                                                            result.refresh_token, pending.name, pending.description,
                                                            consent, same_person)
            else:
                assert pending.name is not None
                record = await self.connections.create_oauth(app, pending.name, pending.description, tenant,
                                                             client_id, result.refresh_token, consent)
        except DifferentUser:
            raise  # audited as refused by complete()
        except NotFound:
            raise OAuthFailed("The connection being re-authorized was deleted meanwhile. Nothing was saved.") from None
        except (NameTaken, ConcurrentChange) as conflict:
            raise OAuthFailed(f"{conflict.detail} Nothing was saved; start again.") from None
        except ServiceError as refused:
            if refused.status >= 500:
                raise
            raise OAuthFailed(f"{refused.detail} Nothing was saved; start again.") from None
        self.connections.oauth_tokens.remember(record, app, result)
        previous = "" if created or pending.allow_different_user is False else " (allowDifferentUser)"
        changes = "".join(f"; {change}" for change in replaced)
        await audit.record(action, "succeeded", app=app.id, connection_id=record.id, connection_name=record.name,
                           detail=f"OAuth sign-in by {signed_in}{previous}{changes}")
        log.info("%s %s OAuth connection %s", "Created" if created else "Re-authorized", app.id, record.id)
        return AuthorizationOutcome(app, record, created, result.username, pending.started_by)


def _is_starter(pending: PendingAuthorization, consent: Authorization) -> bool:
    """Whether who signed in is who started the sign-in: the same object id (the same tenant), or, signed in to
    another tenant (a guest there: another object id), the same user name."""
    starter = pending.started_by
    if starter is None:
        return False
    if consent.oid == starter.id:
        return True
    return bool(consent.upn and starter.name and consent.upn.casefold() == starter.name.casefold())


class DifferentUser(ServiceError):
    status = 400
    slug = "oauth-different-user"
    title = "Another person consented to this connection"

    def __init__(self, detail: str, *, audit_detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.audit_detail = audit_detail or detail  # what the audit record says (who signed in), not to them


def authorization_of(result: TokenResult, tenant: str) -> Authorization | None:
    """Who consented: the sign-in's ID token names them (with the profile scope), else its access token does (a
    user's access token carries ``oid`` and ``upn``); None when neither says."""
    from shared.azure.entra import jwt_claims

    oid = result.claims.get("oid")
    username = result.username
    if not oid:
        access = jwt_claims(result.access_token)
        oid = access.get("oid")
        username = username or access.get("upn") or access.get("preferred_username")
    if not oid:
        return None
    return Authorization(str(oid), str(username) if username else None, tenant)


