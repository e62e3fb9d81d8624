"""Everything the stand-in knows, in one object guarded by one lock.

:class:`State` holds the directory (tenants; their apps with roles, owners, password credentials, removed ones
kept for inspection, and certificate credentials; an app exposing an API also has its app roles, its
``api://{appId}`` URI and the roles assigned to principals, see :mod:`localdev.standin.apis`), the Key Vault
secrets (versions oldest first, soft delete), which tenant the vault belongs to, the fault rules and the global
latency, the request log (the last ``REQUEST_LOG_LIMIT`` requests), the connection and handshake counters,
Graph's secret propagation delay, and ``extra`` for other services' own state (Graph's call counts, OAuth's
users, codes and refresh tokens, the webhook receivers' deliveries).
``reset`` clears all of it.

:class:`FaultRule` is one failure injection rule (actions ``respond``, ``drop``, ``drop_after``, ``respond_after``,
``delay``, ``rate_limit``; see :mod:`localdev.standin.server` for how each is applied); :meth:`State.take_fault`
picks the rule that fires for a request and counts it.

Handlers take ``state.lock`` (re-entrant) around any read-modify-write; the helper methods here take it too.
A bad admin request raises :class:`StateError`, answered with its status.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import re
import secrets
import string
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from localdev.standin.pki import Thumbprints

ZERO_TENANT = "00000000-0000-0000-0000-000000000000"
REQUEST_LOG_LIMIT = 10_000
SECRET_ALPHABET = string.ascii_letters + string.digits + "_.~-"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(value: dt.datetime) -> str:
    """Graph's date format: ``2026-01-02T03:04:05Z``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def new_secret_text() -> str:
    """A secret shaped like Entra's: 40 characters, the 4th to 6th being ``8Q~``."""
    head = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(3))
    return head + "8Q~" + "".join(secrets.choice(SECRET_ALPHABET) for _ in range(34))


class StateError(Exception):
    """A bad admin request: answered with 400 (or ``status``) and ``message``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PasswordCredential:
    key_id: str
    display_name: str | None
    secret_text: str
    start: dt.datetime
    end: dt.datetime
    created_by: str = "admin"  # "admin" or "graph" (addPassword)
    created_by_app: str | None = None  # the appid of the Graph caller that added it
    created: dt.datetime = field(default_factory=utcnow)
    revoked: dt.datetime | None = None  # set when removed (it then moves to App.removed_passwords)
    revoked_by: str | None = None
    # A secret added through Graph is accepted by the token endpoint only from this time on (propagation);
    # fixed when it is created, as Entra's propagation applies to new secrets, not to ones already working.
    ready_at: dt.datetime | None = None

    @property
    def hint(self) -> str:
        return self.secret_text[:3]

    def to_dict(self, with_secret: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "keyId": self.key_id,
            "displayName": self.display_name,
            "hint": self.hint,
            "startDateTime": iso(self.start),
            "endDateTime": iso(self.end),
            "customKeyIdentifier": None,
            "secretText": self.secret_text if with_secret else None,
        }
        return out


@dataclass
class KeyCredential:
    key_id: str
    display_name: str | None
    certificate: x509.Certificate
    public_key: PublicKey
    thumbprints: Thumbprints
    start: dt.datetime
    end: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyId": self.key_id,
            "displayName": self.display_name,
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "startDateTime": iso(self.start),
            "endDateTime": iso(self.end),
            "thumbprint": self.thumbprints.sha1_hex,
            "thumbprintSha256": self.thumbprints.sha256_hex,
            "x5t": self.thumbprints.x5t,
            "x5tS256": self.thumbprints.x5t_s256,
        }


FEDERATED_CREDENTIAL_LIMIT = 20  # per application, as Entra documents


@dataclass
class FederatedCredential:
    """A federated identity credential of an application (Graph's ``federatedIdentityCredential``): a token whose
    ``iss``, ``sub`` and ``aud`` equal these exactly (case-sensitive) is accepted as the app's client assertion."""

    id: str
    name: str
    issuer: str
    subject: str
    audiences: list[str]
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "issuer": self.issuer,
            "subject": self.subject,
            "audiences": list(self.audiences),
            "description": self.description,
        }


@dataclass
class ManagedIdentity:
    """A user-assigned managed identity the stand-in's managed-identity endpoint issues tokens for."""

    client_id: str
    principal_id: str
    tenant_id: str
    display_name: str
    resource_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "principalId": self.principal_id,
            "tenantId": self.tenant_id,
            "displayName": self.display_name,
            "resourceId": self.resource_id,
        }


@dataclass
class App:
    """An application registration and its service principal in one tenant."""

    tenant_id: str
    app_id: str
    object_id: str
    service_principal_id: str
    display_name: str
    created: dt.datetime
    roles: set[str] = field(default_factory=set)
    passwords: list[PasswordCredential] = field(default_factory=list)
    keys: list[KeyCredential] = field(default_factory=list)
    owners: set[str] = field(default_factory=set)  # service principal ids owning this app registration
    removed_passwords: list[PasswordCredential] = field(default_factory=list)
    # As an API (``State.add_api``): the app roles it defines, its application ID URIs, and the roles assigned
    # to principals (a user's object id or a client's service principal id -> role values).
    app_roles: list[str] = field(default_factory=list)
    identifier_uris: list[str] = field(default_factory=list)
    assignments: dict[str, set[str]] = field(default_factory=dict)
    # Federated identity credentials (at most FEDERATED_CREDENTIAL_LIMIT) and the ids of the app management
    # policies assigned to the app (in its tenant's ``app_management_policies``): plain data.
    federated_credentials: list[FederatedCredential] = field(default_factory=list)
    management_policy_ids: list[str] = field(default_factory=list)

    @property
    def is_api(self) -> bool:
        return bool(self.identifier_uris or self.app_roles)

    def roles_of(self, principal_id: str) -> list[str]:
        """The app roles of this API assigned to a principal (a user's id or a service principal id), sorted."""
        return sorted(self.assignments.get(principal_id.lower(), ()))

    def api_dict(self) -> dict[str, Any]:
        return {
            "appId": self.app_id,
            "id": self.object_id,
            "servicePrincipalId": self.service_principal_id,
            "displayName": self.display_name,
            "tenantId": self.tenant_id,
            "identifierUri": self.identifier_uris[0] if self.identifier_uris else None,
            "identifierUris": list(self.identifier_uris),
            "appRoles": list(self.app_roles),
            "assignments": [
                {"principalId": principal, "role": role}
                for principal, roles in sorted(self.assignments.items())
                for role in sorted(roles)
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.object_id,
            "appId": self.app_id,
            "servicePrincipalId": self.service_principal_id,
            "displayName": self.display_name,
            "tenantId": self.tenant_id,
            "createdDateTime": iso(self.created),
            "roles": sorted(self.roles),
            "passwordCredentials": [p.to_dict() for p in self.passwords],
            "keyCredentials": [k.to_dict() for k in self.keys],
            "owners": sorted(self.owners),
            "appRoles": list(self.app_roles),
            "identifierUris": list(self.identifier_uris),
            "federatedIdentityCredentials": [f.to_dict() for f in self.federated_credentials],
            "appManagementPolicyIds": list(self.management_policy_ids),
        }


@dataclass
class Tenant:
    tenant_id: str
    display_name: str
    apps: dict[str, App] = field(default_factory=dict)  # by lower-case appId
    # App management policies as Graph shows them (plain JSON): the tenant default (``applicationRestrictions``)
    # and the policies assignable to apps (``restrictions``), by lower-case id. See localdev.standin.policies.
    default_app_management_policy: dict[str, Any] = field(default_factory=dict)
    app_management_policies: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None
    tags: dict[str, str] | None
    enabled: bool
    created: int
    updated: int
    not_before: int | None = None
    expires: int | None = None


@dataclass
class VaultSecret:
    name: str
    versions: list[SecretVersion] = field(default_factory=list)  # oldest first
    deleted_date: int | None = None
    scheduled_purge_date: int | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_date is not None

    def latest(self) -> SecretVersion:
        return self.versions[-1]

    def version(self, version: str) -> SecretVersion | None:
        wanted = version.lower()
        return next((v for v in self.versions if v.version == wanted), None)


FAULT_ACTIONS = ("respond", "drop", "drop_after", "respond_after", "delay", "rate_limit")


@dataclass
class FaultRule:
    """A failure injection rule for non-admin requests whose method (if set) and path (regex, searched) match.

    ``skip`` matches pass first, then it fires with ``probability`` at most ``times`` times (``hits`` counts
    them). ``respond`` answers with ``status``/``headers``/``body`` instead of the handler, ``drop`` closes the
    connection before handling, ``drop_after`` after handling (the answer is lost), ``respond_after`` answers
    like ``respond`` after handling (the handler's effects stay: a gateway's 5xx after the work was done),
    ``delay`` only sleeps ``delay_ms`` (which every action sleeps first), ``rate_limit`` lets ``limit`` requests per
    ``window_ms`` through and answers the rest like ``respond``.
    """

    path: re.Pattern[str]
    method: str | None = None
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    times: int | None = None  # None: every match
    skip: int = 0  # let this many matches through first
    probability: float = 1.0
    action: str = "respond"
    delay_ms: int = 0
    # action "rate_limit": the first ``limit`` matches in any ``window_ms`` go through; the rest are answered
    # like "respond" (default 429 with Retry-After: the seconds until a slot frees).
    limit: int = 0
    window_ms: int = 0
    hits: int = 0
    seen: int = 0
    passed: deque[float] = field(default_factory=deque)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FaultRule:
        known = {"method", "path", "status", "headers", "body", "times", "skip", "probability", "action", "delay_ms",
                 "limit", "window_ms"}
        unknown = set(raw) - known
        if unknown:
            raise StateError(f"unknown fault rule fields: {sorted(unknown)}")
        action = str(raw.get("action") or "respond")
        if action not in FAULT_ACTIONS:
            raise StateError(f"action must be one of {FAULT_ACTIONS}")
        try:
            pattern = re.compile(str(raw.get("path") or ".*"))
        except re.error as exc:
            raise StateError(f"bad path regex: {exc}") from exc
        method = raw.get("method")
        times = raw.get("times")
        return cls(
            path=pattern,
            method=str(method).upper() if method else None,
            status=int(raw.get("status") or (429 if action == "rate_limit" else 500)),
            headers={str(k): str(v) for k, v in (raw.get("headers") or {}).items()},
            body=raw.get("body"),
            times=None if times is None else int(times),
            skip=int(raw.get("skip") or 0),
            probability=float(1.0 if raw.get("probability") is None else raw["probability"]),
            action=action,
            delay_ms=int(raw.get("delay_ms") or 0),
            limit=int(raw.get("limit") or 0),
            window_ms=int(raw.get("window_ms") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path.pattern,
            "status": self.status,
            "headers": self.headers,
            "body": self.body,
            "times": self.times,
            "skip": self.skip,
            "probability": self.probability,
            "action": self.action,
            "delay_ms": self.delay_ms,
            **({"limit": self.limit, "window_ms": self.window_ms} if self.action == "rate_limit" else {}),
            "hits": self.hits,
        }


class State:
    """The stand-in's whole state (see the module docstring); ``lock`` guards every field."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tenants: dict[str, Tenant] = {}
        self.vault: dict[str, VaultSecret] = {}
        self.vault_tenant: str | None = None
        self.faults: list[FaultRule] = []
        self.latency_ms = 0
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)
        self.connections_opened = 0  # TLS connections whose first request was not an admin request
        self.handshakes = 0  # every TLS handshake completed
        self.started = time.time()
        # Extension point for later services (Graph, OAuth codes...): their own state, under the same lock.
        self.extra: dict[str, Any] = {}
        # Graph: seconds after addPassword before the token endpoint accepts the new secret (as in Entra).
        self.propagation_delay = 0.0
        # The managed-identity endpoint (localdev.standin.federation): user-assigned identities by lower-case
        # client id, and the secret callers send as X-IDENTITY-HEADER (App Service's IDENTITY_HEADER).
        self.managed_identities: dict[str, ManagedIdentity] = {}
        self.identity_header = secrets.token_hex(16)

    def reset(self) -> None:
        with self.lock:
            self.tenants.clear()
            self.vault.clear()
            self.vault_tenant = None
            self.faults.clear()
            self.latency_ms = 0
            self.request_log.clear()
            self.connections_opened = 0
            self.handshakes = 0
            self.extra.clear()
            self.propagation_delay = 0.0
            self.managed_identities.clear()

    # --- directory ---------------------------------------------------------------------------------

    def add_tenant(self, tenant_id: str | None = None, display_name: str | None = None) -> Tenant:
        tid = (tenant_id or str(uuid.uuid4())).lower()
        try:
            uuid.UUID(tid)
        except ValueError as exc:
            raise StateError(f"tenant id must be a GUID: {tenant_id!r}") from exc
        with self.lock:
            if tid in self.tenants:
                raise StateError(f"tenant {tid} exists", 409)
            tenant = Tenant(tid, display_name or f"Tenant {tid[:8]}")
            self.tenants[tid] = tenant
            return tenant

    def tenant(self, tenant_id: str) -> Tenant | None:
        with self.lock:
            return self.tenants.get(tenant_id.lower())

    def require_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.tenant(tenant_id)
        if tenant is None:
            raise StateError(f"no tenant {tenant_id}", 404)
        return tenant

    def app(self, tenant_id: str, app_id: str) -> App | None:
        with self.lock:
            tenant = self.tenants.get(tenant_id.lower())
            return None if tenant is None else tenant.apps.get(app_id.lower())

    def require_app(self, tenant_id: str, app_id: str) -> App:
        app = self.app(tenant_id, app_id)
        if app is None:
            self.require_tenant(tenant_id)
            raise StateError(f"no app {app_id} in tenant {tenant_id}", 404)
        return app

    def add_app(
        self, tenant_id: str, display_name: str = "app", app_id: str | None = None, roles: list[str] | None = None
    ) -> App:
        with self.lock:
            tenant = self.require_tenant(tenant_id)
            aid = (app_id or str(uuid.uuid4())).lower()
            if aid in tenant.apps:
                raise StateError(f"app {aid} exists in tenant {tenant.tenant_id}", 409)
            app = App(
                tenant_id=tenant.tenant_id,
                app_id=aid,
                object_id=str(uuid.uuid4()),
                service_principal_id=str(uuid.uuid4()),
                display_name=display_name,
                created=utcnow(),
                roles=set(roles or ()),
            )
            tenant.apps[aid] = app
            return app

    # --- APIs: app registrations that define app roles, and the roles assigned to principals -----------

    def add_api(
        self, tenant_id: str, display_name: str = "api", roles: list[str] | None = None, app_id: str | None = None
    ) -> App:
        """An app registration exposing an API: ``api://{appId}`` as its application ID URI, ``roles`` as its app
        roles (assignable to users and applications)."""
        defined = list(dict.fromkeys(roles or ()))
        for role in defined:
            if not role or any(c.isspace() for c in role):
                raise StateError(f"an app role value must be non-empty without spaces: {role!r}")
        with self.lock:
            app = self.add_app(tenant_id, display_name, app_id)
            app.identifier_uris = [f"api://{app.app_id}"]
            app.app_roles = defined
            return app

    def find_api(self, tenant_id: str, resource: str) -> App | None:
        """The app of the tenant that ``resource`` (an appId or an application ID URI, as in a ``/.default``
        scope or an audience) names."""
        wanted = resource.rstrip("/").lower()
        with self.lock:
            tenant = self.tenants.get(tenant_id.lower())
            if tenant is None:
                return None
            if wanted in tenant.apps:
                return tenant.apps[wanted]
            return next(
                (a for a in tenant.apps.values() if wanted in (u.rstrip("/").lower() for u in a.identifier_uris)),
                None,
            )

    def assign_role(self, tenant_id: str, api_app_id: str, principal_id: str, role: str) -> App:
        """Assign one of the API's app roles to a principal id (the caller resolves and checks the principal)."""
        with self.lock:
            api = self.require_app(tenant_id, api_app_id)
            if role not in api.app_roles:
                raise StateError(f"the API {api.app_id} defines no app role {role!r}; it has {api.app_roles}")
            api.assignments.setdefault(principal_id.lower(), set()).add(role)
            return api

    def unassign_role(self, tenant_id: str, api_app_id: str, principal_id: str, role: str) -> App:
        with self.lock:
            api = self.require_app(tenant_id, api_app_id)
            held = api.assignments.get(principal_id.lower(), set())
            if role not in held:
                raise StateError(f"{principal_id} has no assignment of {role!r} on the API {api.app_id}", 404)
            held.discard(role)
            if not held:
                del api.assignments[principal_id.lower()]
            return api

    def grant_roles(self, tenant_id: str, app_id: str, roles: list[str]) -> App:
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            app.roles.update(roles)
            return app

    def revoke_roles(self, tenant_id: str, app_id: str, roles: list[str]) -> App:
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            app.roles.difference_update(roles)
            return app

    def add_password(
        self,
        tenant_id: str,
        app_id: str,
        display_name: str | None = None,
        end: dt.datetime | None = None,
        secret_text: str | None = None,
        start: dt.datetime | None = None,
        created_by: str = "admin",
        created_by_app: str | None = None,
    ) -> PasswordCredential:
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            begin = start or utcnow()
            credential = PasswordCredential(
                key_id=str(uuid.uuid4()),
                display_name=display_name,
                secret_text=secret_text or new_secret_text(),
                start=begin,
                end=end or begin + dt.timedelta(days=730),
                created_by=created_by,
                created_by_app=created_by_app,
            )
            if created_by == "graph" and self.propagation_delay > 0:
                credential.ready_at = credential.created + dt.timedelta(seconds=self.propagation_delay)
            app.passwords.append(credential)
            return credential

    def remove_password(self, tenant_id: str, app_id: str, key_id: str, revoked_by: str = "admin") -> None:
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            kept = [p for p in app.passwords if p.key_id.lower() != key_id.lower()]
            if len(kept) == len(app.passwords):
                raise StateError(f"no password credential {key_id} on app {app_id}", 404)
            for removed in app.passwords:
                if removed.key_id.lower() == key_id.lower():
                    removed.revoked, removed.revoked_by = utcnow(), revoked_by
                    app.removed_passwords.append(removed)
            app.passwords = kept

    def add_owner(self, tenant_id: str, app_id: str, owner: str) -> App:
        """Make ``owner`` (an appId or service principal id in the same tenant) an owner of the app registration."""
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            tenant = self.require_tenant(tenant_id)
            wanted = owner.lower()
            found = next((a for a in tenant.apps.values() if wanted in (a.app_id, a.service_principal_id)), None)
            if found is None:
                raise StateError(f"no app or service principal {owner} in tenant {tenant.tenant_id}", 404)
            app.owners.add(found.service_principal_id)
            return app

    def add_certificate(
        self, tenant_id: str, app_id: str, certificate_pem: str, display_name: str | None = None
    ) -> KeyCredential:
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        except ValueError as exc:
            raise StateError(f"not a PEM certificate: {exc}") from exc
        public_key = cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise StateError("only RSA and EC certificates are supported")
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            credential = KeyCredential(
                key_id=str(uuid.uuid4()),
                display_name=display_name or cert.subject.rfc4514_string(),
                certificate=cert,
                public_key=public_key,
                thumbprints=Thumbprints.of(cert),
                start=cert.not_valid_before_utc,
                end=cert.not_valid_after_utc,
            )
            app.keys.append(credential)
            return credential

    def remove_certificate(self, tenant_id: str, app_id: str, key_id: str) -> None:
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            kept = [k for k in app.keys if k.key_id.lower() != key_id.lower()]
            if len(kept) == len(app.keys):
                raise StateError(f"no key credential {key_id} on app {app_id}", 404)
            app.keys = kept

    # --- federation: federated identity credentials and managed identities ------------------------------

    def add_federated_credential(
        self,
        tenant_id: str,
        app_id: str,
        name: str,
        issuer: str,
        subject: str,
        audiences: list[str],
        description: str | None = None,
    ) -> FederatedCredential:
        """Add a federated identity credential; StateError for a bad or duplicate one or past the limit of 20."""
        if not 3 <= len(name) <= 120 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise StateError("name must be 3 to 120 characters: letters, digits, '-' and '_', starting alphanumeric")
        if not issuer or not subject:
            raise StateError("issuer and subject are required")
        if len(audiences) != 1 or not audiences[0]:
            raise StateError("audiences must hold exactly one value")
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            if any(f.name == name for f in app.federated_credentials):
                raise StateError(f"a federated identity credential named {name!r} exists on app {app.app_id}", 409)
            if any(f.issuer == issuer and f.subject == subject for f in app.federated_credentials):
                raise StateError("a federated identity credential with this issuer and subject exists", 409)
            if len(app.federated_credentials) >= FEDERATED_CREDENTIAL_LIMIT:
                raise StateError(
                    f"app {app.app_id} has the maximum of {FEDERATED_CREDENTIAL_LIMIT} federated identity credentials"
                )
            credential = FederatedCredential(str(uuid.uuid4()), name, issuer, subject, list(audiences), description)
            app.federated_credentials.append(credential)
            return credential

    def remove_federated_credential(self, tenant_id: str, app_id: str, ref: str) -> FederatedCredential:
        """Remove the federated identity credential with this id or name."""
        with self.lock:
            app = self.require_app(tenant_id, app_id)
            for credential in app.federated_credentials:
                if credential.id == ref.lower() or credential.name == ref:
                    app.federated_credentials.remove(credential)
                    return credential
            raise StateError(f"no federated identity credential {ref} on app {app.app_id}", 404)

    def add_managed_identity(
        self,
        tenant_id: str,
        display_name: str = "identity",
        client_id: str | None = None,
        principal_id: str | None = None,
    ) -> ManagedIdentity:
        """Register a user-assigned managed identity in a tenant (its client id and principal id are GUIDs)."""
        try:
            cid = str(uuid.UUID(client_id)) if client_id else str(uuid.uuid4())
            pid = str(uuid.UUID(principal_id)) if principal_id else str(uuid.uuid4())
        except ValueError as exc:
            raise StateError("clientId and principalId must be GUIDs") from exc
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{2,127}", display_name):
            raise StateError("displayName must be 3 to 128 characters: letters, digits, '-' and '_'")
        with self.lock:
            tenant = self.require_tenant(tenant_id)
            if cid in self.managed_identities:
                raise StateError(f"managed identity {cid} exists", 409)
            identity = ManagedIdentity(
                client_id=cid,
                principal_id=pid,
                tenant_id=tenant.tenant_id,
                display_name=display_name,
                resource_id=(
                    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-local/providers/"
                    f"Microsoft.ManagedIdentity/userAssignedIdentities/{display_name}"
                ),
            )
            self.managed_identities[cid] = identity
            return identity

    def effective_vault_tenant(self) -> str:
        with self.lock:
            if self.vault_tenant:
                return self.vault_tenant
            return next(iter(self.tenants), ZERO_TENANT)

    # --- faults and log ----------------------------------------------------------------------------

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        parsed = [FaultRule.from_dict(rule) for rule in rules]
        with self.lock:
            self.faults = parsed

    def take_fault(self, method: str, path: str) -> FaultRule | None:
        """The first rule that matches and fires now; its counters are updated."""
        with self.lock:
            for rule in self.faults:
                if rule.method and rule.method != method:
                    continue
                if not rule.path.search(path):
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.probability < 1.0 and random.random() >= rule.probability:
                    continue
                if rule.action == "rate_limit" and not _over_limit(rule):
                    continue
                rule.hits += 1
                return rule
            return None

    def log(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.request_log.append(entry)

    def requests(self, clear: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            out = list(self.request_log)
            if clear:
                self.request_log.clear()
            return out


def _over_limit(rule: FaultRule) -> bool:
    """Whether a rate-limit rule answers this request (under the state lock); a request let through takes a slot."""
    now = time.monotonic()
    window = rule.window_ms / 1000
    while rule.passed and rule.passed[0] <= now - window:
        rule.passed.popleft()
    if len(rule.passed) < rule.limit:
        rule.passed.append(now)
        return False
    wait = max(1, math.ceil(rule.passed[0] + window - now))
    rule.headers = {**rule.headers, "Retry-After": str(wait)}
    return True


# --- persistence (``python -m localdev up --persist``) -------------------------------------------------------
# The directory (tenants, apps and their credentials, API roles and assignments) and the vault are saved as
# JSON; fault rules, the request log, counters and ``extra`` (OAuth's users and tokens, webhook deliveries,
# Graph's call counts) are not. The file holds secrets: it is written 0600, like the CA key beside it.

STATE_FORMAT = 1


def _when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_when(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def _password_dict(p: PasswordCredential) -> dict[str, Any]:
    return {"key_id": p.key_id, "display_name": p.display_name, "secret_text": p.secret_text,
            "start": _when(p.start), "end": _when(p.end), "created_by": p.created_by,
            "created_by_app": p.created_by_app, "created": _when(p.created), "revoked": _when(p.revoked),
            "revoked_by": p.revoked_by, "ready_at": _when(p.ready_at)}


def _password(raw: dict[str, Any]) -> PasswordCredential:
    times = {name: _parse_when(raw[name]) for name in ("start", "end", "created", "revoked", "ready_at")}
    return PasswordCredential(
        key_id=raw["key_id"], display_name=raw["display_name"], secret_text=raw["secret_text"],
        start=times["start"] or utcnow(), end=times["end"] or utcnow(), created_by=raw["created_by"],
        created_by_app=raw["created_by_app"], created=times["created"] or utcnow(), revoked=times["revoked"],
        revoked_by=raw["revoked_by"], ready_at=times["ready_at"],
    )


def _key(raw: dict[str, Any]) -> KeyCredential:
    cert = x509.load_pem_x509_certificate(raw["certificate"].encode())
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise StateError("only RSA and EC certificates are supported")
    return KeyCredential(key_id=raw["key_id"], display_name=raw["display_name"], certificate=cert,
                         public_key=public_key, thumbprints=Thumbprints.of(cert),
                         start=cert.not_valid_before_utc, end=cert.not_valid_after_utc)


def dump_state(state: State) -> dict[str, Any]:
    """The persisted part of ``state`` as JSON-ready data (see :func:`load_state`)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    with state.lock:
        tenants = [
            {"tenant_id": t.tenant_id, "display_name": t.display_name, "apps": [
                {"app_id": a.app_id, "object_id": a.object_id, "service_principal_id": a.service_principal_id,
                 "display_name": a.display_name, "created": _when(a.created), "roles": sorted(a.roles),
                 "passwords": [_password_dict(p) for p in a.passwords],
                 "removed_passwords": [_password_dict(p) for p in a.removed_passwords],
                 "keys": [{"key_id": k.key_id, "display_name": k.display_name,
                           "certificate": k.certificate.public_bytes(Encoding.PEM).decode()} for k in a.keys],
                 "owners": sorted(a.owners), "app_roles": list(a.app_roles),
                 "identifier_uris": list(a.identifier_uris),
                 "assignments": {principal: sorted(roles) for principal, roles in a.assignments.items()}}
                for a in t.apps.values()]}
            for t in state.tenants.values()
        ]
        vault = [
            {"name": s.name, "deleted_date": s.deleted_date, "scheduled_purge_date": s.scheduled_purge_date,
             "versions": [vars(v).copy() for v in s.versions]}
            for s in state.vault.values()
        ]
        return {"format": STATE_FORMAT, "tenants": tenants, "vault": vault, "vault_tenant": state.vault_tenant,
                "propagation_delay": state.propagation_delay}


def load_state(state: State, data: dict[str, Any]) -> None:
    """Replace ``state``'s directory and vault with what :func:`dump_state` returned."""
    if data.get("format") != STATE_FORMAT:
        raise StateError(f"unknown stand-in state format {data.get('format')!r} (want {STATE_FORMAT})")
    with state.lock:
        state.tenants.clear()
        for raw_tenant in data["tenants"]:
            tenant = Tenant(raw_tenant["tenant_id"], raw_tenant["display_name"])
            for raw in raw_tenant["apps"]:
                tenant.apps[raw["app_id"]] = App(
                    tenant_id=tenant.tenant_id, app_id=raw["app_id"], object_id=raw["object_id"],
                    service_principal_id=raw["service_principal_id"], display_name=raw["display_name"],
                    created=_parse_when(raw["created"]) or utcnow(), roles=set(raw["roles"]),
                    passwords=[_password(p) for p in raw["passwords"]],
                    keys=[_key(k) for k in raw["keys"]], owners=set(raw["owners"]),
                    removed_passwords=[_password(p) for p in raw["removed_passwords"]],
                    app_roles=list(raw["app_roles"]), identifier_uris=list(raw["identifier_uris"]),
                    assignments={principal: set(roles) for principal, roles in raw["assignments"].items()},
                )
            state.tenants[tenant.tenant_id] = tenant
        state.vault.clear()
        state.vault.update({
            raw["name"]: VaultSecret(raw["name"], [SecretVersion(**v) for v in raw["versions"]],
                                     raw["deleted_date"], raw["scheduled_purge_date"])
            for raw in data["vault"]
        })
        state.vault_tenant = data["vault_tenant"]
        state.propagation_delay = float(data["propagation_delay"])


def save_state(state: State, path: Path) -> None:
    """Write ``state``'s persisted part to ``path`` (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(dump_state(state), out)
    os.replace(temporary, path)


def read_state(state: State, path: Path) -> bool:
    """Load ``path`` into ``state`` if it exists; whether it did."""
    if not path.exists():
        return False
    load_state(state, json.loads(path.read_text(encoding="utf-8")))
    return True
