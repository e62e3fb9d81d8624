"""The stand-in's Microsoft Graph (app registrations), exercised with the real msgraph-sdk over TLS.

Clients are built as LOCAL-TESTING.md describes: an async ``ClientSecretCredential`` with the stand-in as
authority, the scope ``{url}/.default`` and ``request_adapter.base_url = {url}/v1.0``. Async credentials get
``connection_verify=`` because aiohttp builds its SSL context at import time, before ``SSL_CERT_FILE`` is set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from kiota_abstractions.api_error import APIError
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphServiceClient
from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
    AddPasswordPostRequestBody,
)
from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
    RemovePasswordPostRequestBody,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.password_credential import PasswordCredential
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph_core import GraphClientFactory

from localdev.standin import StandIn
from localdev.standin.graph import concurrency_fault, graph_fault, throttle_fault

OWNED_BY = "Application.ReadWrite.OwnedBy"


@dataclass
class App:
    app_id: str
    object_id: str
    sp_id: str
    secret: str


@dataclass
class World:
    standin: StandIn
    url: str
    ca: str
    tenant: str
    rotator: App  # Application.ReadWrite.OwnedBy, owner of itself (what the service needs)
    unowned: App  # Application.ReadWrite.OwnedBy, not an owner of itself
    reader: App  # Application.Read.All
    writer: App  # Application.ReadWrite.All
    norole: App  # no Graph permission
    target: App  # nobody's

    @property
    def scope(self) -> str:
        return f"{self.url}/.default"


def make_app(standin: StandIn, tenant: str, name: str, roles: list[str], *, self_owned: bool = False) -> App:
    admin = standin.admin
    app = admin.add_app(tenant, name, roles=roles)
    if self_owned:
        admin.add_owner(tenant, app["appId"], app["appId"])
    secret = admin.add_secret(tenant, app["appId"], display_name="seed")
    return App(app["appId"], app["id"], app["servicePrincipalId"], secret["secretText"])


@pytest.fixture(scope="module")
def world(standin: StandIn) -> World:
    tenant = standin.admin.add_tenant()
    return World(
        standin=standin,
        url=standin.url,
        ca=str(standin.ca_path),
        tenant=tenant,
        rotator=make_app(standin, tenant, "rotator", [OWNED_BY], self_owned=True),
        unowned=make_app(standin, tenant, "unowned", [OWNED_BY]),
        reader=make_app(standin, tenant, "reader", ["Application.Read.All"]),
        writer=make_app(standin, tenant, "writer", ["Application.ReadWrite.All"]),
        norole=make_app(standin, tenant, "norole", []),
        target=make_app(standin, tenant, "target", []),
    )


@asynccontextmanager
async def graph(world: World, app: App, *, retries: bool = True, tenant: str | None = None) -> AsyncIterator[Any]:
    """A GraphServiceClient for ``app``; ``retries=False`` builds it as the service does (msgraph retries off)."""
    async with AsyncClientSecretCredential(
        tenant or world.tenant, app.app_id, app.secret, authority=world.url, connection_verify=world.ca
    ) as credential:
        if retries:
            client = GraphServiceClient(credentials=credential, scopes=[world.scope])
            client.request_adapter.base_url = f"{world.url}/v1.0"
            yield client
            return
        no_retry = RetryHandlerOption(max_retries=0, should_retry=False)
        async with httpx.AsyncClient(base_url=f"{world.url}/v1.0") as http:
            wrapped = GraphClientFactory.create_with_default_middleware(
                client=http, options={no_retry.get_key(): no_retry}
            )
            provider = AzureIdentityAuthenticationProvider(credential, scopes=[world.scope])
            adapter = GraphRequestAdapter(provider, client=wrapped)
            adapter.base_url = f"{world.url}/v1.0"
            yield GraphServiceClient(request_adapter=adapter)


def new_password(name: str = "rotated", days: int = 30) -> AddPasswordPostRequestBody:
    end = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name=name, end_date_time=end))


def token_with(world: World, app_id: str, secret: str) -> str:
    credential = ClientSecretCredential(
        world.tenant, app_id, secret, authority=world.url, disable_instance_discovery=True
    )
    return credential.get_token(world.scope).token


def graph_requests(world: World) -> list[dict[str, Any]]:
    return [r for r in world.standin.admin.requests() if r["path"].startswith("/v1.0/")]


# --- reading ----------------------------------------------------------------------------------------------


async def test_find_by_app_id_and_by_object_id(world: World) -> None:
    world.standin.admin.clear_requests()
    async with graph(world, world.rotator) as client:
        app = await client.applications_with_app_id(world.rotator.app_id).get()
        assert (app.id, app.app_id, app.display_name) == (world.rotator.object_id, world.rotator.app_id, "rotator")
        assert app.key_credentials == []
        [seed] = app.password_credentials
        assert seed.display_name == "seed"
        assert seed.hint == world.rotator.secret[:3]
        assert seed.secret_text is None
        assert seed.key_id is not None and seed.end_date_time > dt.datetime.now(dt.UTC)

        by_id = await client.applications.by_application_id(world.rotator.object_id).get()
        assert by_id.app_id == world.rotator.app_id

        missing = str(uuid.uuid4())
        with pytest.raises(ODataError) as caught:
            await client.applications_with_app_id(missing).get()
        assert caught.value.response_status_code == 404
        assert caught.value.error.code == "Request_ResourceNotFound"
        assert missing in caught.value.error.message

    # msgraph-sdk 1.65 sends the quotes and parentheses as they are (not percent-encoded).
    sent = graph_requests(world)
    assert sent[0]["target"] == f"/v1.0/applications(appId='{world.rotator.app_id}')"
    assert sent[0]["appid"] == world.rotator.app_id
    assert sent[1]["target"] == f"/v1.0/applications/{world.rotator.object_id}"


def test_tokens_are_checked(world: World) -> None:
    vault_token = ClientSecretCredential(
        world.tenant, world.reader.app_id, world.reader.secret, authority=world.url, disable_instance_discovery=True
    ).get_token("https://vault.azure.net/.default")
    public_graph = ClientSecretCredential(
        world.tenant, world.reader.app_id, world.reader.secret, authority=world.url, disable_instance_discovery=True
    ).get_token("https://graph.microsoft.com/.default")
    local_graph = token_with(world, world.reader.app_id, world.reader.secret)
    assert jwt.decode(local_graph, options={"verify_signature": False})["aud"] == world.url
    path = f"/v1.0/applications(appId='{world.target.app_id}')"
    with httpx.Client(base_url=world.url, verify=ssl.create_default_context(cafile=world.ca)) as http:
        none = http.get(path)
        assert none.status_code == 401
        error = none.json()["error"]
        assert (error["code"], error["message"]) == ("InvalidAuthenticationToken", "Access token is empty.")
        assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
        wrong = http.get(path, headers={"Authorization": f"Bearer {vault_token.token}"})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "InvalidAuthenticationToken")
        for token in (public_graph.token, local_graph):
            ok = http.get(path, headers={"Authorization": f"Bearer {token}", "client-request-id": "abc"})
            assert ok.status_code == 200
            assert ok.headers["client-request-id"] == "abc"
            assert ok.json()["appId"] == world.target.app_id


# --- secrets ----------------------------------------------------------------------------------------------------


async def test_add_password_gives_a_working_secret_and_remove_password_revokes_it(world: World) -> None:
    admin = world.standin.admin
    before = admin.graph_calls()["counts"]
    async with graph(world, world.rotator) as client:
        item = client.applications.by_application_id(world.rotator.object_id)
        added = await item.add_password.post(new_password("rotated-1"))
        assert added.secret_text and len(added.secret_text) == 40
        assert added.hint == added.secret_text[:3]
        assert added.display_name == "rotated-1"
        key_id = str(added.key_id)

        token = token_with(world, world.rotator.app_id, added.secret_text)
        assert jwt.decode(token, options={"verify_signature": False})["appid"] == world.rotator.app_id

        [view] = [p for p in admin.app_passwords(world.tenant, world.rotator.app_id) if p["keyId"] == key_id]
        assert (view["createdBy"], view["createdByAppId"], view["revoked"]) == ("graph", world.rotator.app_id, False)
        seen = await client.applications_with_app_id(world.rotator.app_id).get()
        assert key_id in {str(p.key_id) for p in seen.password_credentials}

        assert await item.remove_password.post(RemovePasswordPostRequestBody(key_id=added.key_id)) is None
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            token_with(world, world.rotator.app_id, added.secret_text)
        [view] = [p for p in admin.app_passwords(world.tenant, world.rotator.app_id) if p["keyId"] == key_id]
        assert (view["revoked"], view["revokedBy"]) == (True, "graph")

        with pytest.raises(ODataError) as caught:
            await item.remove_password.post(RemovePasswordPostRequestBody(key_id=added.key_id))
        assert caught.value.response_status_code == 400
        assert caught.value.error.code == "Request_BadRequest"
        assert f"No password credential found with keyId '{key_id}'" in caught.value.error.message

    calls = admin.graph_calls()
    assert calls["counts"]["addPassword"] == before["addPassword"] + 1
    assert calls["counts"]["removePassword"] == before["removePassword"] + 2
    mine = [e for e in calls["log"] if e["keyId"] == key_id]
    assert [(e["operation"], e["status"]) for e in mine] == [
        ("addPassword", 200),
        ("removePassword", 204),
        ("removePassword", 400),
    ]
    assert {e["callerAppId"] for e in mine} == {world.rotator.app_id}
    assert {e["appId"] for e in mine} == {world.rotator.app_id}


async def test_propagation_delay(world: World) -> None:
    admin = world.standin.admin
    admin.set_propagation_delay(1.0)
    try:
        async with graph(world, world.rotator) as client:
            added = await client.applications.by_application_id(world.rotator.object_id).add_password.post(
                new_password("propagating")
            )
        created = time.monotonic()
        ready = {p["keyId"]: p["readyAt"] for p in admin.app_passwords(world.tenant, world.rotator.app_id)}
        assert ready.pop(str(added.key_id)) is not None  # shown, so that a failed test can say when
        assert set(ready.values()) == {None}  # the secrets made before the delay was set work at once
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            token_with(world, world.rotator.app_id, added.secret_text)
        assert token_with(world, world.rotator.app_id, world.rotator.secret)  # older secrets are not affected
        await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - created)))
        assert token_with(world, world.rotator.app_id, added.secret_text)
    finally:
        admin.set_propagation_delay(0)


# --- permissions -----------------------------------------------------------------------------------------------


async def expect_denied(call: Any) -> None:
    with pytest.raises(ODataError) as caught:
        await call
    assert caught.value.response_status_code == 403
    assert caught.value.error.code == "Authorization_RequestDenied"
    assert caught.value.error.message == "Insufficient privileges to complete the operation."


async def test_permissions(world: World) -> None:
    target = world.target
    async with graph(world, world.norole) as client:
        await expect_denied(client.applications_with_app_id(target.app_id).get())
        await expect_denied(client.applications.get())
        assert (await client.applications_with_app_id(world.norole.app_id).get()).app_id == world.norole.app_id
        await expect_denied(
            client.applications.by_application_id(world.norole.object_id).add_password.post(new_password())
        )
    async with graph(world, world.unowned) as client:  # OwnedBy without ownership: not even of itself
        await expect_denied(
            client.applications.by_application_id(world.unowned.object_id).add_password.post(new_password())
        )
    async with graph(world, world.rotator) as client:  # OwnedBy and owner of itself only
        await expect_denied(client.applications_with_app_id(target.app_id).get())
        await expect_denied(client.applications.by_application_id(target.object_id).add_password.post(new_password()))
        listed = await client.applications.get()
        assert [a.app_id for a in listed.value] == [world.rotator.app_id]
    async with graph(world, world.reader) as client:
        assert (await client.applications_with_app_id(target.app_id).get()).display_name == "target"
        await expect_denied(client.applications.by_application_id(target.object_id).add_password.post(new_password()))
        seed_key = (await client.applications_with_app_id(target.app_id).get()).password_credentials[0].key_id
        await expect_denied(
            client.applications.by_application_id(target.object_id).remove_password.post(
                RemovePasswordPostRequestBody(key_id=seed_key)
            )
        )
    async with graph(world, world.writer) as client:
        added = await client.applications.by_application_id(target.object_id).add_password.post(new_password())
        assert added.secret_text
    assert world.standin.admin.app_passwords(world.tenant, target.app_id)[-1]["createdByAppId"] == world.writer.app_id

    world.standin.admin.add_owner(world.tenant, target.app_id, world.rotator.sp_id)
    async with graph(world, world.rotator) as client:
        added = await client.applications.by_application_id(target.object_id).add_password.post(new_password())
        assert added.key_id is not None


# --- listing ---------------------------------------------------------------------------------------------------


async def test_listing_follows_next_link(world: World) -> None:
    standin = world.standin
    tenant = standin.admin.add_tenant()
    lister = make_app(standin, tenant, "lister", ["Application.Read.All"])
    for i in range(104):
        standin.state.add_app(tenant, f"app-{i:03}")  # in-process: quicker than 104 admin calls
    standin.admin.clear_requests()
    async with graph(world, lister, tenant=tenant) as client:
        first = await client.applications.get()
        assert len(first.value) == 100
        assert first.odata_next_link.startswith(f"{world.url}/v1.0/applications?$top=100&$skiptoken=")
        rest = await client.applications.with_url(first.odata_next_link).get()
        assert len(rest.value) == 5
        assert rest.odata_next_link is None

        config = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetRequestConfiguration(
            query_parameters=ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
                select=["id", "appId", "displayName"], top=40
            )
        )
        page = await client.applications.get(config)
        names: list[str] = []
        pages = 0
        while page is not None:
            pages += 1
            names += [a.display_name for a in page.value]
            assert all(a.password_credentials is None and a.id and a.app_id for a in page.value)
            if not page.odata_next_link:
                break
            assert "$select=id,appId,displayName" in page.odata_next_link
            page = await client.applications.with_url(page.odata_next_link).get()
    assert pages == 3
    assert len(names) == len(set(names)) == 105
    assert names[0] == "lister"
    assert {"$select": "id,appId,displayName", "$top": "40"}.items() <= graph_requests(world)[2]["query"].items()


# --- failures ----------------------------------------------------------------------------------------------------


async def test_throttling_and_concurrency_faults(world: World) -> None:
    admin = world.standin.admin
    path = rf"^/v1\.0/applications\(appId='{world.reader.app_id}'\)$"
    throttle = throttle_fault(path, retry_after=1)
    try:
        admin.set_faults([throttle])
        async with graph(world, world.reader, retries=False) as client:  # as the service builds it
            with pytest.raises(ODataError) as caught:
                await client.applications_with_app_id(world.reader.app_id).get()
            assert (caught.value.response_status_code, caught.value.error.code) == (429, "TooManyRequests")
            assert caught.value.response_headers["retry-after"] == "1"
            assert (await client.applications_with_app_id(world.reader.app_id).get()).display_name == "reader"

            # A rule without a JSON body: msgraph raises kiota's APIError, not ODataError (still with the status).
            admin.set_faults([{"path": path, "status": 429, "headers": {"Retry-After": "1"}, "times": 1}])
            with pytest.raises(APIError) as bare:
                await client.applications_with_app_id(world.reader.app_id).get()
            assert not isinstance(bare.value, ODataError)
            assert bare.value.response_status_code == 429

        admin.set_faults([throttle])
        admin.clear_requests()
        started = time.monotonic()
        async with graph(world, world.reader) as client:  # msgraph's default RetryHandler honours Retry-After
            assert (await client.applications_with_app_id(world.reader.app_id).get()).display_name == "reader"
        assert time.monotonic() - started >= 1.0
        assert admin.faults()[0]["hits"] == 1
        assert [r["status"] for r in graph_requests(world)] == [429, 200]

        admin.set_faults([concurrency_fault("addPassword")])
        async with graph(world, world.rotator, retries=False) as client:
            item = client.applications.by_application_id(world.rotator.object_id)
            with pytest.raises(ODataError) as conflict:
                await item.add_password.post(new_password())
            assert conflict.value.response_status_code == 409
            assert conflict.value.error.code == "Directory_ConcurrencyViolation"
            assert "concurrent requests" in conflict.value.error.message
            assert (await item.add_password.post(new_password())).secret_text

        admin.set_faults(
            [graph_fault(503, "serviceNotAvailable", "Service unavailable.", path=r"^/v1\.0/applications$")]
        )
        async with graph(world, world.reader, retries=False) as client:
            with pytest.raises(ODataError) as unavailable:
                await client.applications.get()
            assert (unavailable.value.response_status_code, unavailable.value.error.code) == (
                503,
                "serviceNotAvailable",
            )
    finally:
        admin.clear_faults()


def test_reset_clears_graph_state() -> None:
    with StandIn() as other:
        admin = other.admin
        tenant = admin.add_tenant()
        app = admin.add_app(tenant, "x", roles=[OWNED_BY])
        admin.add_owner(tenant, app["appId"], app["servicePrincipalId"])
        assert admin.get_app(tenant, app["appId"])["owners"] == [app["servicePrincipalId"]]
        admin.set_propagation_delay(5)
        with httpx.Client(base_url=other.url, verify=ssl.create_default_context(cafile=str(other.ca_path))) as http:
            assert http.get("/v1.0/applications").status_code == 401
        assert admin.graph_calls()["counts"]["list"] == 1
        admin.reset()
        assert admin.graph_calls() == {
            "counts": {"get": 0, "list": 0, "addPassword": 0, "removePassword": 0},
            "log": [],
        }
        assert other.state.propagation_delay == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_request_whose_client_died_mid_body_changes_nothing(world: World, framing: str) -> None:
    """A client SIGKILLed while sending addPassword leaves a truncated body behind. Like any real server, the
    stand-in acts on no part of it (it once added a password with no display name from the empty rest)."""
    import socket
    import urllib.parse

    admin = world.standin.admin
    token = token_with(world, world.rotator.app_id, world.rotator.secret)
    before = admin.app_passwords(world.tenant, world.rotator.app_id)
    body = b'{"passwordCredential": {"displayName": "half-sent"}}'
    if framing == "chunked":
        framed, extra = f"{len(body):x}\r\n".encode() + body[:10], "Transfer-Encoding: chunked"
    else:
        framed, extra = body[:10], f"Content-Length: {len(body)}"
    url = urllib.parse.urlsplit(world.url)
    head = (f"POST /v1.0/applications/{world.rotator.object_id}/addPassword HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}\r\n\r\n").encode()
    context = ssl.create_default_context(cafile=world.ca)
    with socket.create_connection((url.hostname, url.port)) as raw, \
            context.wrap_socket(raw, server_hostname=url.hostname) as tls:
        tls.sendall(head + framed)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the stand-in has seen the request once it logs it
        if any(e["path"].endswith("/addPassword") and e["status"] is None for e in admin.requests()[-5:]):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the stand-in never logged the truncated request")
    assert admin.app_passwords(world.tenant, world.rotator.app_id) == before
