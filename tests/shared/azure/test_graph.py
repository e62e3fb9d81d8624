"""GraphApps against the stand-in, through the service's own clients: the three calls of a rotation are plain JSON
requests over the shared aiohttp session (msgraph-sdk is not used for them), with Graph's errors translated and
retried as before, and the Graph client's response hooks still seeing every answer."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from localdev.standin.graph import graph_fault, throttle_fault
from shared.apps import Method
from shared.azure.clients import AzureClients
from shared.azure.graph import APPLICATION_SELECT, APPLICATION_SELECT_WITH_KEYS, GraphApps
from shared.credentials import build_credential
from shared.errors import CredentialRejected, InvalidRequest, NotFound, UpstreamError, UpstreamForbidden
from shared.ports import AppRegistration, NewPassword
from tests.e2e.entra import EntraApp, register_app, register_rotatable_app

pytestmark = pytest.mark.e2e


def graph_for(clients: AzureClients, entra: EntraApp) -> tuple[Any, GraphApps]:
    credential = build_credential(clients, Method.CLIENT_SECRET, entra.tenant_id, entra.client_id,
                                  {"clientSecret": entra.client_secret})
    return credential, GraphApps(clients, credential)


def graph_requests(admin: Any, entra: EntraApp) -> list[dict[str, Any]]:
    return [r for r in admin.requests() if r.get("graph") and r.get("appId") == entra.client_id]


async def never_lost() -> None:
    raise AssertionError("no addition's answer was lost here")


async def password_to_remove(graph: GraphApps, entra: EntraApp,
                            secrets_used: Any) -> tuple[AppRegistration, NewPassword]:
    """The application, and a password added to it for the test to remove."""
    found = await graph.find(entra.client_id)
    added = await graph.add_password(found.object_id, "to remove", datetime.now(UTC) + timedelta(days=1), never_lost)
    secrets_used.add(added.secret_text)
    return found, added


async def test_find_add_and_remove_a_password(admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    entra = register_rotatable_app(admin, secrets_used, name="graph-calls")
    credential, graph = graph_for(clients, entra)
    async with credential:
        found = await graph.find(entra.client_id)
        assert (found.object_id, found.app_id, found.display_name) == (entra.object_id, entra.client_id, "graph-calls")
        given = next(p for p in found.passwords if p.key_id == entra.key_id.lower())
        assert given.hint == entra.client_secret[:3]
        assert given.display_name == "given by the user"
        assert given.end_date_time is not None

        end = datetime.now(UTC) + timedelta(days=10)
        added = await graph.add_password(found.object_id, "rotation marker", end, never_lost)
        secrets_used.add(added.secret_text)
        assert added.end_date_time is not None
        assert abs((added.end_date_time - end).total_seconds()) < 2
        live = {p["keyId"]: p for p in admin.app_passwords(entra.tenant_id, entra.client_id) if not p["revoked"]}
        assert live[added.key_id]["displayName"] == "rotation marker"

        await graph.remove_password(found.object_id, added.key_id)
        live = {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id) if not p["revoked"]}
        assert added.key_id not in live
        # Graph refuses a Key ID the application does not have (400): the application is read, and the key is gone,
        # so the removal is done (idempotent).
        await graph.remove_password(found.object_id, added.key_id)

    reads = [r for r in graph_requests(admin, entra) if r["graph"] == "get"]
    assert reads
    # every read selects what it uses (the application; its passwords alone, to see the refused removal done), and
    # never the key credentials, whose reads Graph throttles at 150 a minute per tenant
    assert {r["query"]["$select"] for r in reads} == {APPLICATION_SELECT, "id,passwordCredentials"}
    assert "keyCredentials" not in APPLICATION_SELECT and "keyCredentials" in APPLICATION_SELECT_WITH_KEYS


async def test_a_removal_or_a_federated_addition_sent_again_after_its_answer_was_lost_is_done_once(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    """A POST whose connection dropped is sent again; Graph then refuses the second (the key is gone, the name is
    taken), and what was asked for is done: the application says so."""
    entra = register_rotatable_app(admin, secrets_used, name="graph-lost-answers")
    credential, graph = graph_for(clients, entra)
    try:
        async with credential:
            found, added = await password_to_remove(graph, entra, secrets_used)
            admin.set_faults([{"method": "POST", "path": r"/removePassword$", "action": "drop_after", "times": 1}])
            await graph.remove_password(found.object_id, added.key_id)
            assert [f["hits"] for f in admin.faults()] == [1]  # the first was applied, its answer lost
            assert added.key_id not in {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id)
                                        if not p["revoked"]}

            wanted = {"name": "appconn-lost-answer", "issuer": "https://issuer.example/", "subject": "subject-1",
                      "audiences": ["api://AzureADTokenExchange"]}
            admin.set_faults([{"method": "POST", "path": r"/federatedIdentityCredentials$", "action": "drop_after",
                               "times": 1}])
            made = await graph.add_federated_credential(found.object_id, wanted)
            assert [f["hits"] for f in admin.faults()] == [1]
            assert [(c.id, c.name) for c in await graph.federated_credentials(found.object_id)] == [
                (made.id, "appconn-lost-answer")]
            admin.clear_faults()
            with pytest.raises(UpstreamError):  # a name taken by another credential (another subject) is refused
                await graph.add_federated_credential(found.object_id, {**wanted, "subject": "someone-else"})
            # a key that is still there is not taken for removed when Graph refuses its removal
            admin.set_faults([graph_fault(400, "Request_BadRequest", "refused", times=1)])
            with pytest.raises(UpstreamError, match="Request_BadRequest"):
                await graph.remove_password(found.object_id, entra.key_id)
            # nor is a refusal taken for what happened when the application cannot be read to tell: an earlier
            # attempt may have done it (a DELETE keeps its mark on such an answer, rather than putting back a
            # connection whose credential is gone)
            admin.set_faults([graph_fault(400, "Request_BadRequest", "refused", method="POST", times=1),
                              graph_fault(403, "Authorization_RequestDenied", "denied", method="GET", times=1)])
            with pytest.raises(UpstreamError, match="the outcome is not known"):
                await graph.remove_password(found.object_id, entra.key_id)
    finally:
        admin.clear_faults()


def applied_then(status: int, operation: str, *, times: int | None = 1) -> dict[str, Any]:
    """POST ``.../{operation}`` handled by Graph (its effects stay), then answered ``status`` (a gateway's or a
    backend's failure after the work was done)."""
    return {**graph_fault(status, "UnknownError", "gateway", method="POST", path=rf"/{operation}$", times=times),
            "action": "respond_after"}


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_an_add_password_applied_then_answered_5xx_leaves_no_password_nobody_knows(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, status: int) -> None:
    """(Review of the retries 1.) An addPassword that Graph applied and then answered 500, 502 or 504 was sent again
    blindly (500, 504 and 502 alike): two live passwords of the rotation's marker, one whose secret nobody saw. Now
    the caller's ``lost`` clean-up runs first; a 502 is not sent again at all (a POST: as azure-core), and the
    clean-up still runs before the failure is raised."""
    entra = register_rotatable_app(admin, secrets_used, name=f"graph-applied-{status}")
    credential, graph = graph_for(clients, entra)

    def named(name: str) -> set[str]:
        return {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id)
                if not p["revoked"] and p["displayName"] == name}

    undone: list[set[str]] = []
    async with credential:
        found = await graph.find(entra.client_id)
        marker = f"applied then {status}"

        async def lost() -> None:
            undone.append(named(marker))
            for key_id in undone[-1]:
                await graph.remove_password(found.object_id, key_id)

        admin.set_faults([applied_then(status, "addPassword")])
        admin.clear_requests()
        end = datetime.now(UTC) + timedelta(days=1)
        if status == 502:
            with pytest.raises(UpstreamError, match="502"):
                await graph.add_password(found.object_id, marker, end, lost)
            kept = set()
        else:
            added = await graph.add_password(found.object_id, marker, end, lost)
            secrets_used.add(added.secret_text)
            kept = {added.key_id}
        sent = [r for r in graph_requests(admin, entra) if r["graph"] == "addPassword"]
    assert [f["hits"] for f in admin.faults()] == [1]
    assert len(sent) == (1 if status == 502 else 2)
    assert len(undone) == 1 and len(undone[0]) == 1  # the one applied, whose answer was the 5xx, removed
    assert named(marker) == kept


@pytest.mark.parametrize("status", [500, 502])
async def test_a_removal_or_a_federated_addition_applied_then_answered_5xx_is_done_once(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, status: int) -> None:
    """removePassword and a federated credential's addition applied, then answered 500 (sent again: Graph refuses
    the second) or 502 (a POST: not sent again): the application says what was asked for is done."""
    entra = register_rotatable_app(admin, secrets_used, name=f"graph-removal-{status}")
    credential, graph = graph_for(clients, entra)
    async with credential:
        found, added = await password_to_remove(graph, entra, secrets_used)
        admin.set_faults([applied_then(status, "removePassword")])
        admin.clear_requests()
        await graph.remove_password(found.object_id, added.key_id)
        removals = [r for r in graph_requests(admin, entra) if r["graph"] == "removePassword"]
        assert len(removals) == (1 if status == 502 else 2)
        assert added.key_id not in {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id)
                                    if not p["revoked"]}

        wanted = {"name": f"appconn-applied-{status}", "issuer": "https://issuer.example/", "subject": "subject-1",
                  "audiences": ["api://AzureADTokenExchange"]}
        admin.set_faults([applied_then(status, "federatedIdentityCredentials")])
        made = await graph.add_federated_credential(found.object_id, wanted)
        assert [f["hits"] for f in admin.faults()] == [1]
        present = await graph.federated_credentials(found.object_id)
        assert [(c.id, c.name) for c in present] == [(made.id, wanted["name"])]


async def test_graph_refusals_become_domain_errors(admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    reader = register_app(admin, secrets_used, name="no-graph-role")
    credential, graph = graph_for(clients, reader)
    async with credential:
        mine = await graph.find(reader.client_id)  # an app may always read itself
        with pytest.raises(UpstreamForbidden, match=r"Application\.ReadWrite\.OwnedBy"):
            await graph.add_password(mine.object_id, "x", datetime.now(UTC) + timedelta(days=1), never_lost)
        with pytest.raises((NotFound, UpstreamForbidden)):
            await graph.find("00000000-0000-0000-0000-00000000dead")


async def test_a_redirect_from_graph_is_neither_followed_nor_taken_for_a_success(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    """(Review SSRF 3.) A 3xx was taken for a success without a body: a removal counted as done though nothing was
    removed (the old credential recorded as revoked, still live), an application read as not found."""
    entra = register_rotatable_app(admin, secrets_used, name="graph-redirects")
    credential, graph = graph_for(clients, entra)
    try:
        async with credential:
            found = await graph.find(entra.client_id)
            admin.set_faults([graph_fault(302, "", "moved", method="POST", path=r"/removePassword$", times=None)])
            with pytest.raises(UpstreamError, match="302"):
                await graph.remove_password(found.object_id, entra.key_id)
            assert entra.key_id in {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id)
                                    if not p["revoked"]}
            admin.set_faults([graph_fault(307, "", "moved", method="GET", times=None)])
            with pytest.raises(UpstreamError, match="307") as refused:
                await graph.find(entra.client_id)
            assert not isinstance(refused.value, NotFound)
    finally:
        admin.clear_faults()


async def test_a_session_whose_credential_entra_refuses_answers_the_refusal_with_its_code(
        admin: Any, clients: AzureClients, secrets_used: Any) -> None:
    """Found by a review: the token of a Graph session is acquired at its first call, and azure-identity's
    refusal went through untranslated (an unhandled 500), so the rules that read Entra's code (a credential it
    does not know: removed) never saw one."""
    entra = register_app(admin, secrets_used, name="refused-session")
    credential = build_credential(clients, Method.CLIENT_SECRET, entra.tenant_id, entra.client_id,
                                  {"clientSecret": entra.client_secret + "-not-it"})
    async with credential:
        with pytest.raises(CredentialRejected) as refused:
            await GraphApps(clients, credential).find(entra.client_id)
    assert refused.value.extensions["aadstsCode"] == "AADSTS7000215"


async def test_throttling_and_dropped_connections_are_retried_and_seen_by_the_response_hooks(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None) -> None:
    entra = register_rotatable_app(admin, secrets_used, name="graph-retries")
    statuses: list[int] = []

    async def hook(response: Any) -> None:
        statuses.append(response.status_code)

    hooks = clients.graph_http().event_hooks["response"]
    hooks.append(hook)
    credential, graph = graph_for(clients, entra)
    try:
        async with credential:
            admin.set_faults([throttle_fault(path=r"^/v1\.0/applications\(", retry_after=0, times=1)])
            found = await graph.find(entra.client_id)
            assert found.object_id == entra.object_id
            assert statuses[-2:] == [429, 200]

            # A try sent whose answer never came may have been applied, and its secret is gone: the caller's ``lost``
            # runs (it removes the passwords of that name, audited) before the request is sent again.
            undone: list[set[str]] = []

            def named(name: str) -> set[str]:
                return {p["keyId"] for p in admin.app_passwords(entra.tenant_id, entra.client_id)
                        if not p["revoked"] and p["displayName"] == name}

            def lost_of(name: str) -> Any:
                async def lost() -> None:
                    undone.append(named(name))
                    for key_id in undone[-1]:
                        await graph.remove_password(found.object_id, key_id)
                return lost

            admin.set_faults([{"method": "POST", "path": r"/addPassword$", "action": "drop", "times": 1}])
            added = await graph.add_password(found.object_id, "after a drop", datetime.now(UTC) + timedelta(days=1),
                                             lost_of("after a drop"))
            secrets_used.add(added.secret_text)
            assert [f["hits"] for f in admin.faults()] == [1]
            assert undone == [set()]  # dropped before Graph handled it: nothing had been made

            admin.set_faults([{"method": "POST", "path": r"/addPassword$", "action": "drop_after", "times": 1}])
            kept = await graph.add_password(found.object_id, "after a lost answer",
                                            datetime.now(UTC) + timedelta(days=1), lost_of("after a lost answer"))
            secrets_used.add(kept.secret_text)
            assert len(undone) == 2 and len(undone[1]) == 1 and kept.key_id not in undone[1]
            assert named("after a lost answer") == {kept.key_id}

            admin.set_faults([{"method": "POST", "path": r"/removePassword$", "status": 400, "body": "not JSON",
                               "times": 1}])  # an error that is not Graph-shaped keeps its status
            with pytest.raises(UpstreamError, match=r"\(400 \)"):
                await graph.remove_password(found.object_id, added.key_id)
            admin.set_faults([graph_fault(409, "Directory_ConcurrencyViolation", "concurrent requests", times=1)])
            await graph.remove_password(found.object_id, added.key_id)  # retried
            assert statuses[-2:] == [409, 204]
    finally:
        hooks.remove(hook)


@pytest.mark.parametrize("header", ["retry-after-ms", "x-ms-retry-after-ms"])
async def test_a_throttle_that_says_its_wait_in_milliseconds_is_waited_as_said(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, header: str) -> None:
    """(Review FC 3.) Graph's wait is read as every client reads it (``retry_after_of``): an hour said in
    milliseconds is past the retry budget, so the call gives up at once instead of backing off and trying again."""
    entra = register_rotatable_app(admin, secrets_used, name="graph-retry-after-ms")
    credential, graph = graph_for(clients, entra)
    async with credential:
        fault = throttle_fault(path=r"^/v1\.0/applications\(", times=2)
        fault["headers"] = {"Content-Type": "application/json", header: "3600000"}
        admin.set_faults([fault])
        with pytest.raises(UpstreamError):
            await graph.find(entra.client_id)
        assert [f["hits"] for f in admin.faults()] == [1]  # not tried again


@pytest.mark.parametrize(("status", "header", "wait"), [(429, "Retry-After", "120"), (503, "retry-after-ms", "90000")])
async def test_a_throttle_that_outlasts_the_retries_is_a_503_with_graph_s_wait(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, status: int, header: str,
        wait: str) -> None:
    """(Review FC 1.) Graph still throttling (or unavailable) when the retries run out: a 503 problem whose
    ``Retry-After`` is Graph's wait, not a 502 without one."""
    from shared.errors import UpstreamThrottled
    from shared.functions.http import problem_response

    entra = register_rotatable_app(admin, secrets_used, name="graph-throttled")
    credential, graph = graph_for(clients, entra)
    async with credential:
        fault = graph_fault(status, "TooManyRequests", "throttled", path=r"^/v1\.0/applications\(", times=None)
        fault["headers"] = {"Content-Type": "application/json", header: wait}
        admin.set_faults([fault])
        with pytest.raises(UpstreamThrottled) as caught:
            await graph.find(entra.client_id)
    response = problem_response(caught.value, "/x")
    assert (response.status_code, response.headers.get("Retry-After")) == (503, "120" if status == 429 else "90")


@pytest.mark.parametrize("read_throttled", [True, False], ids=["application-read-throttled-too", "read-fine"])
async def test_a_removal_graph_still_throttles_is_a_503_with_graph_s_wait_not_an_unknown_outcome(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, read_throttled: bool) -> None:
    """(Review of the retries.) removePassword throttled past the retries is checked against the application; Graph
    throttles per application and tenant, so that read is often throttled too. Either way nothing is decided yet:
    the caller gets Graph's 503 and its wait (a throttled revoke is retried later, paging nobody), never a 502
    "the outcome is not known" without one."""
    from shared.errors import UpstreamThrottled

    entra = register_rotatable_app(admin, secrets_used, name="graph-remove-throttled")
    credential, graph = graph_for(clients, entra)
    async with credential:
        found, added = await password_to_remove(graph, entra, secrets_used)
        faults = [graph_fault(429, "TooManyRequests", "throttled", method="POST", path=r"/removePassword$",
                              times=None, retry_after=60)]
        if read_throttled:
            faults.append(graph_fault(429, "TooManyRequests", "throttled", method="GET", times=None, retry_after=60))
        admin.set_faults(faults)
        try:
            with pytest.raises(UpstreamThrottled) as caught:
                await graph.remove_password(found.object_id, added.key_id)
        finally:
            admin.set_faults([])
        assert caught.value.headers.get("Retry-After") == "60"
        assert added.key_id in {p.key_id for p in (await graph.find(entra.client_id)).passwords}


async def test_the_app_list_is_read_page_by_page_and_a_next_page_elsewhere_is_never_read(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None) -> None:
    entra = register_rotatable_app(admin, secrets_used, name="lister", roles=("Application.Read.All",))
    for n in range(3):
        register_app(admin, secrets_used, tenant_id=entra.tenant_id, name=f"listed-{n}")
    credential, graph = graph_for(clients, entra)
    async with credential:
        listed: list[dict[str, str]] = []
        token, pages = None, 0
        while True:
            page, token = await graph.list_applications(2, token)
            assert len(page) <= 2
            listed += page
            pages += 1
            if token is None:
                break
        sent = [r for r in admin.requests() if r.get("graph") == "list" and r.get("appid") == entra.client_id]
        assert len(sent) == pages >= 2 and all(r["query"]["$select"] == "id,appId,displayName" for r in sent)
        assert {"listed-0", "listed-1", "listed-2", "lister"} <= {a["name"] for a in listed}
        assert all(set(a) == {"name", "id", "appId"} for a in listed)
        assert len({a["id"] for a in listed}) == len(listed)  # no page read twice

        # Graph's largest page is asked for at most, whatever the caller's limit.
        await graph.list_applications(1000)
        assert [r for r in admin.requests() if r.get("graph") == "list"][-1]["query"]["$top"] == "999"

        # A token Graph refuses (expired, forged) is the caller's 400; one that is not even a skiptoken is never sent.
        before = len(admin.requests())
        for forged in ("%%%", "AAAA", "A" * 4000):
            with pytest.raises(InvalidRequest, match="continuation token"):
                await graph.list_applications(2, forged)
        assert len(admin.requests()) == before
        with pytest.raises(InvalidRequest, match="continuation token"):
            await graph.list_applications(2, base64.urlsafe_b64encode(b"standin-offset:x").decode())

        # A token names its list (the key it was given: a connection's): with another's it is a 400, Graph not asked.
        _, named = await graph.list_applications(2, None, "connection-a")
        assert named is not None
        before = len(admin.requests())
        with pytest.raises(InvalidRequest, match="continuation token"):
            await graph.list_applications(2, named, "connection-b")
        assert len(admin.requests()) == before
        assert (await graph.list_applications(2, named, "connection-a"))[0]

        # A next page on another host would carry the connection's bearer token there: it is not followed.
        admin.set_faults([{"method": "GET", "path": r"^/v1\.0/applications$", "action": "respond", "status": 200,
                           "headers": {"Content-Type": "application/json"},
                           "body": {"value": [], "@odata.nextLink": "https://graph.example.net/v1.0/applications"}}])
        with pytest.raises(UpstreamError, match="not on its own endpoint"):
            await graph.list_applications(2)


@pytest.mark.parametrize(("path", "body"), [
    (r"/appManagementPolicies$", []),  # an array, not an object
    (r"/appManagementPolicies$", {"value": [{"isEnabled": True, "restrictions": ["not-an-object"]}]}),
    (r"/appManagementPolicies$", {"value": [{"restrictions": {"passwordCredentials": 5}}]}),
    (r"/defaultAppManagementPolicy$", {"isEnabled": True, "applicationRestrictions": "x"}),
])
async def test_a_graph_answer_of_an_unexpected_shape_is_graph_s_failure_never_a_crash(
        admin: Any, clients: AzureClients, secrets_used: Any, no_faults: None, path: str, body: Any) -> None:
    """(Review O.) A 200 from Graph whose body had another shape than documented (an array for an object, a string
    for a list) raised AttributeError or TypeError: a 500 with a stack trace at a create with rotation."""
    entra = register_rotatable_app(admin, secrets_used, name="odd-shapes", roles=("Application.ReadWrite.OwnedBy",
                                                                                 "Policy.Read.All"))
    credential, graph = graph_for(clients, entra)
    async with credential:
        admin.set_faults([{"method": "GET", "path": path, "action": "respond", "status": 200,
                           "headers": {"Content-Type": "application/json"}, "body": body}])
        with pytest.raises(UpstreamError, match="unexpected shape"):
            await graph.lifetime_policy(entra.object_id)
        admin.set_faults([{"method": "GET", "path": rf"^/v1\.0/applications/{entra.object_id}$", "action": "respond",
                           "status": 200, "headers": {"Content-Type": "application/json"},
                           "body": {"id": entra.object_id, "passwordCredentials": 5}}])
        with pytest.raises(UpstreamError, match="could not be read"):  # the application read back: unreadable
            await graph.remove_password(entra.object_id, "00000000-0000-0000-0000-000000000000")
