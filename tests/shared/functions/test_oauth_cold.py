"""The OAuth callback on a cold instance: an answer whose state is not pending is refused after one read of the
state table over the lean reads, in a fresh interpreter that imports neither the flow and its models nor an Azure
SDK; the page is the one the flow gives."""

from __future__ import annotations

import json

from tests.fresh import in_a_fresh_interpreter

# A Table endpoint on a loopback port that holds no state: every query answers an empty page. The callback is called
# as the host calls it; the script prints the answer, the requests the endpoint saw and what the process imported.
UNKNOWN_STATE = """
import asyncio, json, os, sys
from tests.loopback_table import connection_string, port_of, serve

seen = []

def answer(method, target, headers):
    seen.append([method, target])
    return 200, {"value": []}

async def main():
    server = await serve(answer)
    os.environ["AzureWebJobsStorage"] = connection_string(port_of(server))
    import azure.functions as func
    import function_app
    from shared.azure.clients import close_clients

    functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
    req = func.HttpRequest("GET", "http://localhost/organization/app-connections/azure/oauth/callback",
                           headers={}, params=json.loads(sys.argv[1]), body=b"")
    response = await functions["app_connection_oauth_callback"](req)
    await close_clients()
    server.close()
    print(json.dumps({"status": response.status_code, "body": response.get_body().decode(),
                      "requests": seen, "modules": sorted(sys.modules)}))

asyncio.run(main())
"""
# What only completing a sign-in needs: the flow, its models and the SDKs it writes with.
FLOW_ONLY = ["pydantic", "shared.oauth", "shared.oauth_tokens", "shared.models", "shared.connections",
             "shared.credentials", "shared.rotation.protocol", "shared.store.vault", "shared.azure.entra",
             "aiohttp", "azure.core", "azure.data.tables", "azure.identity", "msal", "cryptography"]


def _callback(params: dict[str, str]) -> dict[str, object]:
    result: dict[str, object] = in_a_fresh_interpreter(UNKNOWN_STATE, json.dumps(params))
    return result


def test_an_unknown_state_is_refused_with_one_lean_read_and_nothing_of_the_flow_imported() -> None:
    state = "2026030405." + "u" * 43
    result = _callback({"code": "c", "state": state})
    assert result["status"] == 400
    assert "This sign-in answer is unknown or was already used." in str(result["body"])
    requests = result["requests"]
    assert isinstance(requests, list) and len(requests) == 1 and requests[0][0] == "GET"
    assert "OAuthStates()" in requests[0][1] and requests[0][1].endswith("&$select=RowKey%2CTakenBy")
    loaded = set(result["modules"])  # type: ignore[arg-type]
    assert {"shared.oauth_callback", "shared.store.oauth_state_reads", "shared.azure.rest"} <= loaded
    assert [name for name in FLOW_ONLY if name in loaded] == []
    assert "shared.sessions" not in loaded  # its failure page looks for a console session without it


def test_an_answer_without_a_state_reads_nothing() -> None:
    result = _callback({"error": "access_denied", "error_description": "<script>x</script>"})
    assert result["status"] == 400
    assert "The sign-in did not complete." in str(result["body"]) and "script" not in str(result["body"])
    assert result["requests"] == []
