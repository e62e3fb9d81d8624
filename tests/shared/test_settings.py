"""Settings are read from the environment in one place, with safe defaults and clear errors."""

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


def test_no_secret_setting_appears_in_the_settings_repr():
    secrets = {"STORE_CS": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==",
               "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "kv-client-secret",
               "NOTIFY_WEBHOOK_SECRET": "webhook-secret", "CONSOLE_CLIENT_SECRET": "console-secret"}
    settings = load_settings({**secrets, "STATE_STORAGE": "STORE_CS",
                              "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "kv-client-id"})
    assert settings.oauth_client("INF_APP_CONNECTION_AZURE_KEY_VAULT").client_secret == "kv-client-secret"
    assert settings.storage.connection_string == secrets["STORE_CS"]
    shown = repr(settings)
    assert "kv-client-id" in shown and "AppConn" in shown
    assert [name for name, value in secrets.items() if value in shown or "c2VjcmV0LWtleQ" in shown] == []
