"""A whole local environment: Azurite, the Entra/Graph/Key Vault stand-in, and the settings that wire the
service to them. ``python -m localdev up`` and the end-to-end tests both build it here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from localdev.azurite import Azurite
from localdev.standin import StandIn
from shared.apps import APPS


@dataclass
class ServiceIdentity:
    tenant_id: str
    client_id: str
    client_secret: str


@dataclass
class LocalEnvironment:
    """Starts Azurite and the stand-in; :attr:`settings` are the app settings that point the service at them."""

    state_dir: Path
    standin_port: int = 0
    azurite_port: int = 0
    table_prefix: str = "AppConn"
    sweep_schedule: str = "0 */5 * * * *"
    # The service's public URL: the OAuth redirect URI registered on the instance apps is built from it.
    site_url: str = "http://localhost:7071"
    azurite: Azurite | None = None
    standin: StandIn | None = None
    identity: ServiceIdentity | None = None
    settings: dict[str, str] = field(default_factory=dict)
    # The instance's own app registrations for the OAuth method, by setting prefix (one per app).
    oauth_clients: dict[str, ServiceIdentity] = field(default_factory=dict)

    def start(self) -> LocalEnvironment:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.azurite = Azurite(self.azurite_port).start()
            self.standin = StandIn(port=self.standin_port, ca_dir=self.state_dir).start()
            admin = self.standin.admin
            tenant = admin.add_tenant()
            admin.set_vault_tenant(tenant)
            app = admin.add_app(tenant, display_name="app-connections-service")
            secret = admin.add_secret(tenant, app["appId"], display_name="local service identity")
            self.identity = ServiceIdentity(tenant, app["appId"], secret["secretText"])
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
            "SITE_URL": self.site_url.rstrip("/"),
            "SSL_CERT_FILE": ca,
            "REQUESTS_CA_BUNDLE": ca,
        }
        for prefix, client in self.oauth_clients.items():
            self.settings[f"{prefix}_CLIENT_ID"] = client.client_id
            self.settings[f"{prefix}_CLIENT_SECRET"] = client.client_secret
        return self

    def apply(self, environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
        """Put the settings into the environment (for a host in this process)."""
        environ.update(self.settings)

    def stop(self) -> None:
        if self.standin is not None:
            self.standin.stop()
            self.standin = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None

    def __enter__(self) -> LocalEnvironment:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
