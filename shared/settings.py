"""Typed settings, read from the environment in one place, once per process.

Every setting the service reads is named here and documented in the README's
configuration table (OpenTelemetry's own, such as ``OTEL_TRACES_SAMPLER``, which its SDK reads, are in
docs/telemetry.md; the timers' schedules are read by the Functions host, TLS trust by the TLS libraries, and
azure-identity's own variables are read here only to tell which credential it signs in with). Nothing else in
the package reads a setting from ``os.environ``; the log redaction (``shared.redaction``) looks through it once
only to learn the secret values it must never print.

``AZURE_CLOUD`` (``AzurePublicCloud``, ``AzureUSGovernment`` or ``AzureChinaCloud``; :data:`CLOUDS`) sets the
authority host, the Graph endpoint, the Key Vault and App Configuration resources and the token-exchange audience
of a federated assertion; ``AZURE_AUTHORITY_HOST`` and ``GRAPH_ENDPOINT`` still override the first two. Code that
asks for a token names the resource as the public cloud does and gets this cloud's scope from
:meth:`Settings.scope_for` (``shared.apps.AppSpec.scope`` should return ``settings.scope_for(self.resource)``);
the federated method reads :attr:`Settings.token_exchange_audience`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

AZURITE_ACCOUNT = "devstoreaccount1"
# The well-known, public development key of the Azurite emulator (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_TABLE_ENDPOINT = "http://127.0.0.1:10002/devstoreaccount1"

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com"


class Cloud(NamedTuple):
    """The endpoints and audiences of one Azure cloud (``AZURE_CLOUD``): constant, public data (a named tuple
    costs a cold start less to define than a dataclass)."""

    name: str
    authority_host: str
    graph_endpoint: str
    key_vault_resource: str  # the resource whose /.default scope Key Vault tokens are for
    app_configuration_resource: str
    token_exchange_audience: str  # the audience of a managed identity's token used as a federated assertion
    storage_suffix: str  # of Table Storage endpoints built from an account name ({account}.table.{suffix})


# Sources: azure-identity's ``AzureAuthorityHosts`` (login.microsoftonline.com, login.microsoftonline.us,
# login.chinacloudapi.cn); Microsoft Graph national cloud deployments
# (https://learn.microsoft.com/graph/deployments: graph.microsoft.com, graph.microsoft.us,
# microsoftgraph.chinacloudapi.cn); Key Vault's national-cloud endpoints
# (https://learn.microsoft.com/azure/key-vault/general/about-keys-secrets-certificates: vault.azure.net,
# vault.usgovcloudapi.net, vault.azure.cn); App Configuration's Entra ID audiences
# (https://learn.microsoft.com/azure/azure-app-configuration/concept-enable-rbac and the SDKs'
# ``KnownAppConfigAudience``: appconfig.azure.us, appconfig.azure.cn; the public cloud keeps https://azconfig.io,
# which App Configuration still accepts, as the service has always asked for it); workload identity federation's
# token-exchange audiences (https://learn.microsoft.com/entra/workload-id/workload-identity-federation:
# api://AzureADTokenExchange, api://AzureADTokenExchangeUSGov, api://AzureADTokenExchangeChina); Azure Storage's
# endpoint suffixes (azure-identity's and the CLI's cloud definitions: core.windows.net, core.usgovcloudapi.net,
# core.chinacloudapi.cn).
CLOUDS: dict[str, Cloud] = {
    cloud.name: cloud
    for cloud in (
        Cloud(
            "AzurePublicCloud",
            DEFAULT_AUTHORITY_HOST,
            DEFAULT_GRAPH_ENDPOINT,
            "https://vault.azure.net",
            "https://azconfig.io",
            "api://AzureADTokenExchange",
            "core.windows.net",
        ),
        Cloud(
            "AzureUSGovernment",
            "https://login.microsoftonline.us",
            "https://graph.microsoft.us",
            "https://vault.usgovcloudapi.net",
            "https://appconfig.azure.us",
            "api://AzureADTokenExchangeUSGov",
            "core.usgovcloudapi.net",
        ),
        Cloud(
            "AzureChinaCloud",
            "https://login.chinacloudapi.cn",
            "https://microsoftgraph.chinacloudapi.cn",
            "https://vault.azure.cn",
            "https://appconfig.azure.cn",
            "api://AzureADTokenExchangeChina",
            "core.chinacloudapi.cn",
        ),
    )
}
DEFAULT_CLOUD = "AzurePublicCloud"
# The public cloud's resources, as app specs name them (shared.apps), and what each cloud calls them.
PUBLIC_KEY_VAULT_RESOURCE = CLOUDS[DEFAULT_CLOUD].key_vault_resource
PUBLIC_APP_CONFIGURATION_RESOURCE = CLOUDS[DEFAULT_CLOUD].app_configuration_resource
DEFAULT_SITE_URL = "http://localhost:7071"
DEFAULT_TABLE_PREFIX = "AppConn"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class StorageSettings:
    """Where the state tables live: a connection string, or an endpoint reached with an identity."""

    connection_string: str | None = field(default=None, repr=False)  # holds the account key
    table_service_uri: str | None = None
    # The service's own user-assigned managed identity, to Tables and to Key Vault alike: ``<NAME>__clientId``
    # (the host's convention for its storage), else ``AZURE_CLIENT_ID`` (azure-identity's); None: system-assigned.
    managed_identity_client_id: str | None = None


@dataclass(frozen=True)
class ManagedIdentityEndpoint:
    """The host's local token endpoint of the app's managed identities (``IDENTITY_ENDPOINT``, as Azure Functions
    and App Service provide it), asked with ``header`` (``IDENTITY_HEADER``, a secret of the host, sent as
    ``X-IDENTITY-HEADER``: never logged)."""

    url: str
    header: str = field(repr=False)


@dataclass(frozen=True)
class OAuthClient:
    """The instance's own app registration for one app's OAuth method."""

    client_id: str | None
    client_secret: str | None = field(repr=False)

    @property
    def configured(self) -> bool:
        return bool(self.client_id and self.client_secret)


@dataclass(frozen=True)
class ConsoleSettings:
    """The console's sign-in (``shared.sessions``): the confidential client is the API registration itself
    (AUTH_AUDIENCE), authenticated by the managed identity's federated credential when
    ``FEDERATION_IDENTITY_CLIENT_ID`` is set, else by ``CONSOLE_CLIENT_SECRET`` (a Key Vault reference)."""

    session_absolute_hours: float = 8.0
    session_idle_minutes: float = 30.0
    client_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    table_prefix: str
    key_vault_url: str | None
    key_vault_verify_challenge_resource: bool
    authority_host: str
    graph_endpoint: str
    site_url: str
    oauth_clients: Mapping[str, OAuthClient] = field(default_factory=dict)
    rotation_max_concurrency: int = 8
    rotation_test_timeout_seconds: float = 300.0
    # How long after Entra ID first refused a credential whose removal was sent it must still refuse it for the
    # removal to count as done (a credential just added reaches every part of Entra ID within minutes).
    removal_confirmation_seconds: float = 300.0
    rotation_sweep_budget_seconds: float = 240.0
    # The API registration whose access tokens every route but the OAuth callback requires (shared.auth).
    auth_tenant_id: str | None = None
    auth_audience: str | None = None
    audit_retention_days: int = 365
    health_check_interval_hours: float = 24.0
    expiry_warning_days: int = 30
    # A Teams or Slack workflow URL is a bearer credential (whoever holds it can post): never shown. An unresolved
    # Key Vault reference stays as it is (KEY_VAULT_REFERENCE): the notices wait for it, they are not dropped.
    notify_webhook_url: str | None = field(default=None, repr=False)
    notify_webhook_secret: str | None = field(default=None, repr=False)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    # The user-assigned managed identity whose tokens are the client assertions of federated connections
    # (issue 14, the federated method): its client id, its principal (object) id, the subject of the federated
    # identity credential, and its tenant, the issuer's. All three, or the federated method is unavailable.
    federation_identity_client_id: str | None = None
    federation_identity_principal_id: str | None = None
    federation_identity_tenant_id: str | None = None
    # AZURE_CLOUD: the cloud whose Key Vault and App Configuration resources tokens are asked for, and the
    # audience of the federated assertion (the authority host and Graph endpoint above follow it too, unless
    # AZURE_AUTHORITY_HOST / GRAPH_ENDPOINT override them).
    azure_cloud: str = DEFAULT_CLOUD
    key_vault_resource: str = PUBLIC_KEY_VAULT_RESOURCE
    app_configuration_resource: str = PUBLIC_APP_CONFIGURATION_RESOURCE
    token_exchange_audience: str = CLOUDS[DEFAULT_CLOUD].token_exchange_audience
    # IDENTITY_ENDPOINT / IDENTITY_HEADER, when the service's identity is the host's managed identity (see
    # _managed_identity_endpoint): the read path then gets its Table Storage token there, without azure-identity.
    managed_identity_endpoint: ManagedIdentityEndpoint | None = None

    def scope_for(self, public_resource: str | None) -> str:
        """The ``/.default`` scope in this cloud for a resource named by its public-cloud identifier (Key Vault's
        or App Configuration's, as ``shared.apps`` names them), or for Microsoft Graph when None."""
        if public_resource is None:
            return f"{self.graph_endpoint}/.default"
        resource = {
            PUBLIC_KEY_VAULT_RESOURCE: self.key_vault_resource,
            PUBLIC_APP_CONFIGURATION_RESOURCE: self.app_configuration_resource,
        }.get(public_resource.rstrip("/"), public_resource)
        return f"{resource}/.default"

    @property
    def expiry_warning(self) -> timedelta:
        """How long before its end a credential nothing renews is ``expiring`` (``EXPIRY_WARNING_DAYS``)."""
        return timedelta(days=self.expiry_warning_days)

    @property
    def health_check_interval(self) -> timedelta:
        return timedelta(hours=self.health_check_interval_hours)

    @property
    def oauth_redirect_uri(self) -> str:
        return f"{self.site_url}/organization/app-connections/azure/oauth/callback"

    def oauth_client(self, setting_prefix: str) -> OAuthClient:
        return self.oauth_clients.get(setting_prefix, OAuthClient(None, None))

    @property
    def authority_is_microsoft(self) -> bool:
        """True for Microsoft's public and sovereign authorities, where instance discovery works."""
        host = self.authority_host.split("://", 1)[-1].split("/", 1)[0].lower()
        return host.startswith("login.") and (
            host.endswith(".microsoftonline.com")
            or host.endswith(".microsoftonline.us")
            or host.endswith(".chinacloudapi.cn")
        )


# The OAuth settings of the reference docs, one pair per app (see shared.apps).
OAUTH_SETTING_PREFIXES = (
    "INF_APP_CONNECTION_AZURE_KEY_VAULT",
    "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION",
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS",
)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _https_url(env: Mapping[str, str], name: str, default: str | None, *, base: bool = True) -> str | None:
    """An https:// URL; a ``base`` one (paths are added to it) without its trailing slash, any other as given."""
    raw = (env.get(name) or "").strip() or default
    if raw is None:
        return None
    if not raw.startswith("https://"):
        raise SettingsError(f"{name} must be an https:// URL")
    return raw.rstrip("/") if base else raw


def _storage(env: Mapping[str, str], cloud: Cloud | None = None) -> StorageSettings:
    name = (env.get("STATE_STORAGE") or "AzureWebJobsStorage").strip()
    identity = (env.get(f"{name}__clientId") or "").strip() or (env.get("AZURE_CLIENT_ID") or "").strip() or None
    connection_string = (env.get(name) or "").strip()
    if connection_string:
        if connection_string.replace(" ", "").lower().startswith("usedevelopmentstorage=true"):
            connection_string = (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"TableEndpoint={AZURITE_TABLE_ENDPOINT};"
            )
        return StorageSettings(connection_string=connection_string, managed_identity_client_id=identity)
    uri = (env.get(f"{name}__tableServiceUri") or "").strip()
    account = (env.get(f"{name}__accountName") or "").strip()
    if uri and not _tls_or_loopback(uri):  # the service's bearer token goes there with every request
        raise SettingsError(f"{name}__tableServiceUri must be an https:// URL (http:// only on a loopback address)")
    if not uri and account:
        if not _ACCOUNT_NAME.fullmatch(account):
            raise SettingsError(f"{name}__accountName must be a storage account's name: 3 to 24 lowercase letters "
                                "and digits")
        uri = f"https://{account}.table.{(cloud or CLOUDS[DEFAULT_CLOUD]).storage_suffix}"
    if uri:
        return StorageSettings(
            table_service_uri=uri.rstrip("/"),
            managed_identity_client_id=identity,
        )
    raise SettingsError(
        f"Table Storage is not configured: set {name} to a connection string "
        f"(UseDevelopmentStorage=true locally) or {name}__tableServiceUri for a managed identity"
        + ("" if name != "AzureWebJobsStorage" else "; STATE_STORAGE names another setting")
    )


_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")


def _tls_or_loopback(url: str) -> bool:
    """An https:// URL, or an http:// one on a loopback address (Azurite, a test's server)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def _whole(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A count (concurrency, days): a whole number, never a fraction silently cut (``8.9`` is not 8)."""
    value = _number(env, name, default, low, high)
    if value != int(value):
        raise SettingsError(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number from {low:g} to {high:g}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be a number from {low:g} to {high:g}")
    return value


def _table_prefix(env: Mapping[str, str]) -> str:
    prefix = (env.get("STATE_TABLE_PREFIX") or DEFAULT_TABLE_PREFIX).strip()
    if not (prefix.isalnum() and prefix[0].isalpha() and len(prefix) <= 40):
        raise SettingsError("STATE_TABLE_PREFIX must be letters and digits, starting with a letter")
    return prefix


KEY_VAULT_REFERENCE = "@Microsoft.KeyVault("  # how App Service leaves a reference it could not resolve


def _webhook_url(env: Mapping[str, str]) -> str | None:
    """NOTIFY_WEBHOOK_URL, posted to as it is; an unresolved Key Vault reference as it is (checked when sent)."""
    raw = (env.get("NOTIFY_WEBHOOK_URL") or "").strip()
    if raw.startswith(KEY_VAULT_REFERENCE):
        return raw
    return _https_url(env, "NOTIFY_WEBHOOK_URL", None, base=False)


def _configured(env: Mapping[str, str], name: str) -> str | None:
    """A setting's value, or None when empty or an unresolved Key Vault reference (App Service leaves the
    ``@Microsoft.KeyVault(...)`` text in place until the secret exists and the identity may read it)."""
    value = (env.get(name) or "").strip()
    if not value or value.startswith(KEY_VAULT_REFERENCE):
        return None
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    site_url = (env.get("SITE_URL") or DEFAULT_SITE_URL).strip().rstrip("/")
    if not site_url.startswith(("https://", "http://")):
        raise SettingsError("SITE_URL must be an absolute http(s) URL")
    cloud = _cloud(env)
    return Settings(
        storage=_storage(env, cloud),
        table_prefix=_table_prefix(env),
        key_vault_url=_https_url(env, "KEY_VAULT_URL", None),
        key_vault_verify_challenge_resource=_bool(env, "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", True),
        authority_host=_https_url(env, "AZURE_AUTHORITY_HOST", cloud.authority_host) or cloud.authority_host,
        graph_endpoint=_https_url(env, "GRAPH_ENDPOINT", cloud.graph_endpoint) or cloud.graph_endpoint,
        site_url=site_url,
        oauth_clients={
            prefix: OAuthClient(
                client_id=_configured(env, f"{prefix}_CLIENT_ID"),
                client_secret=_configured(env, f"{prefix}_CLIENT_SECRET"),
            )
            for prefix in OAUTH_SETTING_PREFIXES
        },
        rotation_max_concurrency=_whole(env, "ROTATION_MAX_CONCURRENCY", 8, 1, 64),
        rotation_test_timeout_seconds=_number(env, "ROTATION_TEST_TIMEOUT_SECONDS", 300, 1, 3600),
        removal_confirmation_seconds=_number(env, "REMOVAL_CONFIRMATION_SECONDS", 300, 0, 3600),
        rotation_sweep_budget_seconds=_number(env, "ROTATION_SWEEP_BUDGET_SECONDS", 240, 1, 3600),
        auth_tenant_id=_auth_tenant(env),
        auth_audience=_configured(env, "AUTH_AUDIENCE"),
        audit_retention_days=_whole(env, "AUDIT_RETENTION_DAYS", 365, 1, 3650),
        health_check_interval_hours=_number(env, "HEALTH_CHECK_INTERVAL_HOURS", 24, 1, 720),
        expiry_warning_days=_whole(env, "EXPIRY_WARNING_DAYS", 30, 1, 365),
        notify_webhook_url=_webhook_url(env),
        notify_webhook_secret=_configured(env, "NOTIFY_WEBHOOK_SECRET"),
        **_federation(env),
        azure_cloud=cloud.name,
        key_vault_resource=cloud.key_vault_resource,
        app_configuration_resource=cloud.app_configuration_resource,
        token_exchange_audience=cloud.token_exchange_audience,
        console=_console(env),
        managed_identity_endpoint=_managed_identity_endpoint(env),
    )


# Environment variables with which azure-identity's (async) DefaultAzureCredential uses another credential before
# the managed identity: EnvironmentCredential's (a secret, a certificate), WorkloadIdentityCredential's.
_CREDENTIALS_BEFORE_MANAGED_IDENTITY = (
    ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"),
    ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH"),
    ("AZURE_FEDERATED_TOKEN_FILE",),
)


def _managed_identity_endpoint(env: Mapping[str, str]) -> ManagedIdentityEndpoint | None:
    """IDENTITY_ENDPOINT and IDENTITY_HEADER (set by Azure Functions and App Service, and by ``localdev`` for the
    stand-in's endpoint), when they are what the service's identity (``AzureClients.service_credential``,
    DefaultAzureCredential) would sign in with: not on Service Fabric (IDENTITY_SERVER_THUMBPRINT, another
    protocol), not when DefaultAzureCredential would use environment or workload-identity credentials first, not
    when AZURE_TOKEN_CREDENTIALS excludes the managed identity. Otherwise None (the read path then uses
    DefaultAzureCredential as the rest of the service does)."""
    url = (env.get("IDENTITY_ENDPOINT") or "").strip()
    header = (env.get("IDENTITY_HEADER") or "").strip()
    if not url or not header or not url.startswith(("http://", "https://")):
        return None
    if (env.get("IDENTITY_SERVER_THUMBPRINT") or "").strip():
        return None
    if any(all((env.get(name) or "").strip() for name in names) for names in _CREDENTIALS_BEFORE_MANAGED_IDENTITY):
        return None
    if (env.get("AZURE_TOKEN_CREDENTIALS") or "").strip().lower() not in ("", "prod", "managedidentitycredential"):
        return None
    return ManagedIdentityEndpoint(url, header)


def _console(env: Mapping[str, str]) -> ConsoleSettings:
    return ConsoleSettings(
        session_absolute_hours=_number(env, "CONSOLE_SESSION_ABSOLUTE_HOURS", 8, 0.25, 24),
        session_idle_minutes=_number(env, "CONSOLE_SESSION_IDLE_MINUTES", 30, 1, 480),
        client_secret=_configured(env, "CONSOLE_CLIENT_SECRET"),
    )


def _cloud(env: Mapping[str, str]) -> Cloud:
    """AZURE_CLOUD: AzurePublicCloud (default), AzureUSGovernment or AzureChinaCloud (case-insensitive)."""
    raw = (env.get("AZURE_CLOUD") or "").strip()
    if not raw:
        return CLOUDS[DEFAULT_CLOUD]
    found = next((cloud for name, cloud in CLOUDS.items() if name.lower() == raw.lower()), None)
    if found is None:
        raise SettingsError(f"AZURE_CLOUD must be one of {', '.join(CLOUDS)}, not {raw!r}")
    return found


_DOMAIN_NAME = re.compile(r"^(?=.{4,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]\Z",
                          re.IGNORECASE)


def _auth_tenant(env: Mapping[str, str]) -> str | None:
    """AUTH_TENANT_ID: the one tenant whose tokens are accepted, by its ID or one of its domain names. Not
    ``common``, ``organizations`` or ``consumers``: their discovery documents would make the issuer another tenant's
    (``consumers``: personal Microsoft accounts), and nothing else goes into the discovery document's URL."""
    value = _configured(env, "AUTH_TENANT_ID")
    if value is not None and not (_GUID.match(value) or _DOMAIN_NAME.match(value)):
        raise SettingsError("AUTH_TENANT_ID must be the API registration's tenant, by its ID (a GUID) or a domain "
                            "name of it; not common, organizations or consumers")
    return value


def _federation(env: Mapping[str, str]) -> dict[str, str | None]:
    """FEDERATION_IDENTITY_CLIENT_ID / _PRINCIPAL_ID / _TENANT_ID: GUIDs, each optional (absent: no federated
    method)."""
    values: dict[str, str | None] = {}
    for suffix in ("CLIENT_ID", "PRINCIPAL_ID", "TENANT_ID"):
        name = f"FEDERATION_IDENTITY_{suffix}"
        value = _configured(env, name)
        if value is not None and not _GUID.match(value):
            raise SettingsError(f"{name} must be a GUID")
        values[f"federation_identity_{suffix.lower()}"] = value.lower() if value else None
    return values


@dataclass(frozen=True)
class TelemetrySettings:
    """Application Insights export (see ``shared.telemetry``): off without a connection string."""

    connection_string: str | None = None
    # With ``Authorization=AAD`` in APPLICATIONINSIGHTS_AUTHENTICATION_STRING: the managed identity's client id
    # ("" for the system-assigned one); None: no Entra ID authentication.
    aad_client_id: str | None = None
    # OTEL_TRACES_SAMPLER when set (azure-monitor-opentelemetry reads it and its OTEL_TRACES_SAMPLER_ARG itself);
    # without it the service keeps every trace (docs/telemetry.md).
    sampler: str | None = None


def load_telemetry_settings(env: Mapping[str, str] | None = None) -> TelemetrySettings:
    """The telemetry settings alone (read at start-up, before and apart from the service's other settings)."""
    env = os.environ if env is None else env
    connection_string = _configured(env, "APPLICATIONINSIGHTS_CONNECTION_STRING")
    parts: dict[str, str] = {}
    for item in (env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") or "").split(";"):
        key, _, value = item.partition("=")
        if key.strip():
            parts[key.strip().lower()] = value.strip()
    aad = parts.get("authorization", "").lower() == "aad"
    sampler = env.get("OTEL_TRACES_SAMPLER") or None  # as the distro reads it: " always_on" is not always_on
    return TelemetrySettings(connection_string, parts.get("clientid", "") if aad else None, sampler)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()


def reset_settings() -> None:
    """Forget the cached settings (tests that change the environment call this)."""
    get_settings.cache_clear()
