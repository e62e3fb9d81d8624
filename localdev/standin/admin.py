"""A typed client for the stand-in's admin interface (``/_admin/``), over HTTPS trusting the stand-in's CA.

It covers the directory (tenants, apps, roles, secrets, certificates, owners), Microsoft Graph (password
history, propagation delay, call counts), OAuth (redirect URIs, test users, sign-in, consent, refresh token
revocation, issued tokens), APIs (app registrations with app roles, and role assignments to users and client
applications), webhook receivers (deliveries received, failures to answer), inspection (request log, vault
contents, stats) and control (reset, fault rules, latency). Errors raise :class:`AdminError` with the status.

It keeps one keep-alive connection (reopened when needed); its connections start with an admin request, so
they are not counted in ``connections_opened``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AdminClient:
    def __init__(self, url: str, ca_path: str | Path, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"the stand-in URL must be https://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=str(ca_path))
        self._lock = threading.Lock()
        self._conn: http.client.HTTPSConnection | None = None

    # --- transport -----------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        target = "/_admin" + path + ("?" + urllib.parse.urlencode(query) if query else "")
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = http.client.HTTPSConnection(
                        self._host, self._port, timeout=self._timeout, context=self._ssl
                    )
                try:
                    self._conn.request(method, target, body=payload, headers=headers)
                    response = self._conn.getresponse()
                    raw = response.read()
                    break
                except (ConnectionError, http.client.HTTPException, ssl.SSLError):
                    self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        data = json.loads(raw) if raw else None
        if response.status >= 400:
            message = data.get("error") if isinstance(data, dict) else raw.decode("utf-8", "replace")
            raise AdminError(response.status, str(message))
        return data

    def _dict(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._call(method, path, body, query))

    # --- directory -----------------------------------------------------------------------------------

    def add_tenant(self, tenant_id: str | None = None, display_name: str | None = None) -> str:
        return str(self._dict("POST", "/tenants", {"tenantId": tenant_id, "displayName": display_name})["tenantId"])

    def tenants(self) -> dict[str, Any]:
        return self._dict("GET", "/tenants")

    def add_app(
        self, tenant_id: str, display_name: str = "app", app_id: str | None = None, roles: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Returns ``appId`` (client id), ``id`` (application object id), ``servicePrincipalId``, ..."""
        body = {"displayName": display_name, "appId": app_id, "roles": list(roles)}
        return self._dict("POST", f"/tenants/{tenant_id}/apps", body)

    def get_app(self, tenant_id: str, app_id: str) -> dict[str, Any]:
        """The app with its ``roles``, ``passwordCredentials`` (no secret text) and ``keyCredentials``."""
        return self._dict("GET", f"/tenants/{tenant_id}/apps/{app_id}")

    def grant_roles(self, tenant_id: str, app_id: str, roles: Iterable[str]) -> dict[str, Any]:
        return self._dict("POST", f"/tenants/{tenant_id}/apps/{app_id}/roles", {"roles": list(roles)})

    def revoke_roles(self, tenant_id: str, app_id: str, roles: Iterable[str]) -> dict[str, Any]:
        return self._dict("DELETE", f"/tenants/{tenant_id}/apps/{app_id}/roles", {"roles": list(roles)})

    def add_secret(
        self,
        tenant_id: str,
        app_id: str,
        display_name: str | None = None,
        expires_at: dt.datetime | None = None,
        secret_text: str | None = None,
        starts_at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Returns ``secretText``, ``keyId``, ``hint``, ``displayName``, ``startDateTime``, ``endDateTime``."""
        body = {
            "displayName": display_name,
            "endDateTime": _iso(expires_at) if expires_at else None,
            "startDateTime": _iso(starts_at) if starts_at else None,
            "secretText": secret_text,
        }
        return self._dict("POST", f"/tenants/{tenant_id}/apps/{app_id}/secrets", body)

    def remove_secret(self, tenant_id: str, app_id: str, key_id: str) -> None:
        self._call("DELETE", f"/tenants/{tenant_id}/apps/{app_id}/secrets/{key_id}")

    def add_certificate(
        self, tenant_id: str, app_id: str, certificate_pem: str, display_name: str | None = None
    ) -> dict[str, Any]:
        """Returns ``keyId``, ``thumbprint`` (SHA-1 hex), ``thumbprintSha256``, ``x5t``, ``x5tS256``, dates."""
        body = {"certificate": certificate_pem, "displayName": display_name}
        return self._dict("POST", f"/tenants/{tenant_id}/apps/{app_id}/certificates", body)

    def remove_certificate(self, tenant_id: str, app_id: str, key_id: str) -> None:
        self._call("DELETE", f"/tenants/{tenant_id}/apps/{app_id}/certificates/{key_id}")

    def set_vault_tenant(self, tenant_id: str) -> None:
        self._call("PUT", "/vault/tenant", {"tenantId": tenant_id})

    # --- Microsoft Graph -----------------------------------------------------------------------------

    def add_owner(self, tenant_id: str, app_id: str, owner: str) -> dict[str, Any]:
        """Make ``owner`` (an appId or a service principal id in the tenant; the app itself for a self-owned app)
        an owner of ``app_id``'s registration, as Application.ReadWrite.OwnedBy needs. Returns the app."""
        return self._dict("POST", f"/tenants/{tenant_id}/apps/{app_id}/owners", {"owner": owner})

    def app_passwords(self, tenant_id: str, app_id: str) -> list[dict[str, Any]]:
        """Password credentials, current then removed: ``keyId``, ``hint``, ``displayName``, ``startDateTime``,
        ``endDateTime``, ``createdBy`` ("admin" | "graph"), ``createdByAppId``, ``createdAt``, ``revoked``,
        ``revokedAt``, ``revokedBy``, ``readyAt`` (when a secret added during a propagation delay works). Never
        the secret text."""
        data = self._dict("GET", f"/tenants/{tenant_id}/apps/{app_id}/passwords")
        return cast(list[dict[str, Any]], data["passwords"])

    def set_propagation_delay(self, seconds: float) -> None:
        """Secrets added through Graph's addPassword are refused by the token endpoint (AADSTS7000215) until this
        many seconds after their creation. 0 (the default) turns it off."""
        self._call("PUT", "/graph/propagation-delay", {"seconds": seconds})

    def graph_calls(self) -> dict[str, Any]:
        """``{"counts": {"get", "list", "addPassword", "removePassword"}, "log": [{operation, appId, objectId,
        keyId, callerAppId, time, status, error}]}`` (log: addPassword and removePassword only). Requests answered
        by a fault rule never reach Graph and are not counted. For Graph's concurrency error as a fault, see
        ``localdev.standin.graph.concurrency_fault``."""
        return self._dict("GET", "/graph/calls")

    # --- OAuth (authorization code, refresh tokens) -------------------------------------------------

    def add_redirect_uri(self, tenant_id: str, app_id: str, uri: str) -> list[str]:
        """Register a redirect URI on the app (the authorize endpoint accepts only registered ones)."""
        data = self._dict("POST", f"/tenants/{tenant_id}/apps/{app_id}/redirect-uris", {"uri": uri})
        return cast(list[str], data["redirectUris"])

    def add_user(self, tenant_id: str, user_principal_name: str | None = None,
                 display_name: str | None = None) -> dict[str, Any]:
        """A test user of the tenant: ``id`` (object id), ``userPrincipalName``, ``displayName``, ``tenantId``.
        The authorize endpoint signs it in when asked with ``login_hint=<userPrincipalName>`` (or after
        :meth:`set_sign_in`); :meth:`assign_role` gives it an API's app roles."""
        body = {"userPrincipalName": user_principal_name, "displayName": display_name}
        return self._dict("POST", f"/tenants/{tenant_id}/users", body)

    def set_sign_in(self, tenant_id: str | None = None, user_id: str | None = None) -> None:
        """Who signs in at ``/organizations`` or ``/common`` (default: the app's home tenant), and which user
        (default: the tenant's first user, created on first use)."""
        self._call("PUT", "/oauth/sign-in", {"tenantId": tenant_id, "userId": user_id})

    def set_consent(self, decline: bool) -> None:
        """``decline=True``: the user declines consent (redirect with ``error=access_denied``, AADSTS65004)."""
        self._call("PUT", "/oauth/consent", {"decline": decline})

    def set_account_picker(self, enabled: bool) -> None:
        """``enabled=True``: an authorize request without ``login_hint`` answers a page with a link per user of the
        tenant ("Sign in as <name>"), as Entra's account picker; the person chooses who signs in."""
        self._call("PUT", "/oauth/account-picker", {"enabled": enabled})

    def revoke_refresh_tokens(self, tenant_id: str, user_id: str | None = None) -> int:
        """Revoke the tenant's (or one user's) refresh tokens: they then fail with AADSTS50173. Returns how many."""
        return int(self._dict("POST", "/oauth/revoke", {"tenantId": tenant_id, "userId": user_id})["revoked"])

    def oauth_tokens(self) -> dict[str, Any]:
        """``{"issued": [every access, id and refresh token value issued], "refreshTokens": [{value, tenantId,
        clientId, userId, issued, status: active|redeemed|revoked|expired}], "users": [...]}``."""
        return self._dict("GET", "/oauth/tokens")

    # --- APIs: app roles and their assignments ------------------------------------------------------

    def add_api(
        self, tenant_id: str, display_name: str = "api", roles: Iterable[str] = (), app_id: str | None = None
    ) -> dict[str, Any]:
        """Register an app exposing an API with these app roles. Returns ``appId``, ``identifierUri``
        (``api://{appId}``), ``appRoles``, ``id``, ``servicePrincipalId``, ``displayName``, ``tenantId``.
        Tokens for it: scope ``api://{appId}/.default`` (or ``{appId}/.default``); their ``aud`` is the appId."""
        body = {"displayName": display_name, "roles": list(roles), "appId": app_id}
        return self._dict("POST", f"/tenants/{tenant_id}/apis", body)

    def get_api(self, tenant_id: str, api_app_id: str) -> dict[str, Any]:
        """The API as :meth:`add_api` returns it, with ``assignments``: ``[{principalId, role}]``."""
        return self._dict("GET", f"/tenants/{tenant_id}/apis/{api_app_id}")

    def assign_role(self, tenant_id: str, api_app_id: str, principal_id: str, role: str) -> dict[str, Any]:
        """Assign the API's app role ``role`` to a principal: a user (its ``id`` or userPrincipalName) or a client
        application (its appId or ``servicePrincipalId``). Idempotent. Returns ``principalId`` (the user's id or
        the service principal id: the ``oid`` of its tokens), ``principalType`` ("User" | "ServicePrincipal"),
        ``role``, ``resourceId``, ``resourceAppId``. A role the API does not define is a 400."""
        body = {"principalId": principal_id, "role": role}
        return self._dict("POST", f"/tenants/{tenant_id}/apis/{api_app_id}/assignments", body)

    def unassign_role(self, tenant_id: str, api_app_id: str, principal_id: str, role: str) -> None:
        """Remove an assignment made with :meth:`assign_role` (404 when the principal does not hold the role).
        Tokens issued before keep their ``roles`` until they expire, as in Entra."""
        body = {"principalId": principal_id, "role": role}
        self._call("DELETE", f"/tenants/{tenant_id}/apis/{api_app_id}/assignments", body)

    # --- federation: managed identities and federated identity credentials -------------------------

    def add_managed_identity(
        self,
        tenant_id: str,
        display_name: str = "identity",
        client_id: str | None = None,
        principal_id: str | None = None,
    ) -> dict[str, Any]:
        """Register a user-assigned managed identity for the managed-identity endpoint. Returns ``clientId``,
        ``principalId`` (the ``sub``/``oid`` of its tokens), ``tenantId``, ``displayName``, ``resourceId``."""
        body = {"tenantId": tenant_id, "displayName": display_name, "clientId": client_id, "principalId": principal_id}
        return self._dict("POST", "/managed-identities", body)

    def managed_identities(self) -> list[dict[str, Any]]:
        return list(self._dict("GET", "/managed-identities")["identities"])

    def identity_endpoint(self) -> dict[str, str]:
        """``{"endpoint", "header"}``: the values of ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` for a process
        whose ``ManagedIdentityCredential(client_id=...)`` should get tokens from the stand-in."""
        data = self._dict("GET", "/managed-identities/endpoint")
        return {"endpoint": str(data["endpoint"]), "header": str(data["header"])}

    def issuer(self, tenant_id: str) -> str:
        """The issuer of the stand-in's tokens for a tenant (``{url}/{tenant}/v2.0``): a managed identity's
        federated credential has this issuer, its principal id as subject, ``api://AzureADTokenExchange``."""
        return f"{self.url}/{tenant_id}/v2.0"

    def add_federated_credential(
        self,
        tenant_id: str,
        app_id: str,
        name: str,
        issuer: str,
        subject: str,
        audiences: Iterable[str] = ("api://AzureADTokenExchange",),
        description: str | None = None,
    ) -> dict[str, Any]:
        """Add a federated identity credential to an app (at most 20; 409 for a duplicate name or
        issuer+subject). Returns ``id``, ``name``, ``issuer``, ``subject``, ``audiences``, ``description``."""
        body = {
            "name": name,
            "issuer": issuer,
            "subject": subject,
            "audiences": list(audiences),
            "description": description,
        }
        return self._dict("POST", f"/tenants/{tenant_id}/apps/{app_id}/federated-credentials", body)

    def federated_credentials(self, tenant_id: str, app_id: str) -> list[dict[str, Any]]:
        data = self._dict("GET", f"/tenants/{tenant_id}/apps/{app_id}/federated-credentials")
        return list(data["federatedCredentials"])

    def remove_federated_credential(self, tenant_id: str, app_id: str, ref: str) -> None:
        """Remove a federated identity credential by its id or name."""
        self._call("DELETE", f"/tenants/{tenant_id}/apps/{app_id}/federated-credentials/{urllib.parse.quote(ref)}")

    # --- app management policies (see localdev.standin.policies) ------------------------------------

    def set_default_app_management_policy(
        self,
        tenant_id: str,
        password_restrictions: Iterable[dict[str, Any]] = (),
        key_restrictions: Iterable[dict[str, Any]] = (),
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Set the tenant default policy's ``applicationRestrictions``: restrictions such as
        ``{"restrictionType": "passwordLifetime", "maxLifetime": "P180D"}``, ``{"restrictionType":
        "passwordAddition"}`` (passwords) or ``{"restrictionType": "asymmetricKeyLifetime", "maxLifetime":
        "P90D"}`` (certificates), each with optional ``state`` and ``restrictForAppsCreatedAfterDateTime``.
        Returns the policy as ``GET /v1.0/policies/defaultAppManagementPolicy`` shows it."""
        body = {
            "isEnabled": enabled,
            "applicationRestrictions": {
                "passwordCredentials": list(password_restrictions),
                "keyCredentials": list(key_restrictions),
            },
        }
        return self._dict("PUT", f"/tenants/{tenant_id}/app-management-policies/default", body)

    def add_app_management_policy(
        self,
        tenant_id: str,
        app_ids: Iterable[str],
        password_restrictions: Iterable[dict[str, Any]] = (),
        key_restrictions: Iterable[dict[str, Any]] = (),
        display_name: str = "app management policy",
        enabled: bool = True,
    ) -> dict[str, Any]:
        """Create an app management policy assigned to these apps (it overrides the tenant default for the
        restriction types it names). Returns ``id``, ``displayName``, ``isEnabled``, ``restrictions``."""
        body = {
            "displayName": display_name,
            "isEnabled": enabled,
            "appIds": list(app_ids),
            "restrictions": {
                "passwordCredentials": list(password_restrictions),
                "keyCredentials": list(key_restrictions),
            },
        }
        return self._dict("POST", f"/tenants/{tenant_id}/app-management-policies", body)

    def app_management_policies(self, tenant_id: str) -> list[dict[str, Any]]:
        return list(self._dict("GET", f"/tenants/{tenant_id}/app-management-policies")["policies"])

    # --- webhook receivers (POST {url}/webhooks/{name}) ---------------------------------------------

    def webhook_url(self, name: str) -> str:
        """Where the receiver ``name`` listens: ``{url}/webhooks/{name}`` (a ``NOTIFY_WEBHOOK_URL``)."""
        return f"{self.url}/webhooks/{urllib.parse.quote(name, safe='')}"

    def webhook_deliveries(self, name: str | None = None) -> list[dict[str, Any]]:
        """Deliveries received (all receivers', or ``name``'s), oldest first: ``name``, ``headers``
        (``signature``, ``timestamp``, ``idempotencyKey``, ``contentType``: the header values, None when absent),
        ``body`` (the raw body, as UTF-8 text: recompute the HMAC over ``body.encode()``), ``json`` (the parsed
        body, None when not JSON), ``receivedAt`` (ISO 8601 UTC) and ``status`` (what the receiver answered).
        Requests answered or dropped by a fault rule are not deliveries (see :meth:`requests`)."""
        data = self._dict("GET", "/webhooks/deliveries", query={"name": name} if name is not None else None)
        return cast(list[dict[str, Any]], data["deliveries"])

    def clear_webhook_deliveries(self) -> None:
        self._call("DELETE", "/webhooks/deliveries")

    def fail_webhook(self, name: str, status: int, times: int = 1) -> None:
        """The receiver ``name`` answers ``status`` (200-599) to its next ``times`` deliveries, which are still
        recorded (with that ``status``), then 202 again; ``times=0`` cancels. For drops or delays, use
        :meth:`set_faults` with ``"path": "^/webhooks/{name}$"`` (those requests are not recorded as deliveries)."""
        self._call("PUT", f"/webhooks/{urllib.parse.quote(name, safe='')}/failures", {"status": status, "times": times})

    # --- inspection ----------------------------------------------------------------------------------

    def requests(self, clear: bool = False) -> list[dict[str, Any]]:
        """Non-admin requests received, oldest first: ``time``, ``method``, ``path``, ``query``, ``status``,
        ``durationMs``, ``headers`` (selected), ``fault``, and what the handler noted (``error``, ``client_id``,
        ``grant_type``, ``scope``, ``auth``, ``assertion``, ``secret``, ``version``, ``appid``...)."""
        data = self._dict("GET", "/requests", query={"clear": "1"} if clear else None)
        return cast(list[dict[str, Any]], data["requests"])

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def token_requests(self, clear: bool = False) -> list[dict[str, Any]]:
        return [r for r in self.requests(clear) if r["method"] == "POST" and r["path"].endswith("/oauth2/v2.0/token")]

    def vault_secrets(self) -> dict[str, Any]:
        """``{name: {name, deleted, deletedDate, scheduledPurgeDate, latest, versions: [{version, value,
        contentType, tags, enabled, created, updated, expires}]}}``, versions oldest first."""
        return self._dict("GET", "/vault/secrets")

    def stats(self) -> dict[str, Any]:
        return self._dict("GET", "/stats")

    def connections_opened(self) -> int:
        """TLS connections opened by clients (a connection whose first request is an admin call is not counted)."""
        return int(self.stats()["connectionsOpened"])

    # --- control -------------------------------------------------------------------------------------

    def reset(self) -> None:
        self._call("POST", "/reset")

    def set_faults(self, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace the fault rules. A rule: ``{"method": "POST"|None, "path": "<regex, searched>", "status": 429,
        "headers": {...}, "body": dict|str|None, "times": int|None, "skip": 0, "probability": 1.0,
        "action": "respond"|"drop"|"drop_after"|"respond_after"|"delay"|"rate_limit", "delay_ms": 0, "limit": 0,
        "window_ms": 0}`` ("drop": the connection drops before the request is handled; "drop_after": it is handled,
        then the connection drops without an answer; "respond_after": it is handled, then answered with ``status``
        instead; "delay": only ``delay_ms``; "rate_limit": ``limit`` matches per ``window_ms`` go through, the rest
        are answered with ``status``, default 429, and ``Retry-After``).
        Returns the rules with their ``hits``. ``localdev.standin.graph`` builds Graph-shaped rules."""
        return cast(list[dict[str, Any]], self._dict("PUT", "/faults", {"rules": rules})["rules"])

    def faults(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._dict("GET", "/faults")["rules"])

    def clear_faults(self) -> None:
        self.set_faults([])

    def set_latency(self, ms: int) -> None:
        self._call("PUT", "/latency", {"ms": ms})
