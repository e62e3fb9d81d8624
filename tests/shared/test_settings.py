"""Settings are read from the environment in one place, with safe defaults and clear errors."""

from pathlib import Path

import pytest

from shared.settings import AZURITE_TABLE_ENDPOINT, SettingsError, load_settings

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_defaults_point_at_public_azure_and_local_site():
    settings = load_settings(BASE)
    assert settings.authority_host == "https://login.microsoftonline.com"
    assert settings.graph_endpoint == "https://graph.microsoft.com"
    assert settings.key_vault_verify_challenge_resource is True
    assert settings.oauth_redirect_uri == "http://localhost:7071/organization/app-connections/azure/oauth/callback"
    assert settings.authority_is_microsoft


def test_development_storage_expands_to_azurite():
    settings = load_settings(BASE)
    assert settings.storage.connection_string is not None
    assert AZURITE_TABLE_ENDPOINT in settings.storage.connection_string


def test_state_storage_names_another_connection_setting_with_identity():
    settings = load_settings(
        {
            "STATE_STORAGE": "StateStore",
            "StateStore__tableServiceUri": "https://acct.table.core.windows.net/",
            "StateStore__clientId": "11111111-1111-1111-1111-111111111111",
        }
    )
    assert settings.storage.connection_string is None
    assert settings.storage.table_service_uri == "https://acct.table.core.windows.net"
    assert settings.storage.managed_identity_client_id == "11111111-1111-1111-1111-111111111111"


def test_account_name_alone_gives_the_table_endpoint():
    settings = load_settings({"AzureWebJobsStorage__accountName": "acct"})
    assert settings.storage.table_service_uri == "https://acct.table.core.windows.net"


def test_missing_storage_names_the_setting():
    with pytest.raises(SettingsError, match="AzureWebJobsStorage"):
        load_settings({})


@pytest.mark.parametrize("name", ["KEY_VAULT_URL", "AZURE_AUTHORITY_HOST", "GRAPH_ENDPOINT"])
def test_endpoints_must_be_https(name):
    with pytest.raises(SettingsError, match=name):
        load_settings({**BASE, name: "http://127.0.0.1:1"})


@pytest.mark.parametrize("uri", ["http://acct.table.core.windows.net", "http://10.0.0.4:10002/devstoreaccount1",
                                 "ftp://acct.table.core.windows.net", "https://", "acct.table.core.windows.net"])
def test_a_table_endpoint_for_the_identity_s_token_must_be_https(uri: str) -> None:
    """(Review SSRF 2.) The service's bearer token went in clear text to an http:// table endpoint."""
    with pytest.raises(SettingsError, match="AzureWebJobsStorage__tableServiceUri must be an https:// URL"):
        load_settings({"AzureWebJobsStorage__tableServiceUri": uri})


@pytest.mark.parametrize("uri", ["http://127.0.0.1:10002/devstoreaccount1", "http://localhost:10002", "http://[::1]:1"])
def test_a_table_endpoint_on_a_loopback_address_may_be_http(uri: str) -> None:
    assert load_settings({"AzureWebJobsStorage__tableServiceUri": uri}).storage.table_service_uri == uri


@pytest.mark.parametrize("account", ["evil.example/x?", "Acct", "ab", "a" * 25, "acct.table.core.windows.net#"])
def test_a_storage_account_name_is_a_name(account: str) -> None:
    with pytest.raises(SettingsError, match="AzureWebJobsStorage__accountName must be a storage account's name"):
        load_settings({"AzureWebJobsStorage__accountName": account})


@pytest.mark.parametrize("url", ["https://hooks.example/notify/", "https://hooks.example/notify"])
def test_the_webhook_url_is_posted_to_as_given_trailing_slash_included(url):
    # A receiver may need the slash (else it answers with a redirect, which is not followed: nothing arrives).
    assert load_settings({**BASE, "NOTIFY_WEBHOOK_URL": url}).notify_webhook_url == url


def test_a_webhook_url_whose_key_vault_reference_does_not_resolve_is_kept_for_delivery_to_wait_on():
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-cfg.vault.azure.net/secrets/notify-webhook-url/)"
    assert load_settings({**BASE, "NOTIFY_WEBHOOK_URL": reference}).notify_webhook_url == reference
    with pytest.raises(SettingsError, match="NOTIFY_WEBHOOK_URL"):
        load_settings({**BASE, "NOTIFY_WEBHOOK_URL": "http://hooks.example/notify"})


def test_site_url_trailing_slash_does_not_double_in_redirect_uri():
    settings = load_settings({**BASE, "SITE_URL": "https://connections.example.com/"})
    assert settings.oauth_redirect_uri == "https://connections.example.com/organization/app-connections/azure/oauth/callback"


def test_bad_boolean_is_named():
    with pytest.raises(SettingsError, match="KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"):
        load_settings({**BASE, "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "maybe"})


def test_oauth_clients_are_read_per_app_and_configured_only_with_both_values():
    settings = load_settings(
        {
            **BASE,
            "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "id",
            "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "secret",
            "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_ID": "id-only",
        }
    )
    assert settings.oauth_client("INF_APP_CONNECTION_AZURE_KEY_VAULT").configured
    assert not settings.oauth_client("INF_APP_CONNECTION_AZURE_APP_CONFIGURATION").configured
    assert not settings.oauth_client("INF_APP_CONNECTION_AZURE_CLIENT_SECRETS").configured


def test_local_authority_is_not_microsoft():
    assert not load_settings({**BASE, "AZURE_AUTHORITY_HOST": "https://127.0.0.1:8443"}).authority_is_microsoft


def test_table_prefix_must_be_a_valid_table_name_start():
    with pytest.raises(SettingsError, match="STATE_TABLE_PREFIX"):
        load_settings({**BASE, "STATE_TABLE_PREFIX": "9-bad"})


def test_an_unresolved_key_vault_reference_is_not_a_configured_oauth_client():
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/x/)"
    settings = load_settings(
        {
            **BASE,
            "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": reference,
            "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": reference,
        }
    )
    assert not settings.oauth_client("INF_APP_CONNECTION_AZURE_KEY_VAULT").configured


# -- the host's managed-identity endpoint: used exactly where DefaultAzureCredential would use it ---------------------
HOST = {"IDENTITY_ENDPOINT": "http://localhost:8081/msi/token", "IDENTITY_HEADER": "host-secret"}
SECRET = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "s"}


def _dac_uses_app_service_identity() -> bool:
    """Whether azure-identity's DefaultAzureCredential, as the service builds it, would sign in with App Service's
    managed identity: its first configured credential is a ManagedIdentityCredential over App Service's endpoint."""
    from azure.identity.aio import DefaultAzureCredential, EnvironmentCredential, ManagedIdentityCredential

    for credential in DefaultAzureCredential(managed_identity_client_id=None).credentials:
        if isinstance(credential, EnvironmentCredential) and credential._credential is None:
            continue  # not configured
        if type(credential).__name__ == "AsyncFailedDACCredential":
            continue
        if isinstance(credential, ManagedIdentityCredential):
            return type(credential._credential).__name__ == "AppServiceCredential"
        return False
    return False


@pytest.mark.parametrize("env", [
    HOST,  # Azure Functions
    {**HOST, "AZURE_CLIENT_ID": "c"},  # as infra/app/api.bicep sets it: still the managed identity
    {**HOST, **SECRET},  # localdev: environment credentials come first
    {**HOST, "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_CERTIFICATE_PATH": "CERTIFICATE"},
    {**HOST, "AZURE_CLIENT_ID": "c", "AZURE_USERNAME": "u", "AZURE_PASSWORD": "p"},  # not the async credential's
    {**HOST, "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": "/t"},
    {**HOST, "IDENTITY_SERVER_THUMBPRINT": "AB12"},  # Service Fabric: another protocol
    {**HOST, "AZURE_TOKEN_CREDENTIALS": "dev"},
    {**HOST, "AZURE_TOKEN_CREDENTIALS": "prod"},
    {**HOST, "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"},
    {**HOST, "AZURE_TOKEN_CREDENTIALS": "AzureCliCredential"},
    {"IDENTITY_ENDPOINT": HOST["IDENTITY_ENDPOINT"]},  # no header: not App Service
    {},
])
def test_the_managed_identity_endpoint_is_read_exactly_when_default_azure_credential_would_use_it(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    from tests.fakes import make_certificate

    if env.get("AZURE_CLIENT_CERTIFICATE_PATH") == "CERTIFICATE":  # EnvironmentCredential reads it when built
        material = make_certificate()
        (tmp_path / "c.pem").write_text(material["privateKey"] + material["certificateBody"])
        env = {**env, "AZURE_CLIENT_CERTIFICATE_PATH": str(tmp_path / "c.pem")}
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    endpoint = load_settings({**BASE, **env}).managed_identity_endpoint
    assert (endpoint is not None) == _dac_uses_app_service_identity()
    if endpoint is not None:
        assert (endpoint.url, endpoint.header) == (HOST["IDENTITY_ENDPOINT"], HOST["IDENTITY_HEADER"])


def test_the_identity_header_is_not_in_the_settings_repr():
    settings = load_settings({**BASE, **HOST})
    assert settings.managed_identity_endpoint is not None
    assert "host-secret" not in repr(settings)


def test_no_secret_setting_appears_in_the_settings_repr():
    secrets = {"STORE_CS": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==",
               "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "kv-client-secret",
               "NOTIFY_WEBHOOK_SECRET": "webhook-secret", "CONSOLE_CLIENT_SECRET": "console-secret",
               "NOTIFY_WEBHOOK_URL": "https://prod.westus.logic.azure.com/workflows/1/triggers?sig=bearer"}
    settings = load_settings({**secrets, "STATE_STORAGE": "STORE_CS",
                              "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "kv-client-id"})
    assert settings.oauth_client("INF_APP_CONNECTION_AZURE_KEY_VAULT").client_secret == "kv-client-secret"
    assert settings.storage.connection_string == secrets["STORE_CS"]
    shown = repr(settings)
    assert "kv-client-id" in shown and "AppConn" in shown
    assert [name for name, value in secrets.items() if value in shown or "c2VjcmV0LWtleQ" in shown] == []


@pytest.mark.parametrize("name", ["ROTATION_MAX_CONCURRENCY", "AUDIT_RETENTION_DAYS", "EXPIRY_WARNING_DAYS"])
def test_a_count_is_a_whole_number_never_a_fraction_cut_short(name):
    """(Review K.) ``8.9`` concurrent rotations or ``1.5`` days of audit retention were taken as 8 and 1."""
    with pytest.raises(SettingsError, match=f"{name} must be a whole number"):
        load_settings({**BASE, name: "1.5"})
    assert getattr(load_settings({**BASE, name: "2"}), name.lower()) == 2
    assert getattr(load_settings({**BASE, name: "2.0"}), name.lower()) == 2


@pytest.mark.parametrize("tenant", ["72f988bf-86f1-41af-91ab-2d7cd011db47", "contoso.onmicrosoft.com", "contoso.com"])
def test_the_api_s_tenant_is_its_id_or_a_domain_name_of_it(tenant):
    assert load_settings({**BASE, "AUTH_TENANT_ID": tenant}).auth_tenant_id == tenant


@pytest.mark.parametrize("tenant", ["common", "organizations", "consumers", "evil/../x?y=", "contoso.com/",
                                    "contoso", "-a.com", "a" * 300 + ".com"])
def test_the_api_s_tenant_is_one_tenant_and_nothing_else_goes_into_the_discovery_url(tenant):
    """``consumers`` would accept personal Microsoft accounts' tokens (its discovery document names their tenant as
    the issuer); ``common`` and ``organizations`` refused every token; a path went into the URL as it was (review
    U)."""
    with pytest.raises(SettingsError, match="AUTH_TENANT_ID"):
        load_settings({**BASE, "AUTH_TENANT_ID": tenant})
