"""Client reuse: TLS connections opened at the stand-in over many API requests through the local host.

The worker serves the function app with the local host (the same ASGI host the tests use) and sends
``--requests`` API requests to it: one create with rotation enabled (tokens, Key Vault, Graph), then
validations (a token each) with a manual rotation every tenth (Graph, Key Vault, tokens). The stand-in counts
the TLS connections its clients open (``admin.connections_opened()``). Pooled clients keep that count bounded
by the pool sizes, not by the number of requests.

Then the read path: host CPU (the worker process's user + system CPU, which holds the function and the Azure SDK
with its HTTP client, not Azurite's) per warm GET of one connection and per list page of ``--rows`` connections,
each function called in process as the Functions host calls it, side by side with a bare function app
(``common.BARE_APP_SOURCE``) called the same way. Goals: at most 0.5 ms per GET and 2.5 ms per 50-row page.

    .venv/bin/python -m bench.connections [--requests 100] [--reads 300] [--rows 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import common

log = logging.getLogger("bench.connections")
BASE = "/api/v1/app-connections"
APP = "azure-key-vault"
BOUND = 16  # connections the service may open whatever the number of requests (pools per host and client)


def run(args: argparse.Namespace) -> int:
    import httpx

    from localdev.host import LocalHost, load_function_app, run_in_thread

    admin = common.admin_client()
    tenant = admin.add_tenant()
    credentials = common.register_rotatable_app(admin, tenant, "pooling")
    host = LocalHost(load_function_app("function_app", common.ROOT), common.ROOT / "host.json")
    statuses: dict[int, int] = {}
    with run_in_thread(host.asgi) as base_url, httpx.Client(base_url=base_url, timeout=120,
                                                            headers=common.api_headers()) as api:
        before = admin.connections_opened()
        started = time.monotonic()
        created = api.post(f"{BASE}/{APP}", json={
            "name": "pooling", "method": "client-secret", "credentials": credentials, "isAutoRotationEnabled": True,
            "rotation": {"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 0}},
        })
        if created.status_code != 201:
            log.error("create failed: %s %s", created.status_code, created.text[:500])
            return 1
        cid = created.json()["appConnection"]["id"]
        statuses[201] = 1
        opened = [admin.connections_opened() - before]
        for n in range(1, args.requests):
            path = f"{BASE}/{APP}/{cid}/" + ("rotate" if n % 10 == 0 else "validate")
            response = api.post(path)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if (n + 1) % 25 == 0:
                opened.append(admin.connections_opened() - before)
                log.info("%d requests: %d TLS connections opened at the stand-in", n + 1, opened[-1])
        wall = time.monotonic() - started
        total = admin.connections_opened() - before
    rows = [[25 * i if i else 1, count] for i, count in enumerate(opened)]
    print(common.table(f"TLS connections opened at the stand-in over {args.requests} API requests through the "
                       "local host", ["after requests", "connections opened"], rows))
    print(f"{args.requests} requests in {wall:.1f} s, statuses {statuses}; {total} TLS connections opened "
          f"(goal: bounded, <= {BOUND}: {'met' if total <= BOUND else 'missed'})\n")
    if set(statuses) > {200, 201}:
        return 1
    return asyncio.run(read_path(args, admin, tenant, cid))


async def cpu_per_call(function: Callable[[Any], Awaitable[Any]], request: Callable[[], Any], calls: int,
                       status: int = 200) -> tuple[float, float]:
    """Milliseconds of this process's CPU per call of ``function`` after a warm-up: in all, and in user mode
    (without the kernel's share, mostly the loopback sockets to Azurite)."""
    for _ in range(min(10, calls)):
        response = await function(request())
        assert response.status_code == status, response.get_body()[:300]
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        await function(request())
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = after.ru_utime - before.ru_utime
    return (user + after.ru_stime - before.ru_stime) * 1000 / calls, user * 1000 / calls


async def read_path(args: argparse.Namespace, admin: Any, tenant: str, connection_id: str) -> int:
    import importlib

    import azure.functions as func

    from localdev.host import load_function_app_file
    from shared.azure.clients import close_clients

    with tempfile.TemporaryDirectory(prefix="bench-bare-") as bare_dir:
        sys.path.insert(0, str(common.bare_app_dir(Path(bare_dir))))
        bare_app = importlib.import_module(common.BARE_MODULE)
    app = load_function_app_file(common.ROOT / "function_app.py")  # a second index of the app the host served
    functions = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}
    bare = {f.get_function_name(): f.get_user_function() for f in bare_app.app.get_functions()}[common.BARE_FUNCTION]
    headers = {k.lower(): v for k, v in common.api_headers().items()}
    registered = admin.add_app(tenant, display_name="reads")
    secret = admin.add_secret(tenant, registered["appId"])
    short = {"tenantId": tenant, "clientId": registered["appId"], "clientSecret": secret["secretText"]}
    for n in range(args.rows - 1):  # with the connection made above: --rows in the app
        created = await functions["create_app_connection"](func.HttpRequest(
            "POST", f"http://localhost{BASE}/{APP}", headers={**headers, "content-type": "application/json"},
            route_params={"app": APP}, body=json.dumps({"name": f"read-{n}", "method": "client-secret",
                                                        "credentials": short}).encode()))
        assert created.status_code == 201, created.get_body()[:300]
    log.info("%d connections in %s", args.rows, APP)

    def get() -> func.HttpRequest:
        return func.HttpRequest("GET", f"http://localhost{BASE}/{APP}/{connection_id}", headers=headers,
                                route_params={"app": APP, "connectionId": connection_id}, body=b"")

    def page() -> func.HttpRequest:
        return func.HttpRequest("GET", f"http://localhost{BASE}/{APP}", headers=headers, route_params={"app": APP},
                                params={"limit": str(args.rows)}, body=b"")

    def bare_request() -> func.HttpRequest:
        return func.HttpRequest("GET", "http://localhost/bare/1", headers={}, route_params={"id": "1"}, body=b"")

    listed = json.loads((await functions["list_app_connections"](page())).get_body())
    assert len(listed["appConnections"]) == args.rows, len(listed["appConnections"])
    rows = []
    for what, name, request, goal in (("GET one connection", "get_app_connection", get, 0.5),
                                      (f"list page of {args.rows}", "list_app_connections", page,
                                       2.5 * args.rows / 50)):
        if args.profile:
            import cProfile

            profile = cProfile.Profile()
            profile.enable()
            await cpu_per_call(functions[name], request, args.reads)
            profile.disable()
            profile.dump_stats(str(Path(args.profile) / f"{name}.pstats"))
        service_ms, service_user_ms = await cpu_per_call(functions[name], request, args.reads)
        bare_ms, _ = await cpu_per_call(bare, bare_request, args.reads)
        rows.append([what, service_ms, service_user_ms, bare_ms, service_ms / max(bare_ms, 1e-6), f"<= {goal:.2f}",
                     "met" if service_ms <= goal else "missed"])
        log.info("%s: %.3f ms of CPU per request (bare %.3f ms)", what, service_ms, bare_ms)
    await close_clients()
    print(common.table(f"Read path: worker CPU per warm request, {args.reads} requests each, side by side with a "
                       "bare function", ["request", "service (ms CPU)", "of which user (ms)", "bare (ms CPU)", "ratio",
                        "goal (ms)", ""],
                       rows))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--reads", type=int, default=300, help="warm requests per read measured")
    parser.add_argument("--profile", help="a folder: a cProfile of each read measured goes there")
    parser.add_argument("--rows", type=int, default=50, help="connections in a list page")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
