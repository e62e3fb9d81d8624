"""AZURE_CLOUD picks every endpoint and audience of one Azure cloud; the individual settings still override it;
the federation identity settings are GUIDs."""

import pytest

from shared.apps import APPS
from shared.settings import SettingsError, load_settings

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}

# (AZURE_CLOUD, authority host, Graph scope, Key Vault scope, App Configuration scope, token-exchange audience)
CLOUDS = [
    (
        "AzurePublicCloud",
        "https://login.microsoftonline.com",
        "https://graph.microsoft.com/.default",
        "https://vault.azure.net/.default",
        "https://azconfig.io/.default",
        "api://AzureADTokenExchange",
    ),
    (
        "AzureUSGovernment",
        "https://login.microsoftonline.us",
        "https://graph.microsoft.us/.default",
        "https://vault.usgovcloudapi.net/.default",
        "https://appconfig.azure.us/.default",
        "api://AzureADTokenExchangeUSGov",
    ),
    (
        "AzureChinaCloud",
        "https://login.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn/.default",
        "https://vault.azure.cn/.default",
        "https://appconfig.azure.cn/.default",
        "api://AzureADTokenExchangeChina",
    ),
]


@pytest.mark.parametrize(("cloud", "authority", "graph", "vault", "appconfig", "exchange"), CLOUDS)
def test_each_cloud_sets_the_authority_graph_key_vault_app_configuration_and_token_exchange(
    cloud: str, authority: str, graph: str, vault: str, appconfig: str, exchange: str
) -> None:
    settings = load_settings({**BASE, "AZURE_CLOUD": cloud})
    assert settings.azure_cloud == cloud
    assert settings.authority_host == authority
    assert settings.scope_for(None) == graph
    assert settings.scope_for("https://vault.azure.net") == vault
    assert settings.scope_for("https://azconfig.io") == appconfig
    assert settings.token_exchange_audience == exchange
    assert settings.authority_is_microsoft


def test_the_public_cloud_is_the_default() -> None:
    assert load_settings(BASE) == load_settings({**BASE, "AZURE_CLOUD": "AzurePublicCloud"})
    assert load_settings({**BASE, "AZURE_CLOUD": "azureusgovernment"}).azure_cloud == "AzureUSGovernment"


def test_authority_host_and_graph_endpoint_settings_override_the_cloud() -> None:
    settings = load_settings(
        {
            **BASE,
            "AZURE_CLOUD": "AzureChinaCloud",
            "AZURE_AUTHORITY_HOST": "https://127.0.0.1:8443",
            "GRAPH_ENDPOINT": "https://127.0.0.1:8443/",
        }
    )
    assert settings.authority_host == "https://127.0.0.1:8443"
    assert settings.scope_for(None) == "https://127.0.0.1:8443/.default"
    assert settings.scope_for("https://vault.azure.net") == "https://vault.azure.cn/.default"
    assert settings.token_exchange_audience == "api://AzureADTokenExchangeChina"


def test_a_resource_of_no_cloud_table_is_kept_as_it_is() -> None:
    settings = load_settings({**BASE, "AZURE_CLOUD": "AzureUSGovernment"})
    assert settings.scope_for("api://11111111-1111-1111-1111-111111111111") == (
        "api://11111111-1111-1111-1111-111111111111/.default"
    )


def test_an_unknown_cloud_is_refused_naming_the_choices() -> None:
    with pytest.raises(SettingsError, match="AZURE_CLOUD must be one of AzurePublicCloud, AzureUSGovernment"):
        load_settings({**BASE, "AZURE_CLOUD": "AzureGermanCloud"})


def test_federation_identity_settings_are_guids_read_in_lower_case() -> None:
    settings = load_settings(
        {
            **BASE,
            "FEDERATION_IDENTITY_CLIENT_ID": "AAAAAAAA-1111-1111-1111-111111111111",
            "FEDERATION_IDENTITY_PRINCIPAL_ID": "bbbbbbbb-2222-2222-2222-222222222222",
            "FEDERATION_IDENTITY_TENANT_ID": "cccccccc-3333-3333-3333-333333333333",
        }
    )
    assert settings.federation_identity_client_id == "aaaaaaaa-1111-1111-1111-111111111111"
    assert settings.federation_identity_principal_id == "bbbbbbbb-2222-2222-2222-222222222222"
    assert settings.federation_identity_tenant_id == "cccccccc-3333-3333-3333-333333333333"
    assert load_settings(BASE).federation_identity_client_id is None


@pytest.mark.parametrize("name", ["CLIENT_ID", "PRINCIPAL_ID", "TENANT_ID"])
def test_a_federation_identity_setting_that_is_not_a_guid_is_refused_by_name(name: str) -> None:
    with pytest.raises(SettingsError, match=f"FEDERATION_IDENTITY_{name} must be a GUID"):
        load_settings({**BASE, f"FEDERATION_IDENTITY_{name}": "not-a-guid"})


@pytest.mark.parametrize(("cloud", "authority", "graph", "vault", "appconfig", "exchange"), CLOUDS)
def test_each_app_asks_for_its_resource_s_scope_in_the_configured_cloud(
    cloud: str, authority: str, graph: str, vault: str, appconfig: str, exchange: str
) -> None:
    del authority, exchange
    settings = load_settings({**BASE, "AZURE_CLOUD": cloud})
    assert APPS["azure-key-vault"].scope(settings) == vault
    assert APPS["azure-app-configuration"].scope(settings) == appconfig
    assert APPS["azure-client-secrets"].scope(settings) == graph


@pytest.mark.parametrize(
    ("cloud", "endpoint"),
    [
        ("AzurePublicCloud", "https://acct.table.core.windows.net"),
        ("AzureUSGovernment", "https://acct.table.core.usgovcloudapi.net"),
        ("AzureChinaCloud", "https://acct.table.core.chinacloudapi.cn"),
    ],
)
def test_a_storage_account_name_gives_the_cloud_s_table_endpoint(cloud: str, endpoint: str) -> None:
    settings = load_settings({"AzureWebJobsStorage__accountName": "acct", "AZURE_CLOUD": cloud})
    assert settings.storage.table_service_uri == endpoint
