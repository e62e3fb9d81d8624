"""The read path's Table Storage token from the host's managed-identity endpoint, without azure-identity.

On Azure Functions ``AzureClients.storage_token`` asks App Service's local endpoint (``IDENTITY_ENDPOINT`` with the
``X-IDENTITY-HEADER`` secret) in one GET over the lean client (``shared.azure.managed_identity``). Here it asks the
stand-in's endpoint over real HTTPS, and what it gets is compared with what azure-identity's
``ManagedIdentityCredential`` gets from the same endpoint: the same request, the same token claims and expiry. Its
failures go through the one retry policy and end as problem details; neither the token nor the header's value
reaches a log, a span or an error; and in a fresh interpreter a read that signs in this way imports neither
azure-identity nor MSAL, azure-core or aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from localdev.standin import StandIn
from shared.azure.clients import (
    CONNECT_TIMEOUT_SECONDS,
    ENTRA,
    KEEPALIVE_SECONDS,
    READ_TIMEOUT_SECONDS,
    STORAGE_SCOPE,
    TOKEN_REFRESH_RETRY_DELAY,
    AzureClients,
)
from shared.azure.managed_identity import HALF_LIFE_FROM, AccessToken, parse_token, resource_of, token_url
from shared.azure.rest import RestClient
from shared.azure.retry import answering_within
from shared.errors import ServiceError, ServiceMisconfigured, UpstreamError
from shared.settings import load_settings

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[3]
MSI = "/msi/token"


@dataclass
class Host:
    """A function app's host as the stand-in plays it: its managed-identity endpoint and one user-assigned identity."""

    standin: StandIn
    tenant: str
    identity: dict[str, str]
    endpoint: str
    header: str

    def env(self, client_id: str | None = "identity") -> dict[str, str]:
        """The app settings of a function app whose state tables are reached with this identity."""
        env = {"AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net",
               "IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.header}
        if client_id is not None:
            env["AzureWebJobsStorage__clientId"] = self.identity["clientId"] if client_id == "identity" else client_id
        return env

    def clients(self, client_id: str | None = "identity") -> AzureClients:
        return AzureClients(load_settings(self.env(client_id)))

    def token_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.standin.admin.requests() if r["path"] == MSI]

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims, its signature checked with the stand-in's published key."""
        import ssl

        import httpx

        keys = httpx.get(f"{self.standin.url}/{self.tenant}/discovery/v2.0/keys",
                         verify=ssl.create_default_context(cafile=str(self.standin.ca_path))).json()
        key = jwt.PyJWKSet.from_dict(keys).keys[0].key
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience="https://storage.azure.com")
        return claims


@pytest.fixture
def host(standin: StandIn) -> Host:
    admin = standin.admin
    admin.reset()
    tenant = admin.add_tenant()
    identity = admin.add_managed_identity(tenant, "id-func")
    endpoint = admin.identity_endpoint()
    return Host(standin, tenant, identity, endpoint["endpoint"], endpoint["header"])


# -- the same request and the same token as azure-identity's ---------------------------------------------------------
async def test_the_lean_token_is_the_one_azure_identity_gets_from_the_same_endpoint(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.identity import ManagedIdentityCredential

    clients = host.clients()
    try:
        lean = await clients.storage_token()
        cached = clients._storage_token
    finally:
        await clients.close()
    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    with ManagedIdentityCredential(client_id=host.identity["clientId"]) as credential:
        sdk = credential.get_token_info(STORAGE_SCOPE)

    ours, theirs = host.claims(lean), host.claims(sdk.token)
    for claim in ("aud", "iss", "tid", "sub", "oid", "appid", "azp", "idtyp", "xms_mirid"):
        assert ours[claim] == theirs[claim], claim
    assert ours["aud"] == "https://storage.azure.com" and ours["appid"] == host.identity["clientId"]
    # The same expiry and refresh time (the two requests were made within a second or two of each other).
    assert cached is not None and cached.token == lean
    assert abs(cached.expires_on - sdk.expires_on) <= 2 and cached.expires_on == ours["exp"]
    assert sdk.refresh_on is not None and cached.refresh_on is not None
    assert abs(cached.refresh_on - sdk.refresh_on) <= 2
    # The same request: api-version, the resource without /.default, the user-assigned identity's client_id.
    lean_request, sdk_request = host.token_requests()
    assert lean_request["query"] == sdk_request["query"] == {
        "api-version": "2019-08-01", "resource": "https://storage.azure.com", "client_id": host.identity["clientId"]}
    assert lean_request["status"] == sdk_request["status"] == 200


async def test_without_a_client_id_the_system_assigned_identity_is_asked_and_its_absence_is_a_clear_error(
        host: Host) -> None:
    """The stand-in's app has no system-assigned identity: the endpoint answers 400, as App Service does."""
    clients = host.clients(client_id=None)
    try:
        with pytest.raises(ServiceMisconfigured) as raised:
            await clients.storage_token()
    finally:
        await clients.close()
    (request,) = host.token_requests()
    assert "client_id" not in request["query"] and request["status"] == 400
    problem = raised.value.to_problem()
    assert problem["status"] == 503
    assert problem["detail"].startswith("The host has no token for the system-assigned identity (its token endpoint "
                                        "answered 400: No system assigned managed identity is enabled")
    assert "AzureWebJobsStorage__clientId (or, without it, AZURE_CLIENT_ID) names it" in problem["detail"]


@pytest.mark.parametrize("storage", ["connection-string", "identity"])
async def test_azure_client_id_names_the_identity_where_the_storage_setting_does_not(
        host: Host, monkeypatch: pytest.MonkeyPatch, storage: str) -> None:
    """(Review of the docs against the code.) The README says ``AZURE_CLIENT_ID`` names the service's user-assigned
    identity, as azure-identity reads it; the service took it from ``AzureWebJobsStorage__clientId`` alone, so with a
    storage connection string, or without that setting, Key Vault's token was asked of the system-assigned
    identity. ``__clientId`` still comes first (it is the host's own setting for its storage)."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    env = {**host.env(client_id=None), "AZURE_CLIENT_ID": host.identity["clientId"]}
    if storage == "connection-string":
        env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "IDENTITY_ENDPOINT": host.endpoint,
               "IDENTITY_HEADER": host.header, "AZURE_CLIENT_ID": host.identity["clientId"]}
    clients = AzureClients(load_settings(env))
    try:
        await clients.service_credential().get_token("https://vault.azure.net/.default")
        if storage == "identity":
            await clients.storage_token()
    finally:
        await clients.close()
    asked = host.token_requests()
    assert [r["query"].get("client_id") for r in asked] == [host.identity["clientId"]] * len(asked)
    assert all(r["status"] == 200 for r in asked) and len(asked) == (1 if storage == "connection-string" else 2)
    # Both given: the storage setting's identity is the one asked for.
    both = load_settings({**host.env(client_id="22222222-2222-2222-2222-222222222222"), "AZURE_CLIENT_ID": "other"})
    assert both.storage.managed_identity_client_id == "22222222-2222-2222-2222-222222222222"


async def test_an_identity_not_assigned_to_the_app_is_a_clear_error_naming_it(host: Host) -> None:
    stranger = "7f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5"
    clients = host.clients(client_id=stranger)
    try:
        with pytest.raises(ServiceMisconfigured) as raised:
            await clients.storage_token()
    finally:
        await clients.close()
    (request,) = host.token_requests()
    assert request["query"]["client_id"] == stranger and request["status"] == 400
    assert f"the user-assigned managed identity {stranger}" in raised.value.detail
    assert "No User Assigned or Delegated Managed Identity found" in raised.value.detail


async def test_a_wrong_identity_header_is_a_clear_error(host: Host) -> None:
    env = {**host.env(), "IDENTITY_HEADER": "not-the-hosts"}
    clients = AzureClients(load_settings(env))
    try:
        with pytest.raises(ServiceMisconfigured, match=r"refused the request \(401: Unauthorized.*IDENTITY_HEADER"):
            await clients.storage_token()
    finally:
        await clients.close()


# -- the one retry policy --------------------------------------------------------------------------------------------
async def test_a_429_a_503_and_a_500_are_retried_by_the_one_policy(
        host: Host, exporter: InMemorySpanExporter) -> None:
    host.standin.admin.set_faults([
        {"path": f"^{MSI}$", "status": 429, "times": 1, "headers": {"Retry-After": "0"}},
        {"path": f"^{MSI}$", "status": 503, "times": 1, "headers": {"Retry-After": "0"}},
        {"path": f"^{MSI}$", "status": 500, "times": 1},
    ])
    clients = host.clients()
    try:
        token = await clients.storage_token()
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert host.claims(token)["appid"] == host.identity["clientId"]
    assert [r["status"] for r in host.token_requests()] == [429, 503, 500, 200]
    spans = [s for s in exporter.get_finished_spans() if s.attributes and s.attributes.get("upstream") == ENTRA]
    assert [s.attributes["http.response.status_code"] for s in spans if s.attributes] == [429, 503, 500, 200]


@pytest.mark.parametrize(("status", "answered", "detail"), [
    (503, 503, "The managed identity's token endpoint is busy; try again later."),
    (500, 502, "The managed identity's token endpoint could not be reached.")])
async def test_when_retries_run_out_the_read_fails_as_an_upstream_error(host: Host, status: int, answered: int,
                                                                        detail: str) -> None:
    """Still busy (503), a 503 to try later; else a 502. The detail names no address of the host's (review Z2):
    the endpoint's failure goes to the log."""
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": status, "headers": {"Retry-After": "0"}}])
    clients = host.clients()

    async def no_wait(_: float) -> None:
        return None

    # The service's lean client to Entra ID, with two attempts and no waiting (the schedule is tested in test_rest).
    clients._rest[ENTRA] = RestClient(ENTRA, keepalive=KEEPALIVE_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
                                      connect_timeout=CONNECT_TIMEOUT_SECONDS, attempts=2, sleep=no_wait)
    try:
        with pytest.raises(UpstreamError) as raised:
            await clients.storage_token()
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert [r["status"] for r in host.token_requests()] == [status, status]
    assert raised.value.to_problem()["status"] == answered and raised.value.detail == detail


async def test_the_service_s_identity_still_throttled_on_a_cold_instance_is_a_503_with_the_endpoint_s_wait(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the retries 2.) The SDK clients' token (Key Vault, Table Storage's SDK) comes from
    ``service_credential()``: DefaultAzureCredential's chain turned the endpoint's 429 into a
    ``ClientAuthenticationError`` without status on a process's first token request, so the call answered 502
    without ``Retry-After``. Where DefaultAzureCredential would use the managed identity anyway, it is that credential
    alone, whose error keeps the 429 and its wait: 503 ``upstream-throttled`` with ``Retry-After``, as the read
    path's token gives."""
    from shared.azure.upstream import upstream_error

    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 429, "times": None,
                                    "headers": {"Retry-After": "60"}, "body": {"statusCode": 429,
                                                                              "message": "Too many requests"}}])
    clients = host.clients()
    try:
        with pytest.raises(Exception) as raised:  # what a SecretClient call raises from its credential policy
            await clients.service_credential().get_token("https://vault.azure.net/.default")
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    told = upstream_error(raised.value)
    assert (told.status, told.slug, told.headers.get("Retry-After")) == (503, "upstream-throttled", "60")
    assert [r["status"] for r in host.token_requests()] == [429]  # a wait past the budget: not tried again


@pytest.mark.parametrize(("fault", "slug", "told"), [
    ({"status": 400, "body": {"statusCode": 400, "message": "No User Assigned or Delegated Managed Identity found"}},
     "service-misconfigured", "AzureWebJobsStorage__clientId (or, without it, AZURE_CLIENT_ID) names it"),
    ({"status": 429, "headers": {"Retry-After": "60"}, "body": {"statusCode": 429, "message": "Too many requests"}},
     "upstream-throttled", "its token endpoint is busy (429)"),
], ids=["identity-not-assigned", "endpoint-throttling"])
async def test_a_key_vault_call_whose_token_the_endpoint_refused_says_the_identity_got_no_token_not_key_vault(
        host: Host, monkeypatch: pytest.MonkeyPatch, fault: dict[str, Any], slug: str, told: str) -> None:
    """(Review of the retries 2.) With ManagedIdentityCredential alone, the endpoint's refusal reaches the Key Vault
    adapter with its status; named after the adapter, it read "Key Vault failed to read a secret version (400)" (a
    401 or 403 would have sent the operator to restore Key Vault's role). It is the identity that got no token."""
    from shared.store.vault import SecretVault

    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "times": None, **fault}])
    clients = AzureClients(load_settings({**host.env(), "KEY_VAULT_URL": host.standin.url,
                                          "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false"}))
    try:
        with pytest.raises(ServiceError) as raised:
            await SecretVault(clients).get("conn-secret", "0" * 32)
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert raised.value.slug == slug and told in raised.value.detail, raised.value.detail
    assert raised.value.detail.startswith("The service's own identity could not get a token to read a secret")
    assert "Key Vault" in raised.value.detail and "Key Vault failed" not in raised.value.detail
    assert "Key Vault Secrets Officer" not in raised.value.detail
    if slug == "upstream-throttled":
        assert raised.value.headers.get("Retry-After") == "60"


async def test_a_table_sdk_call_or_a_disable_whose_token_the_endpoint_refused_says_the_identity_got_no_token(
        host: Host, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """(Review of the session's fixes.) Table Storage's SDK (the rotation history, the schedule) raises the
    endpoint's refusal from its own call, naming no service: it said "Entra ID failed (400).", no remedy. And a
    disable (best effort: a warning) blamed Key Vault's answer. The service's own identity's token requests are
    labelled as such, whichever call they were for."""
    import logging

    from shared.azure.upstream import upstream_error
    from shared.store.history import RotationHistory
    from shared.store.vault import SecretVault

    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "times": None, "status": 400,
                                    "body": {"statusCode": 400, "message": "No User Assigned Identity found"}}])
    clients = AzureClients(load_settings({**host.env(), "KEY_VAULT_URL": host.standin.url,
                                          "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false"}))
    try:
        with pytest.raises(Exception) as raised:
            await RotationHistory(clients).get("c" * 8, datetime.now(UTC), "r", 1)
        with caplog.at_level(logging.WARNING, logger="shared.store.vault"):
            await SecretVault(clients).disable("conn-secret", "0" * 32)
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    told = upstream_error(raised.value)  # what a route's problem and a rotation's failure record say
    assert told.slug == "service-misconfigured" and told.detail.startswith(
        "The service's own identity could not get a token (its token endpoint answered 400)"), told.detail
    [warning] = [r.getMessage() for r in caplog.records if r.name == "shared.store.vault"]
    assert "The service's own identity could not get a token to disable a secret version in Key Vault" in warning


async def test_environment_credentials_refused_are_told_as_the_service_s_identity_that_got_no_token(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Review of the last fixes.) With environment credentials (locally, the CLI), DefaultAzureCredential's chain
    raises a new error without the answer or its transport's label: a refused client secret was told as "Key Vault
    could not be reached" or "An Azure service could not be reached". The service's credential labels its failures
    itself."""
    from shared.store.history import RotationHistory
    from shared.store.vault import SecretVault

    local = {"AZURE_TENANT_ID": host.tenant, "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
             "AZURE_CLIENT_SECRET": "wrong", "AZURE_AUTHORITY_HOST": host.standin.url}
    for name, value in local.items():
        monkeypatch.setenv(name, value)
    clients = AzureClients(load_settings({**host.env(), **local, "KEY_VAULT_URL": host.standin.url,
                                          "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false"}))
    try:
        with pytest.raises(Exception) as table:
            await RotationHistory(clients).get("c" * 8, datetime.now(UTC), "r", 1)
        with pytest.raises(ServiceError) as vault:
            await SecretVault(clients).get("conn-secret", "0" * 32)
    finally:
        await clients.close()
    from shared.azure.upstream import upstream_error

    for told in (upstream_error(table.value), vault.value):
        assert told.slug == "service-misconfigured", told.detail
        assert told.detail.startswith("The service's own identity could not get a token"), told.detail
        assert "AZURE_CLIENT_SECRET" in told.detail and "wrong" not in told.detail  # the secret is never said


async def test_with_environment_credentials_the_service_s_identity_is_still_default_azure_credential(
        host: Host) -> None:
    """Local development: environment credentials come before the managed identity in DefaultAzureCredential's
    chain, so the service's identity stays DefaultAzureCredential there (and wherever the endpoint is not the one
    it would use)."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    local = {"AZURE_TENANT_ID": host.tenant, "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
             "AZURE_CLIENT_SECRET": "local"}
    for env, kind in ((host.env(), ManagedIdentityCredential), ({**host.env(), **local}, DefaultAzureCredential),
                      ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, DefaultAzureCredential)):
        clients = AzureClients(load_settings(env))
        try:
            assert type(clients.service_credential().inner) is kind
        finally:
            await clients.close()


# -- the cache, its refresh, and concurrent first reads --------------------------------------------------------------
async def test_concurrent_first_reads_make_one_request_and_later_reads_none(host: Host) -> None:
    clients = host.clients()
    try:
        tokens = await asyncio.gather(*(clients.storage_token() for _ in range(5)))
        again = await clients.storage_token()
    finally:
        await clients.close()
    assert len(set(tokens)) == 1 and again == tokens[0]
    assert len(host.token_requests()) == 1


async def test_concurrent_first_reads_share_one_failing_fetch_and_all_learn_it_together(host: Host) -> None:
    """Found by the concurrency review: the reads waited on one lock, but a fetch that failed left nothing behind,
    so each waiter, once it held the lock, fetched again with a retry schedule of its own (four reads: twelve
    requests, their answers 1.8 s apart). They share the fetch in flight: one schedule, its error to all at once."""
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 500, "times": None}])
    clients = host.clients()

    async def short_wait(_: float) -> None:
        await asyncio.sleep(0.3)

    # The service's lean client to Entra ID with three attempts 0.3 s apart (the schedule is tested in test_rest).
    clients._rest[ENTRA] = RestClient(ENTRA, keepalive=KEEPALIVE_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
                                      connect_timeout=CONNECT_TIMEOUT_SECONDS, attempts=3, sleep=short_wait)
    ended: list[float] = []

    async def read() -> BaseException | str:
        try:
            return await clients.storage_token()
        except UpstreamError as error:
            return error
        finally:
            ended.append(time.monotonic())

    try:
        outcomes = await asyncio.gather(*(read() for _ in range(4)))
        host.standin.admin.clear_faults()
        after = await clients.storage_token()  # the failure is not kept: the next read fetches anew
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert [type(outcome) for outcome in outcomes] == [UpstreamError] * 4
    assert max(ended) - min(ended) < 0.3, f"the answers came {max(ended) - min(ended):.1f} s apart"
    assert [r["status"] for r in host.token_requests()] == [500, 500, 500, 200]
    assert host.claims(after)["appid"] == host.identity["clientId"]


async def _the_other_of_two_one_cancelled(impatient: Coroutine[Any, Any, T], patient: Coroutine[Any, Any, T]) -> T:
    """Two concurrent calls waiting on one shared request: the first cancelled while it waits (its request timed
    out), the second's outcome once the request answers."""
    first, second = asyncio.create_task(impatient), asyncio.create_task(patient)
    await asyncio.sleep(0.1)
    first.cancel()
    outcome = await second
    assert first.cancelled()
    return outcome


async def test_a_read_cancelled_while_it_waits_leaves_the_shared_fetch_to_the_others(host: Host) -> None:
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "action": "delay", "delay_ms": 300, "times": 1}])
    clients = host.clients()
    try:
        token = await _the_other_of_two_one_cancelled(clients.storage_token(), clients.storage_token())
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert host.claims(token)["appid"] == host.identity["clientId"]
    assert len(host.token_requests()) == 1


def _federating(host: Host, monkeypatch: pytest.MonkeyPatch) -> tuple[AzureClients, Any, Any, list[str]]:
    """Clients whose federation identity is the host's, the directory adapter over them, and four applications of a
    customer tenant (which trust no federated credential: Entra refuses the assertion, AADSTS70021, once it has
    one)."""
    from shared.apps import find_app
    from shared.azure.directory import AzureDirectory

    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    admin = host.standin.admin
    customer = admin.add_tenant()
    apps = [admin.add_app(customer, display_name=f"customer-{n}")["appId"] for n in range(4)]
    clients = AzureClients(load_settings({
        "AzureWebJobsStorage": "UseDevelopmentStorage=true", "AZURE_AUTHORITY_HOST": host.standin.url,
        "IDENTITY_ENDPOINT": host.endpoint, "IDENTITY_HEADER": host.header,
        "FEDERATION_IDENTITY_CLIENT_ID": host.identity["clientId"],
        "FEDERATION_IDENTITY_PRINCIPAL_ID": host.identity.get("principalId") or host.identity["clientId"],
        "FEDERATION_IDENTITY_TENANT_ID": host.tenant}))
    directory = AzureDirectory(clients)

    async def sign_in(app: str) -> BaseException | None:
        """A federated connection's validation: its sign-in with the identity's token as the client assertion."""
        from shared.apps import Method

        spec = find_app("azure-key-vault")
        assert spec is not None
        try:
            await directory.probe(spec, Method.FEDERATED, customer, app, {})
        except ServiceError as error:
            return error
        return None

    return clients, sign_in, customer, apps


async def _at_once_then_one_more(sign_in: Any, apps: list[str]) -> tuple[list[Any], Any]:
    """Every application's sign-in at once (a fresh instance's first round), then one more."""
    outcomes = await asyncio.gather(*(sign_in(app) for app in apps))
    return list(outcomes), await sign_in(apps[0])


async def test_concurrent_first_federated_sign_ins_ask_the_identity_endpoint_once(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the concurrency review: azure-identity's async ManagedIdentityCredential does not combine concurrent
    requests for a token it has not cached, so four federated connections validated at once on a fresh instance (a
    sweep's first round, four validations) asked the endpoint four times for the same token. The federation
    credential shares the request in flight; the token is then in its cache for the next sign-in."""
    from shared.errors import CredentialRejected

    clients, sign_in, _, apps = _federating(host, monkeypatch)
    try:
        outcomes, later = await _at_once_then_one_more(sign_in, apps)
    finally:
        await clients.close()
    for outcome in [*outcomes, later]:  # each presented the identity's token to Entra
        assert isinstance(outcome, CredentialRejected) and "AADSTS70021" in outcome.detail, outcome
    assert len(host.token_requests()) == 1


async def test_concurrent_first_federated_sign_ins_share_the_identity_endpoint_s_refusal(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request in flight is shared with its outcome: refused, every sign-in waiting on it is told so at once
    (one request, not one each in turn), and the next sign-in asks again."""
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 400, "times": 1,
                                    "body": {"statusCode": 400, "message": "No User Assigned Identity found"}}])
    clients, sign_in, _, apps = _federating(host, monkeypatch)
    try:
        outcomes, later = await _at_once_then_one_more(sign_in, apps)
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert [type(outcome) for outcome in outcomes] == [UpstreamError] * 4
    assert all("could not get a token for the token exchange" in str(o.detail) for o in outcomes if o is not None)
    assert later is not None and "AADSTS70021" in later.detail
    assert [r["status"] for r in host.token_requests()] == [400, 200]


async def test_a_federated_sign_in_cancelled_while_it_waits_leaves_the_identity_s_request_to_the_others(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "action": "delay", "delay_ms": 300, "times": 1}])
    clients, sign_in, _, apps = _federating(host, monkeypatch)
    try:
        outcome = await _the_other_of_two_one_cancelled(sign_in(apps[0]), sign_in(apps[1]))
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert outcome is not None and "AADSTS70021" in outcome.detail
    assert len(host.token_requests()) == 1



async def _vault_clients(host: Host, monkeypatch: pytest.MonkeyPatch) -> AzureClients:
    """Clients of a fresh instance whose Key Vault is the stand-in's, its challenge known already: Key Vault's SDK
    keeps it per process, so every call after the process's first (here: of clients built and closed before), and
    every call at a refresh of the token, asks for the token at once, without the challenge's round trip first."""
    from shared.store.vault import SecretVault

    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    env = {**host.env(), "KEY_VAULT_URL": host.standin.url, "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false"}
    before = AzureClients(load_settings(env))
    try:
        with contextlib.suppress(ServiceError):
            await SecretVault(before).get("conn-secret", "0" * 32)  # the challenge, and a token of its own
    finally:
        await before.close()
    host.standin.admin.clear_requests()
    return AzureClients(load_settings(env))


async def _vault_reads_at_once_then_one_more(clients: AzureClients) -> tuple[list[Any], Any]:
    """Four reads of a secret version at once (none is stored: each answers SecretGone once signed in), then one
    more; each read's outcome."""
    from shared.store.vault import SecretVault

    async def read() -> BaseException | None:
        try:
            await SecretVault(clients).get("conn-secret", "0" * 32)
        except ServiceError as error:
            return error
        return None

    return list(await asyncio.gather(*(read() for _ in range(4)))), await read()


async def test_concurrent_first_key_vault_calls_ask_the_service_s_identity_for_its_token_once(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a review of the token requests: the service's own credential (Key Vault's, the Table SDK's) was
    azure-identity's alone, which does not combine concurrent requests for a token it has not cached, and Key
    Vault's policy asks for one without a lock once the vault's challenge is known: four reads at once on a fresh
    instance (or at the token's refresh) asked the identity endpoint four times. They share the request in
    flight, as the read path's token and the federation identity's do; the token is then cached for the next."""
    from shared.errors import SecretGone

    clients = await _vault_clients(host, monkeypatch)
    try:
        outcomes, later = await _vault_reads_at_once_then_one_more(clients)
    finally:
        await clients.close()
    assert [type(outcome) for outcome in [*outcomes, later]] == [SecretGone] * 5  # each signed in to Key Vault
    requests = host.token_requests()
    assert len(requests) == 1, f"{len(requests)} token requests"
    assert requests[0]["query"]["resource"] == "https://vault.azure.net"


async def test_concurrent_first_key_vault_calls_share_the_identity_endpoint_s_refusal_which_is_not_kept(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request in flight is shared with its outcome: refused, every call waiting on it is told so (the service's
    identity got no token), from one request; the refusal is not kept, and the next call asks again."""
    from shared.errors import SecretGone

    clients = await _vault_clients(host, monkeypatch)
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 400, "times": 1,
                                    "body": {"statusCode": 400, "message": "No User Assigned Identity found"}}])
    try:
        outcomes, later = await _vault_reads_at_once_then_one_more(clients)
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    for outcome in outcomes:
        assert isinstance(outcome, ServiceError) and outcome.slug == "service-misconfigured", outcome
        assert outcome.detail.startswith("The service's own identity could not get a token"), outcome.detail
    assert isinstance(later, SecretGone)
    assert [r["status"] for r in host.token_requests()] == [400, 200]

async def test_a_token_is_refreshed_at_its_refresh_time_and_a_failed_refresh_keeps_the_valid_one(
        host: Host, caplog: pytest.LogCaptureFixture) -> None:
    clients = host.clients()
    now = time.time()
    try:
        first = await clients.storage_token()
        cached = clients._storage_token
        assert cached is not None and cached.refresh_on is not None
        # Half of the stand-in's 24 h, as azure-identity refreshes a token that names no refresh_in.
        assert abs(cached.refresh_on - (now + (cached.expires_on - now) // 2)) <= 2
        clients._storage_token = AccessToken(first, cached.expires_on, now - 1)  # its refresh time has passed
        host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 400, "times": 1}])
        with caplog.at_level(logging.WARNING, logger="shared.azure.clients"):
            kept = await clients.storage_token()  # the endpoint refuses: the still valid token is kept ...
        again = await clients.storage_token()  # ... and not asked for again at once ...
        retry_at = clients._storage_token.refresh_on if clients._storage_token else None
        assert retry_at is not None and abs(retry_at - (time.time() + TOKEN_REFRESH_RETRY_DELAY)) <= 2
        clients._storage_token = AccessToken(first, cached.expires_on, now - 1)  # ... but once the delay is over
        renewed = await clients.storage_token()
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert kept == again == first and renewed != first
    assert host.claims(renewed)["appid"] == host.identity["clientId"]
    assert [r["status"] for r in host.token_requests()] == [200, 400, 200]
    assert [r.getMessage().split(";")[0] for r in caplog.records if r.name == "shared.azure.clients"] == [
        "The Table Storage token could not be refreshed (ServiceMisconfigured)"]


# -- no secret in a log, a span or an error --------------------------------------------------------------------------
async def test_neither_the_token_nor_the_identity_header_reach_a_log_a_span_or_an_error(
        host: Host, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clients = host.clients()
    failing = AzureClients(load_settings(host.env(client_id="7f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5")))
    try:
        token = await clients.storage_token()
        with pytest.raises(ServiceMisconfigured) as raised:
            await failing.storage_token()
    finally:
        await clients.close()
        await failing.close()
    secrets = (token, host.header)
    seen: list[str] = [record.getMessage() for record in caplog.records]
    for span in exporter.get_finished_spans():
        seen.append(span.name)
        seen.extend(f"{k}={v!r}" for k, v in (span.attributes or {}).items())
        seen.extend(str(event.attributes) for event in span.events)
    seen += [str(raised.value), json.dumps(raised.value.to_problem()), repr(clients._storage_token),
             repr(clients.settings)]
    assert len([s for s in exporter.get_finished_spans() if (s.attributes or {}).get("upstream") == ENTRA]) == 2
    assert [text for text in seen if any(secret in text for secret in secrets)] == []
    assert all(record.levelno < logging.ERROR for record in caplog.records)


# -- the answer, read as azure-identity reads it ---------------------------------------------------------------------
def test_the_request_names_the_resource_the_api_version_and_the_identity() -> None:
    assert resource_of(STORAGE_SCOPE) == "https://storage.azure.com"
    assert resource_of("https://vault.azure.net") == "https://vault.azure.net"
    assert token_url("http://localhost:8081/msi/token", STORAGE_SCOPE, "c1d2") == (
        "http://localhost:8081/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com"
        "&client_id=c1d2")
    assert token_url("http://127.0.0.1:41741/MSI/token/?x=1", STORAGE_SCOPE, None) == (
        "http://127.0.0.1:41741/MSI/token/?x=1&api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com")


LINUX = datetime(2019, 6, 20, 2, 57, 58, tzinfo=UTC).timestamp()
WINDOWS = datetime(2020, 1, 16, 17, 24, 12, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("answer", "at", "expires_on", "refresh_on"), [
    # 2019-08-01: epoch seconds as text; a token of two hours or more is refreshed at half its life.
    ({"expires_on": "1767229200"}, 1000, 1767229200, 1000 + (1767229200 - 1000) // 2),
    ({"expires_on": 1000 + HALF_LIFE_FROM}, 1000, 1000 + HALF_LIFE_FROM, 1000 + HALF_LIFE_FROM // 2),
    ({"expires_on": 5000}, 1000, 5000, None),  # a number; under two hours: refreshed near its expiry only
    ({"expires_in": 3599}, 1000, 4599, None),
    ({"expires_in": "86399", "refresh_in": "43199"}, 1000, 87399, 44199),  # the issuer's refresh time wins
    # 2017-09-01's date text, as App Service on Linux and on Windows wrote it (azure-identity read both).
    ({"expires_on": "06/20/2019 02:57:58 +00:00"}, LINUX - 3600, LINUX, None),
    ({"expires_on": "1/16/2020 5:24:12 PM +00:00"}, WINDOWS - 3600, WINDOWS, None),
    ({"expires_on": "1/16/2020 5:24:12 AM +00:00"}, WINDOWS - 3600, WINDOWS - 12 * 3600, None),
])
def test_the_expiry_is_read_in_every_form_the_endpoint_gives_it(
        answer: dict[str, Any], at: float, expires_on: float, refresh_on: float | None) -> None:
    body = json.dumps({"access_token": "eyJ.x.y", "token_type": "Bearer", "resource": "r", **answer}).encode()
    token = parse_token(body, at)
    assert (token.token, token.expires_on, token.refresh_on) == ("eyJ.x.y", expires_on, refresh_on)
    assert "eyJ" not in repr(token)


@pytest.mark.parametrize(("body", "detail"), [
    (b"<html>busy</html>", "answered without a JSON object"),
    (b'["eyJ.secret"]', "answered without a JSON object"),
    (b'{"expires_on": "1767229200"}', "without an access token"),
    (b'{"access_token": "", "expires_on": "1767229200"}', "without an access token"),
    (b'{"access_token": "eyJ.secret\\r\\nX: y", "expires_on": "1767229200"}', "without an access token"),
    (b'{"access_token": "eyJ.secret", "token_type": "pop", "expires_on": "1"}', "not a bearer token"),
    (b'{"access_token": "eyJ.secret"}', "without a valid expiry"),
    (b'{"access_token": "eyJ.secret", "expires_on": "tomorrow"}', "without a valid expiry"),
])
def test_an_answer_without_a_usable_token_is_an_upstream_error_that_quotes_none_of_it(body: bytes, detail: str) -> None:
    with pytest.raises(UpstreamError, match=detail) as raised:
        parse_token(body, 1000.0)
    assert "secret" not in str(raised.value)


# -- a cold read signing in this way imports no SDK ------------------------------------------------------------------
# A fresh interpreter with the app settings of Azure Functions (IDENTITY_ENDPOINT/IDENTITY_HEADER, a table endpoint
# reached with the identity): one loopback server plays the managed-identity endpoint and Table Storage, answers a
# table request only with the endpoint's token, and the read's imports are listed.
A_READ_WITH_THE_MANAGED_IDENTITY = """
import asyncio, json, os, sys
from tests.loopback_table import ID, port_of, serve, table_answer

TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzdG9yYWdlIn0.c2ln"
seen = []

def answer(method, target, headers):
    if target.startswith("/msi/token"):
        seen.append(target)
        if headers.get("x-identity-header") != "host-secret":
            return 401, {}
        return 200, {"access_token": TOKEN, "expires_on": "4102444800", "token_type": "Bearer",
                     "resource": "https://storage.azure.com"}
    if headers.get("authorization") != "Bearer " + TOKEN:
        return 403, {}
    seen.append(target.split("?")[0])
    return 200, table_answer(target)

async def main():
    server = await serve(answer)
    port = port_of(server)
    os.environ.update({"IDENTITY_ENDPOINT": f"http://127.0.0.1:{port}/msi/token", "IDENTITY_HEADER": "host-secret",
                       "AzureWebJobsStorage__tableServiceUri": f"http://127.0.0.1:{port}",
                       "AzureWebJobsStorage__clientId": "5e2d7c1a-0b9f-4e3d-8c7b-6a5f4e3d2c1b"})
    import function_app
    import shared.wiring
    from shared.azure.clients import close_clients

    reader = shared.wiring.connection_reader()
    record = await reader.get("azure-key-vault", ID)
    listed, _ = await reader.list_connections("azure-key-vault", 50, None)
    rotations, _ = await reader.rotations("azure-key-vault", ID, 50, None)
    assert record.name == "n" and [r.id for r in listed] == [ID] and rotations == [], (record, listed, rotations)
    await close_clients()
    server.close()
    print(json.dumps({"seen": seen, "modules": sorted(sys.modules)}))

asyncio.run(main())
"""
NOT_ON_A_READ = ["azure.identity", "msal", "azure.core", "aiohttp", "requests", "azure.data.tables"]


def test_a_cold_read_with_the_managed_identity_imports_neither_azure_identity_nor_msal_azure_core_or_aiohttp() -> None:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AZURE_", "IDENTITY_", "MSI_", "AzureWebJobs", "STATE_"))}
    out = subprocess.run([sys.executable, "-c", A_READ_WITH_THE_MANAGED_IDENTITY], cwd=ROOT, capture_output=True,
                         text=True, check=False, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    token_request, *table_requests = result["seen"]
    # One token request, then every table request carried its token (the server answers 403 to any other).
    assert token_request == ("/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com"
                             "&client_id=5e2d7c1a-0b9f-4e3d-8c7b-6a5f4e3d2c1b")
    assert len(table_requests) >= 3 and not any(r.startswith("/msi/") for r in table_requests)
    loaded = set(result["modules"])
    assert {"shared.azure.managed_identity", "shared.azure.rest", "shared.store.table_reads"} <= loaded
    assert [name for name in NOT_ON_A_READ if name in loaded or any(m.startswith(name + ".") for m in loaded)] == []


# A token request shared by concurrent callers runs without the first caller's deadline: each waiter keeps its own,
# and one request's deadline fails no other.
DEADLINE_VAULT_SCOPE = "https://vault.azure.net/.default"


@pytest.mark.parametrize("token", ["service credential", "Table Storage token"])
async def test_one_request_s_deadline_does_not_fail_the_others_sharing_its_token_request(
        host: Host, monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    """An HTTP request near its deadline (``answering_within``) asks the service's identity for a token first; a
    timer (no deadline) asks for the same token while that request is in flight, and shares it. The identity
    endpoint is busy once (503, Retry-After 1 s). The shared request runs in the FIRST caller's context, so the
    retry policy reads the first caller's deadline: it gives up, and the timer, which had all the time in the
    world to wait one second, was failed too. The same for the read path's Table Storage token, whose concurrent
    fetches share one (``AzureClients.storage_token``)."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", host.endpoint)  # azure-identity reads the host's variables itself
    monkeypatch.setenv("IDENTITY_HEADER", host.header)
    host.standin.admin.set_faults([{"path": f"^{MSI}$", "status": 503, "times": 1,
                                    "headers": {"Retry-After": "1"}}])
    clients = host.clients()
    credential = clients.service_credential()

    async def ask() -> object:
        if token == "service credential":
            return await credential.get_token(DEADLINE_VAULT_SCOPE)
        return await clients.storage_token()

    async def hurried() -> object:
        with answering_within(0.3):
            return await ask()

    async def patient() -> object:
        await asyncio.sleep(0)  # the hurried request asked first
        return await ask()

    try:
        first, second = await asyncio.gather(hurried(), patient(), return_exceptions=True)
    finally:
        await clients.close()
        host.standin.admin.clear_faults()
    assert isinstance(first, BaseException)  # its own deadline: fair
    assert not isinstance(second, BaseException), f"the patient caller was failed by another's deadline: {second!r}"
