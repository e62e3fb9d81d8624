"""Starting a sign-in (``shared.oauth_start``): PKCE, the authorize URL, and the query checked without pydantic to
exactly the field errors ``parse_model(AuthorizeIn, ...)`` gives."""

import base64
import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.apps import APPS
from shared.errors import InvalidRequest
from shared.models import parse_model
from shared.oauth import AuthorizeIn
from shared.oauth_start import QUERY_FIELDS, authorize_url, code_challenge, new_verifier, parse_authorize_query
from shared.settings import load_settings
from tests.fresh import in_a_fresh_interpreter

CONFIGURED = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true", "SITE_URL": "https://connections.example.com/",
    "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "not-a-real-secret",
}
KEY_VAULT = APPS["azure-key-vault"]


def test_the_rfc_7636_appendix_b_example_challenge():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_are_long_random_and_url_safe():
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert re.fullmatch(r"[A-Za-z0-9_-]+", verifier)
        challenge = code_challenge(verifier)
        digest = hashlib.sha256(verifier.encode()).digest()
        assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert "=" not in challenge


@pytest.mark.parametrize(("tenant", "segment"), [(None, "organizations"), ("aaaaaaaa-0000-0000-0000-000000000001",
                                                                           "aaaaaaaa-0000-0000-0000-000000000001")])
def test_the_authorize_url_carries_every_parameter(tenant, segment):
    settings = load_settings(CONFIGURED)
    url = authorize_url(settings, KEY_VAULT, "client-1", tenant, "state-1", "challenge-1")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"https://login.microsoftonline.us/{segment}/oauth2/v2.0/authorize"
    )
    query = {key: values[0] for key, values in parse_qs(parts.query, strict_parsing=True).items()}
    assert query == {
        "client_id": "client-1",
        "response_type": "code",
        "response_mode": "query",
        "redirect_uri": "https://connections.example.com/organization/app-connections/azure/oauth/callback",
        "scope": "openid profile offline_access https://vault.azure.net/.default",
        "state": "state-1",
        "code_challenge": "challenge-1",
        "code_challenge_method": "S256",
    }
    assert "+" not in parts.query  # spaces are %20


def test_the_graph_scope_follows_the_graph_endpoint_setting():
    settings = load_settings({**CONFIGURED, "GRAPH_ENDPOINT": "https://graph.microsoft.us"})
    url = authorize_url(settings, APPS["azure-client-secrets"], "c", None, "s", "x")
    assert parse_qs(urlsplit(url).query)["scope"] == ["openid profile offline_access https://graph.microsoft.us/.default"]


def test_the_query_has_the_fields_of_its_schema_in_its_order():
    assert list(QUERY_FIELDS) == list(AuthorizeIn.model_fields)


def _as_pydantic_checks(query: dict[str, str]) -> tuple[str, object]:
    try:
        checked = parse_model(AuthorizeIn, query)
    except InvalidRequest as error:
        return "refused", [(e.pointer, e.detail) for e in error.errors]
    return "accepted", checked.model_dump()


def _as_checked_here(query: dict[str, str]) -> tuple[str, object]:
    try:
        checked = parse_authorize_query(query)
    except InvalidRequest as error:
        return "refused", [(e.pointer, e.detail) for e in error.errors]
    return "accepted", {name: getattr(checked, name) for name in QUERY_FIELDS}


GUIDS = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
VALUES = st.one_of(
    st.text(max_size=70), st.from_regex(r"[a-z0-9-]{1,70}", fullmatch=True), GUIDS,
    st.sampled_from(["true", "false", "True", "1", "", "a/b", "~x", "\x7f", "tab\there", "nul\x00"]),
    st.text(min_size=1020, max_size=1030, alphabet=st.characters(codec="utf-8")),
)
KEYS = st.sampled_from([*QUERY_FIELDS, "surprise", "a/b", "~x", "Name", "tenantid"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_a_query_is_accepted_or_refused_exactly_as_its_schema_would(query):
    assert _as_checked_here(query) == _as_pydantic_checks(query)


@pytest.mark.parametrize("query", [
    {"name": "ok", "tenantId": "AAAAAAAA-0000-0000-0000-000000000001", "allowDifferentUser": "true"},
    {"name": "Not A Slug", "description": "x" * 1025, "tenantId": "nope", "connectionId": "nope",
     "allowDifferentUser": "yes", "surprise": "1", "a/b": "2"},
    {"description": "line\nbreak and tab\t are fine", "connectionId": "aaaaaaaa-0000-0000-0000-000000000001"},
    {"description": "bell\x07"},
])
def test_examples_of_each_rule_match_the_schema(query):
    assert _as_checked_here(query) == _as_pydantic_checks(query)


def test_no_error_echoes_the_value_it_refused():
    with pytest.raises(InvalidRequest) as caught:
        parse_authorize_query({"name": "Secret-Looking-Value", "tenantId": "also-secret", "zz-secret": "v"})
    text = repr(caught.value.to_problem())
    assert "Secret-Looking-Value" not in text and "also-secret" not in text


# The start of a sign-in as the authorize route makes it, audited as the route audits it, in a fresh interpreter,
# against a Table endpoint on a loopback port that answers as Table Storage does: the name is free, the state and
# the audit records are inserted, there is no expired state to purge. What it sent and what it imported.
A_START = """
import asyncio, json, os, sys
from tests.loopback_table import connection_string, port_of, serve

seen = []

def answer(method, target, headers):
    seen.append([method, target.split("?")[0]])
    if method == "POST":
        return 204, None
    if "OAuthStates()" in target:
        return 200, {"value": []}
    return 404, {"odata.error": {"code": "ResourceNotFound", "message": {"value": "Not found"}}}

async def main():
    server = await serve(answer)
    os.environ.update({"AzureWebJobsStorage": connection_string(port_of(server)),
                       "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
                       "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET": "not-a-real-secret",
                       "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com"})
    import function_app
    from shared import wiring
    from shared.azure.clients import close_clients

    audit = wiring.audit_log()
    await audit.record("connection.authorize", "started", app="azure-key-vault")
    url = await wiring.oauth_start().start("azure-key-vault", {"code": "function-key", "name": "new-one"})
    await audit.record("connection.authorize", "302", app="azure-key-vault")
    await close_clients()
    server.close()
    print(json.dumps({"url": url, "requests": seen, "modules": sorted(sys.modules)}))

asyncio.run(main())
"""
# What a write of connections needs and the start of a sign-in does not: the models and the connection service,
# the rest of the OAuth flow, the SDKs and their transport.
NOT_TO_START = ["pydantic", "shared.models", "shared.connections", "shared.oauth", "shared.credentials",
                "shared.rotation.protocol", "aiohttp", "azure.core", "azure.data.tables", "azure.identity", "msal",
                "cryptography"]


def test_a_sign_in_starts_over_the_lean_table_calls_without_the_models_or_an_sdk() -> None:
    result = in_a_fresh_interpreter(A_START)
    assert result["url"].startswith("https://login.microsoftonline.com/organizations/oauth2/v2.0/authorize?")
    methods = [method for method, _ in result["requests"]]
    targets = [target for _, target in result["requests"]]
    assert methods == ["POST", "GET", "POST", "GET", "POST"], result["requests"]
    assert targets[0].endswith("Audit") and targets[2].endswith("OAuthStates") and targets[4].endswith("Audit")
    assert "(PartitionKey='azure-key-vault',RowKey='" in targets[1]  # the name's index entry, read
    assert targets[3].endswith("OAuthStates()")  # the purge's query: nothing expired
    loaded = set(result["modules"])
    assert {"shared.oauth_start", "shared.store.table_writes", "shared.azure.rest"} <= loaded
    assert [name for name in NOT_TO_START if name in loaded] == []
