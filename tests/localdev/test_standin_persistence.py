"""The stand-in's state survives a restart (what ``python -m localdev up --persist`` relies on): a stand-in
loaded from the file another one saved answers the real SDKs as the first did, the directory (apps, their
secrets, removed secrets, certificates, roles, owners, API roles and assignments) and the vault (versions,
deleted secrets) alike. The file holds secrets, so only its owner may read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from localdev.standin import StandIn, make_certificate
from localdev.standin.state import State, StateError, load_state, read_state, save_state

VAULT_SCOPE = "https://vault.azure.net/.default"


@pytest.fixture
def trusted(tmp_path, monkeypatch) -> Path:
    """The CA folder both stand-ins share (as ``up`` keeps it in .localdev), trusted by the SDKs."""
    ca_dir = tmp_path / "ca"
    with StandIn(ca_dir=ca_dir) as first:
        monkeypatch.setenv("SSL_CERT_FILE", str(first.ca_path))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(first.ca_path))
    return ca_dir


def _vault(standin: StandIn, tenant: str, client_id: str, secret: str) -> SecretClient:
    credential = ClientSecretCredential(tenant, client_id, secret, authority=standin.url,
                                        disable_instance_discovery=True)
    return SecretClient(standin.url, credential, verify_challenge_resource=False)


def test_a_restarted_standin_answers_as_the_saved_one(trusted, tmp_path):
    saved = tmp_path / "standin-state.json"
    cert_pem, key_pem = make_certificate("cn-persisted")
    with StandIn(ca_dir=trusted) as first:
        admin = first.admin
        tenant = admin.add_tenant()
        admin.set_vault_tenant(tenant)
        app = admin.add_app(tenant, display_name="kept", roles=["Application.ReadWrite.OwnedBy"])
        admin.add_owner(tenant, app["appId"], app["servicePrincipalId"])
        secret = admin.add_secret(tenant, app["appId"], display_name="kept secret")
        removed = admin.add_secret(tenant, app["appId"], display_name="removed secret")
        admin.remove_secret(tenant, app["appId"], removed["keyId"])
        admin.add_certificate(tenant, app["appId"], cert_pem)
        api = admin.add_api(tenant, "api", ["Reader", "Admin"])
        admin.assign_role(tenant, api["appId"], app["appId"], "Admin")
        vault = _vault(first, tenant, app["appId"], secret["secretText"])
        vault.set_secret("versioned", "one")
        vault.set_secret("versioned", "two", content_type="text/plain", tags={"k": "v"})
        vault.set_secret("gone", "x")
        vault.begin_delete_secret("gone").result()
        before = (admin.get_app(tenant, app["appId"]), admin.get_api(tenant, api["appId"]), admin.vault_secrets())
        save_state(first.state, saved)

    assert saved.stat().st_mode & 0o777 == 0o600
    with StandIn(ca_dir=trusted) as second:
        assert read_state(second.state, saved)
        admin = second.admin
        after = (admin.get_app(tenant, app["appId"]), admin.get_api(tenant, api["appId"]), admin.vault_secrets())
        assert after == before
        assert second.state.tenants[tenant].apps[app["appId"]].removed_passwords[0].key_id == removed["keyId"]
        # The kept secret and certificate still sign in; the vault still serves its versions.
        vault = _vault(second, tenant, app["appId"], secret["secretText"])
        assert vault.get_secret("versioned").value == "two"
        assert [p.version for p in vault.list_properties_of_secret_versions("versioned")]
        certificate = CertificateCredential(tenant, app["appId"], certificate_data=(cert_pem + key_pem).encode(),
                                            authority=second.url, disable_instance_discovery=True)
        assert certificate.get_token(VAULT_SCOPE).token


def test_no_file_loads_nothing_and_an_unknown_format_is_refused(tmp_path):
    state = State()
    assert not read_state(state, tmp_path / "absent.json")
    assert state.tenants == {}
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": 99}))
    with pytest.raises(StateError, match="format"):
        load_state(state, json.loads(path.read_text()))
