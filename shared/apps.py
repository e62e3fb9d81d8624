"""The spec table: one entry per app drives every route, method and setting.

Adding a fourth app is one more ``AppSpec`` in ``APPS``, not a copy of a module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.settings import Settings


class Method(StrEnum):
    OAUTH = "oauth"
    CLIENT_SECRET = "client-secret"
    CERTIFICATE = "certificate"
    # Secretless: the service signs in as the customer's application with a client assertion that is its own
    # managed identity's token (workload identity federation). Nothing is stored in Key Vault.
    FEDERATED = "federated"


@dataclass(frozen=True)
class MethodSpec:
    """What differs between methods, once: drives storage, rotation, health and migration."""

    method: Method
    # Secret material goes to Key Vault (False: nothing to store, and nothing to rotate).
    stores_secret: bool = True
    # A connection of this method may move to the federated method in one step (migrate-to-federated).
    migrates_to_federated: bool = False
    # The credential has an end date (False: it never expires; health still validates it).
    expires: bool = True


METHODS: dict[Method, MethodSpec] = {
    spec.method: spec
    for spec in (
        MethodSpec(Method.OAUTH),
        MethodSpec(Method.CLIENT_SECRET, migrates_to_federated=True),
        MethodSpec(Method.CERTIFICATE, migrates_to_federated=True),
        MethodSpec(Method.FEDERATED, stores_secret=False, expires=False),
    )
}


def method_spec(method: Method | str) -> MethodSpec:
    return METHODS[Method(method)]


@dataclass(frozen=True)
class Permission:
    api: str
    name: str
    kind: str  # "Application" or "Delegated"


@dataclass(frozen=True)
class AppSpec:
    id: str
    name: str
    # The resource whose ``/.default`` scope a token is acquired for. ``None`` means Microsoft Graph,
    # whose endpoint is a setting (sovereign clouds and the local stand-in).
    resource: str | None
    methods: tuple[Method, ...]
    oauth_setting_prefix: str
    permissions: tuple[Permission, ...]
    # Rotated through Microsoft Graph on the app registration: addPassword/removePassword (a permission is needed),
    # addKey/removeKey with proofs of possession (an application may roll its own keys without one).
    rotation_methods: tuple[Method, ...] = (Method.CLIENT_SECRET, Method.CERTIFICATE)
    # What the application's own service principal needs on the target, for the methods that sign in as it (client
    # secret, certificate, federated): the delegated permissions above do nothing for its app-only tokens, and a
    # validation checks the sign-in only.
    resource_access: str = ""

    def scope(self, settings: Settings) -> str:
        """The ``/.default`` scope in the configured cloud (``AZURE_CLOUD``; ``resource`` is the public cloud's)."""
        return settings.scope_for(self.resource)

    def oauth_scope(self, settings: Settings) -> str:
        """The delegated scope asked for in the OAuth authorization-code flow."""
        return self.scope(settings)


_ALL_METHODS = (Method.OAUTH, Method.CLIENT_SECRET, Method.CERTIFICATE, Method.FEDERATED)
_GRAPH_PERMISSIONS = (
    Permission("Microsoft Graph", "Application.ReadWrite.All", "Application"),
    Permission("Microsoft Graph", "Application.ReadWrite.OwnedBy", "Application"),
    Permission("Microsoft Graph", "Application.ReadWrite.All", "Delegated"),
    Permission("Microsoft Graph", "Directory.ReadWrite.All", "Delegated"),
    Permission("Microsoft Graph", "User.Read", "Delegated"),
)

APPS: dict[str, AppSpec] = {
    spec.id: spec
    for spec in (
        AppSpec(
            id="azure-key-vault",
            name="Azure Key Vault",
            resource="https://vault.azure.net",
            methods=_ALL_METHODS,
            oauth_setting_prefix="INF_APP_CONNECTION_AZURE_KEY_VAULT",
            permissions=(Permission("Azure Key Vault", "user_impersonation", "Delegated"),),
            resource_access="An Azure role on the target vault for the application's service principal: Key Vault "
                            "Secrets User to read secrets, Key Vault Secrets Officer to change them (or an access "
                            "policy, on a vault that uses them).",
        ),
        AppSpec(
            id="azure-app-configuration",
            name="Azure App Configuration",
            resource="https://azconfig.io",
            methods=_ALL_METHODS,
            oauth_setting_prefix="INF_APP_CONNECTION_AZURE_APP_CONFIGURATION",
            permissions=tuple(
                Permission("Azure App Configuration", name, "Delegated")
                for name in ("KeyValue.Delete", "KeyValue.Read", "KeyValue.Write")
            ),
            resource_access="An Azure role on the target App Configuration store for the application's service "
                            "principal: App Configuration Data Reader to read key-values, App Configuration Data "
                            "Owner to change them.",
        ),
        AppSpec(
            id="azure-client-secrets",
            name="Azure Client Secrets",
            resource=None,
            methods=_ALL_METHODS,
            oauth_setting_prefix="INF_APP_CONNECTION_AZURE_CLIENT_SECRETS",
            permissions=_GRAPH_PERMISSIONS,
            resource_access="Admin consent to the Microsoft Graph application permission; with "
                            "Application.ReadWrite.OwnedBy, the application manages only the app registrations it "
                            "is an owner of.",
        ),
    )
}


def find_app(app_id: str) -> AppSpec | None:
    return APPS.get(app_id)
