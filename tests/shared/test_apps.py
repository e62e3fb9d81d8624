"""One spec table drives all three apps."""

from shared.apps import APPS, METHODS, Method
from shared.settings import load_settings

SETTINGS = load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true", "GRAPH_ENDPOINT": "https://graph.example"})


def test_three_apps_with_the_scopes_of_the_design():
    assert {app: spec.scope(SETTINGS) for app, spec in APPS.items()} == {
        "azure-key-vault": "https://vault.azure.net/.default",
        "azure-app-configuration": "https://azconfig.io/.default",
        "azure-client-secrets": "https://graph.example/.default",
    }


def test_every_app_offers_every_method_and_rotates_client_secrets():
    for spec in APPS.values():
        assert set(spec.methods) == {Method.OAUTH, Method.CLIENT_SECRET, Method.CERTIFICATE, Method.FEDERATED}
        assert Method.CLIENT_SECRET in spec.rotation_methods
        assert Method.FEDERATED not in spec.rotation_methods  # nothing to rotate


def test_oauth_settings_are_the_reference_names():
    assert [spec.oauth_setting_prefix for spec in APPS.values()] == [
        "INF_APP_CONNECTION_AZURE_KEY_VAULT",
        "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION",
        "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS",
    ]


def test_permissions_are_those_the_reference_asks_users_to_grant():
    names = {app: {p.name for p in spec.permissions} for app, spec in APPS.items()}
    assert names["azure-key-vault"] == {"user_impersonation"}
    assert names["azure-app-configuration"] == {"KeyValue.Delete", "KeyValue.Read", "KeyValue.Write"}
    assert "Application.ReadWrite.OwnedBy" in names["azure-client-secrets"]


def test_only_the_federated_method_stores_no_secret_and_never_expires_and_secrets_and_certificates_migrate_to_it():
    assert [m for m, spec in METHODS.items() if not spec.stores_secret] == [Method.FEDERATED]
    assert [m for m, spec in METHODS.items() if not spec.expires] == [Method.FEDERATED]
    migrating = [m for m, spec in METHODS.items() if spec.migrates_to_federated]
    assert migrating == [Method.CLIENT_SECRET, Method.CERTIFICATE]
