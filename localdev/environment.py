"""A whole local environment: Azurite, the Entra/Graph/Key Vault stand-in, and the settings that wire the
service to them. ``python -m localdev up`` and the end-to-end tests both build it here.

:meth:`LocalEnvironment.register_api` (or ``with_api=True``) also registers the service's own API on the
stand-in, whose access tokens every route requires: its app roles, a demo administrator and a demo daemon
holding ``AppConnections.Admin``, the settings ``AUTH_TENANT_ID`` and ``AUTH_AUDIENCE``, and
``{state_dir}/api-auth.json`` for ``python -m localdev token``; and the console's sign-in on that registration:
its redirect URI ``{site_url}/auth/callback``, a federated credential for the managed identity below (a client
secret, ``CONSOLE_CLIENT_SECRET``, only without one) and demo users
(:data:`DEMO_USERS`: a reader and an operator beside the administrator).

``{state_dir}/api-auth.json`` for ``python -m localdev token``.

It also registers a demo user-assigned managed identity in the service's tenant (:attr:`LocalEnvironment.
federation`) and sets ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` (the stand-in's managed-identity endpoint, as
App Service sets them for a Function App) and ``FEDERATION_IDENTITY_CLIENT_ID``/``_PRINCIPAL_ID``/
``_TENANT_ID``, so that the federated method works locally: an application trusts the identity with a federated
identity credential whose issuer is ``{stand-in URL}/{tenant}/v2.0``, subject the principal id and audience
``api://AzureADTokenExchange``.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from localdev.api_token import (
    ADMIN_ROLE,
    AUTH_FILE,
    DEMO_ADMIN_UPN,
    TOKEN_REDIRECT_URI,
    ApiAccess,
    api_roles,
)
from localdev.azurite import Azurite
from localdev.standin import StandIn
from localdev.standin.state import read_state, save_state
from shared.apps import APPS

STANDIN_STATE_FILE = "standin-state.json"

# The console's demo people beside the administrator (DEMO_ADMIN_UPN): userPrincipalName -> (name, app roles).
DEMO_USERS = {
    "operator@contoso.example": ("Demo Operator", ("AppConnections.Reader", "AppConnections.Writer",
                                                   "AppConnections.Rotator")),
    "reader@contoso.example": ("Demo Reader", ("AppConnections.Reader",)),
}


@dataclass
class ServiceIdentity:
    tenant_id: str
    client_id: str
    client_secret: str


@dataclass
class FederationIdentity:
    """The demo user-assigned managed identity of the local function host."""

    tenant_id: str
    client_id: str
    principal_id: str
    issuer: str


@dataclass
class LocalEnvironment:
    """Starts Azurite and the stand-in; :attr:`settings` are the app settings that point the service at them."""

    state_dir: Path
    standin_port: int = 0
    azurite_port: int = 0
    table_prefix: str = "AppConn"
    sweep_schedule: str = "0 */5 * * * *"
    health_schedule: str = "0 0 * * * *"  # hourly
    # The service's public URL: the OAuth redirect URI registered on the instance apps is built from it.
    site_url: str = "http://localhost:7071"
    azurite: Azurite | None = None
    standin: StandIn | None = None
    identity: ServiceIdentity | None = None
    settings: dict[str, str] = field(default_factory=dict)
    # The instance's own app registrations for the OAuth method, by setting prefix (one per app).
    oauth_clients: dict[str, ServiceIdentity] = field(default_factory=dict)
    # Register the service's API when started (see register_api), so that AUTH_* are in the settings at once.
    with_api: bool = False
    api: ApiAccess | None = None
    # Keep the local data across restarts (``up --persist``): Azurite's tables in ``{state_dir}/azurite`` and the
    # stand-in's directory and vault in ``{state_dir}/standin-state.json`` (loaded at start, saved at stop).
    persist: bool = False
    federation: FederationIdentity | None = None

    def start(self) -> LocalEnvironment:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            location = None
            if self.persist:
                location = self.state_dir / "azurite"
                location.mkdir(mode=0o700, exist_ok=True)
            self.azurite = Azurite(self.azurite_port, location=location).start()
            self.standin = StandIn(port=self.standin_port, ca_dir=self.state_dir).start()
            if self.persist:
                read_state(self.standin.state, self.standin_state_path)
            admin = self.standin.admin
            tenant = admin.add_tenant()
            admin.set_vault_tenant(tenant)
            app = admin.add_app(tenant, display_name="app-connections-service")
            secret = admin.add_secret(tenant, app["appId"], display_name="local service identity")
            self.identity = ServiceIdentity(tenant, app["appId"], secret["secretText"])
            managed = admin.add_managed_identity(tenant, "id-app-connections-local")
            self.federation = FederationIdentity(
                tenant, managed["clientId"], managed["principalId"], admin.issuer(tenant)
            )
            endpoint = admin.identity_endpoint()
            redirect_uri = f"{self.site_url.rstrip('/')}/organization/app-connections/azure/oauth/callback"
            for spec in APPS.values():
                # The delegated permissions the reference asks for, consented (a `.default` token carries them).
                delegated = [p.name for p in spec.permissions if p.kind == "Delegated"]
                oauth_app = admin.add_app(tenant, display_name=f"app-connections-oauth-{spec.id}", roles=delegated)
                admin.add_redirect_uri(tenant, oauth_app["appId"], redirect_uri)
                oauth_secret = admin.add_secret(tenant, oauth_app["appId"], display_name="instance OAuth client")
                self.oauth_clients[spec.oauth_setting_prefix] = ServiceIdentity(
                    tenant, oauth_app["appId"], oauth_secret["secretText"]
                )
        except BaseException:
            self.stop()
            raise
        ca = str(self.standin.ca_path)
        self.settings = {
            "AzureWebJobsStorage": self.azurite.connection_string,
            "STATE_TABLE_PREFIX": self.table_prefix,
            "KEY_VAULT_URL": self.standin.url,
            "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
            "AZURE_AUTHORITY_HOST": self.standin.url,
            "GRAPH_ENDPOINT": self.standin.url,
            "AZURE_TENANT_ID": self.identity.tenant_id,
            "AZURE_CLIENT_ID": self.identity.client_id,
            "AZURE_CLIENT_SECRET": self.identity.client_secret,
            "ROTATION_SWEEP_SCHEDULE": self.sweep_schedule,
            "HEALTH_SWEEP_SCHEDULE": self.health_schedule,
            "SITE_URL": self.site_url.rstrip("/"),
            "SSL_CERT_FILE": ca,
            "REQUESTS_CA_BUNDLE": ca,
            "IDENTITY_ENDPOINT": endpoint["endpoint"],
            "IDENTITY_HEADER": endpoint["header"],
            "FEDERATION_IDENTITY_CLIENT_ID": self.federation.client_id,
            "FEDERATION_IDENTITY_PRINCIPAL_ID": self.federation.principal_id,
            "FEDERATION_IDENTITY_TENANT_ID": self.federation.tenant_id,
        }
        for prefix, client in self.oauth_clients.items():
            self.settings[f"{prefix}_CLIENT_ID"] = client.client_id
            self.settings[f"{prefix}_CLIENT_SECRET"] = client.client_secret
        if self.with_api:
            try:
                self.register_api()
            except BaseException:
                self.stop()
                raise
        return self

    def register_api(self) -> ApiAccess:
        """Register the service's API in the service's tenant (once; later calls return the same): app roles
        ``AppConnections.<Reader|Writer|Rotator|Auditor|Admin>`` and the same limited to each app
        (``AppConnections.<Role>.<app>``), a demo administrator (``admin@contoso.example``) and a demo daemon
        (a confidential client, also the client a person signs in to for ``token --user``) both holding
        ``AppConnections.Admin``. Sets ``AUTH_TENANT_ID`` and ``AUTH_AUDIENCE`` (the API's appId) in
        :attr:`settings` (call :meth:`apply` after it) and writes ``{state_dir}/api-auth.json`` (0600)."""
        if self.api is not None:
            return self.api
        if self.standin is None or self.identity is None:
            raise RuntimeError("start the local environment before registering its API")
        admin = self.standin.admin
        tenant = self.identity.tenant_id
        api = admin.add_api(tenant, "app-connections-api", api_roles(APPS.keys()))
        user = admin.add_user(tenant, DEMO_ADMIN_UPN, "Demo Administrator")
        daemon = admin.add_app(tenant, display_name="app-connections-demo-daemon")
        secret = admin.add_secret(tenant, daemon["appId"], display_name="demo daemon")
        admin.add_redirect_uri(tenant, daemon["appId"], TOKEN_REDIRECT_URI)
        admin.assign_role(tenant, api["appId"], user["id"], ADMIN_ROLE)
        admin.assign_role(tenant, api["appId"], daemon["appId"], ADMIN_ROLE)
        # The console signs people in to the API registration itself (shared.sessions).
        admin.add_redirect_uri(tenant, api["appId"], f"{self.site_url.rstrip('/')}/auth/callback")
        # Its client credential is the host's managed identity, as infra/ deploys it (a federated credential on the
        # registration); a client secret only where there is no identity.
        console_secret = None
        if self.federation is not None:
            admin.add_federated_credential(tenant, api["appId"], "app-connections-console", self.federation.issuer,
                                           self.federation.principal_id)
        else:
            console_secret = admin.add_secret(tenant, api["appId"], display_name="console sign-in")
        for upn, (name, roles) in DEMO_USERS.items():
            person = admin.add_user(tenant, upn, name)
            for role in roles:
                admin.assign_role(tenant, api["appId"], person["id"], role)
        access = ApiAccess(
            standin_url=self.standin.url,
            ca_path=str(self.standin.ca_path),
            tenant_id=tenant,
            api_app_id=api["appId"],
            identifier_uri=api["identifierUri"],
            daemon_client_id=daemon["appId"],
            daemon_client_secret=secret["secretText"],
            daemon_principal_id=daemon["servicePrincipalId"],
            user_principal_name=user["userPrincipalName"],
            user_id=user["id"],
        )
        access.save(self.api_access_path)
        self.settings["AUTH_TENANT_ID"] = tenant
        self.settings["AUTH_AUDIENCE"] = access.api_app_id
        if console_secret is not None:
            self.settings["CONSOLE_CLIENT_SECRET"] = console_secret["secretText"]
        self.api = access
        return access

    @property
    def api_access_path(self) -> Path:
        return self.state_dir / AUTH_FILE

    @property
    def standin_state_path(self) -> Path:
        return self.state_dir / STANDIN_STATE_FILE

    def apply(self, environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
        """Put the settings into the environment (for a host in this process)."""
        environ.update(self.settings)

    def stop(self) -> None:
        """Stop everything, Azurite last and whatever happens before (it runs in a session of its own, which the
        terminal's Ctrl+C does not reach); a second Ctrl+C meanwhile is ignored, so that nothing is left running
        and, with ``persist``, the stand-in's state is saved."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            if self.api is not None:  # its stand-in URL and daemon secret are of no use once the stand-in is gone
                self.api_access_path.unlink(missing_ok=True)
                self.api = None
            if self.standin is not None:
                try:
                    if self.persist:
                        save_state(self.standin.state, self.standin_state_path)
                finally:
                    self.standin.stop()
                    self.standin = None
        finally:
            try:
                if self.azurite is not None:
                    self.azurite.stop()
                    self.azurite = None
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> LocalEnvironment:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
