"""Cold start: what a fresh Functions worker process pays before and at its first request, side by side with a
bare function app (one async HTTP function that answers a small JSON document: ``common.BARE_APP_SOURCE``).
Both run as deployed: the service from its deployment package unpacked with its bytecode
(``localdev.package.build``), the bare app compiled alike, in processes that write no bytecode (the package is
read-only in Azure). The service at ``--baseline`` (by default the revision issue 17 measured, where a cold read
cost 2.31 x a bare function's first request) is measured alike, on tables of its own.

1. Import: the median over ``--runs`` fresh processes of ``import function_app;
   function_app.app.get_functions()`` against ``import azure.functions`` alone (the floor every Python
   function app pays), interleaved in the same run. Goal: ratio <= 1.3.
2. First request, by kind of route: a fresh process imports the app, indexes its functions and answers one
   request (the API access token checked; for a write, also a token from Entra, Key Vault and Table Storage
   against the stand-in and Azurite). The same for the bare app, interleaved. The figure is the process's time
   from just before ``import azure.functions`` and the app's import to the answer, median over ``--requests``
   processes each. The clock starts once ``asyncio``, ``json``, ``os``, ``sys`` and ``time`` are loaded, as a
   Functions worker has them before it loads an app: ``azure.functions``' own import of asyncio is not in it
   (the import figure above, timed from a bare interpreter, has it). Goal: ratio <= 1.3 for every kind of
   route. With ``--profile``, each route's profiled process is one more, left out of the medians.
3. The floor, before the routes: ``bench/apps/floor_function_app.py``, whose functions do only what any service
   must do on a cold instance for an authenticated read of one connection (fetch the tenant's signing keys over
   TLS, check the token's RS256 signature with ``cryptography``, GET one entity with SharedKey) and for a create
   (the same, then a token with the given credentials, the audit record, the service's Key Vault token and
   secret, one entity), timed as in 2. against the bare app, interleaved. Its ratios say how much of the goal
   is left for all else a read or a create does.

    .venv/bin/python -m bench.cold_start [--runs 9] [--requests 5] [--routes read,list,...] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import py_compile
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

log = logging.getLogger("bench.cold_start")

GOAL = 1.3  # issue 17: a cold instance's first answered request, as a ratio to the bare function's

IMPORT_FLOOR = "import azure.functions"
IMPORT_APP = "import function_app; function_app.app.get_functions()"
MEASURE = (
    "import time, json\n"
    "t = time.perf_counter()\n"
    "{code}\n"
    "print(json.dumps(time.perf_counter() - t))\n"
)

FIRST_REQUEST = """
import asyncio, json, os, sys, time
if os.environ.get("BENCH_PROFILE"):
    import cProfile
    profile = cProfile.Profile()
    profile.enable()
started = time.perf_counter()
call = json.loads(os.environ["BENCH_CALL"])
import azure.functions as func
module = __import__(call["module"])
functions = {f.get_function_name(): f.get_user_function() for f in module.app.get_functions()}
imported = time.perf_counter()
req = func.HttpRequest(call["method"], "http://localhost/" + call["path"], headers=call["headers"],
                       route_params=call["route_params"], params=call["params"],
                       body=json.dumps(call["body"]).encode() if call["body"] is not None else b"")

async def main():
    response = await functions[call["function"]](req)
    done = time.perf_counter()
    if call["module"] == "function_app":
        from shared.azure.clients import close_clients
        await close_clients()
    return response, done

response, done = asyncio.run(main())
if os.environ.get("BENCH_PROFILE"):
    profile.disable()
    profile.dump_stats(os.environ["BENCH_PROFILE"])
body = response.get_body()
created = None
if response.status_code == 201:
    created = json.loads(body)["appConnection"]["id"]
print(json.dumps({"import": imported - started, "request": done - imported, "total": done - started,
                  "status": response.status_code, "created": created, "body": body[:300].decode("utf-8", "replace"),
                  "modules": len(sys.modules)}))
"""

BASE = "api/v1/app-connections"
KV = "azure-key-vault"
FLOORS = ("floor", "floor-write")  # the floor app's two functions (bench/apps/floor_function_app.py)
ROUTES = ("read", "list", "write", "authorize", "callback", "openapi", "audit", "health")
# The status each kind of route answers when it did its work: the callback's state is unknown (no sign-in is
# pending), which it refuses with a 400 page after its lean read of the state; any other answer stops the run.
EXPECTED = {"bare": 200, "floor": 200, "floor-write": 201, "read": 200, "list": 200, "write": 201, "authorize": 200,
            "callback": 400, "openapi": 200, "audit": 200, "health": 200}


def call(route: str, connection_id: str | None, body: dict[str, object] | None = None) -> dict[str, object]:
    """The function and request of one kind of route (the bare app's when ``route`` is "bare")."""
    headers = {"authorization": "Bearer " + os.environ.get(common.API_TOKEN, ""), "content-type": "application/json"}
    table: dict[str, tuple[str, str, str, dict[str, str], dict[str, str]]] = {
        "bare": ("bare", "GET", "bare/1", {"id": "1"}, {}),
        "floor": (common.FLOOR_FUNCTION, "GET", f"floor/{KV}/{connection_id}", {"app": KV, "id": str(connection_id)},
                  {}),
        "floor-write": (common.FLOOR_CREATE_FUNCTION, "POST", f"floor/{KV}", {"app": KV}, {}),
        "read": ("get_app_connection", "GET", f"{BASE}/{KV}/{connection_id}", {"app": KV,
                                                                              "connectionId": str(connection_id)}, {}),
        "list": ("list_app_connections", "GET", f"{BASE}/{KV}", {"app": KV}, {"limit": "50"}),
        "write": ("create_app_connection", "POST", f"{BASE}/{KV}", {"app": KV}, {}),
        "authorize": ("authorize_app_connection_oauth", "GET", f"{BASE}/{KV}/oauth/authorize", {"app": KV},
                      {"name": f"cold-oauth-{secrets.token_hex(4)}"}),
        "callback": ("app_connection_oauth_callback", "GET", "organization/app-connections/azure/oauth/callback", {},
                     {"state": secrets.token_urlsafe(24), "code": "not-a-code"}),
        "openapi": ("get_openapi_document", "GET", "api/v1/openapi.json", {}, {}),
        "audit": ("list_audit_logs", "GET", "api/v1/audit-logs", {}, {"limit": "50"}),
        "health": ("get_app_connections_health", "GET", f"{BASE}/health", {}, {}),
    }
    function, method, path, route_params, params = table[route]
    if route == "authorize":
        headers["accept"] = "application/json"
    module = {"bare": common.BARE_MODULE, "floor": common.FLOOR_MODULE,
              "floor-write": common.FLOOR_MODULE}.get(route, "function_app")
    return {"module": module, "function": function,
            "expected": EXPECTED[route], "method": method, "path": path, "route_params": route_params, "params": params,
            "headers": {} if route in ("bare", "callback") else headers, "body": body}


def clean_env() -> dict[str, str]:
    """The environment without the service's settings (an import must not depend on them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "AZURE", "KEY_VAULT"))}


def time_import(code: str, package: Path) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE.format(code=code)], cwd=package, env=clean_env(),
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout))


def imports(runs: int, package: Path) -> None:
    floor: list[float] = []
    app: list[float] = []
    for run in range(runs):  # interleaved, so that drift in the machine's load hits both alike
        floor.append(time_import(IMPORT_FLOOR, package))
        app.append(time_import(IMPORT_APP, package))
        log.info("import run %d of %d: azure.functions %.3f s, function_app %.3f s", run + 1, runs, floor[-1], app[-1])
    floor_median, app_median = common.median(floor), common.median(app)
    ratio = app_median / floor_median
    print(common.table(f"Import cost, median of {runs} fresh processes", ["import", "median (s)", "min (s)",
                                                                          "max (s)"], [
        ["azure.functions alone", floor_median, min(floor), max(floor)],
        ["function_app + get_functions()", app_median, min(app), max(app)],
    ]))
    print(f"ratio function_app / azure.functions: {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})"
          "\n")


def first_request(request: dict[str, object], pythonpath: str, package: Path, profile: str | None = None,
                  environment: dict[str, str] | None = None) -> dict[str, object]:
    env = {**os.environ, "BENCH_CALL": json.dumps(request), "PYTHONPATH": pythonpath, **(environment or {}),
           **({"BENCH_PROFILE": profile} if profile else {})}
    out = subprocess.run([sys.executable, "-c", FIRST_REQUEST], cwd=package, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"the first-request process failed (exit {out.returncode})")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    status = int(str(result["status"]))
    if status != request["expected"]:  # a refused request (a 401, a 404) does not do the route's work
        raise SystemExit(f"{request['function']} answered {status}, not {request['expected']}: {result['body']}")
    return result


def new_connection_body(admin: object, tenant: str, name: str) -> dict[str, object]:
    app = admin.add_app(tenant, display_name=name)  # type: ignore[attr-defined]
    secret = admin.add_secret(tenant, app["appId"])  # type: ignore[attr-defined]
    return {"name": f"{name}-{os.getpid()}", "method": "client-secret",
            "credentials": {"tenantId": tenant, "clientId": app["appId"], "clientSecret": secret["secretText"]}}


def first_requests(requests: int, routes: list[str], apps: dict[str, tuple[Path, dict[str, str]]],
                   profile: str | None = None) -> None:
    """``apps``: the unpacked package of each app measured, with its environment; the first is the service."""
    admin = common.admin_client()
    tenant = admin.add_tenant()
    service = next(iter(apps))
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as bare_dir:
        bare_app = common.bare_app_dir(Path(bare_dir))
        shutil.copy(common.FLOOR_APP, bare_app)
        for module in (common.BARE_MODULE, common.FLOOR_MODULE):  # compiled alike
            py_compile.compile(str(bare_app / f"{module}.py"), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        paths = {name: os.pathsep.join([str(bare_app), str(package)]) for name, (package, _) in apps.items()}
        seeded = {name: str(first_request(call("write", None, new_connection_body(admin, tenant, "cold-seed")),
                                          paths[name], package, environment=env)["created"])
                  for name, (package, env) in apps.items()}
        floor_ratio = floor_requests(requests, seeded[service], paths[service], apps[service][0], admin, tenant)
        rows: list[list[object]] = []
        ratios: dict[str, float] = {}
        for route in routes:
            bare: list[float] = []
            runs: dict[str, list[dict[str, object]]] = {name: [] for name in apps}
            for run in range(requests):  # interleaved, so that drift in the machine's load hits all alike
                bare.append(float(str(first_request(call("bare", None), paths[service], apps[service][0])["total"])))
                for name, (package, env) in apps.items():
                    if profile and run == 0 and name == service:  # a process of its own: profiling inflates it
                        extra = new_connection_body(admin, tenant, f"cold-{route}-p") if route == "write" else None
                        first_request(call(route, seeded[name], extra), paths[name], package,
                                      str(Path(profile) / f"{route}.pstats"), env)
                    body = new_connection_body(admin, tenant, f"cold-{route}-{run}") if route == "write" else None
                    runs[name].append(first_request(call(route, seeded[name], body), paths[name], package, None,
                                                    env))
            floor = common.median(bare)
            for name, found in runs.items():
                total = common.median([float(str(r["total"])) for r in found])
                if name == service:
                    ratios[route] = total / floor
                statuses = sorted({int(str(r["status"])) for r in found})
                log.info("%s, %s (%s): %.3f s against %.3f s (bare), statuses %s", route, name,
                         str(found[0]["body"])[:80], total, floor, statuses)
                rows.append([route, name, str(call(route, None)["function"]), ",".join(map(str, statuses)),
                             common.median([float(str(r["import"])) for r in found]),
                             common.median([float(str(r["request"])) for r in found]), total, floor, total / floor,
                             int(str(found[0]["modules"]))])
    print(common.table(f"Cold process, first request by kind of route, median of {requests} processes each, side "
                       "by side with a bare function app", ["route", "app", "function", "status",
                                                           "import + index (s)", "request (s)", "total (s)",
                                                           "bare total (s)", "ratio", "modules"], rows))
    worst = max(ratios, key=lambda route: ratios[route])
    print(f"worst ratio to the bare function's first request: {ratios[worst]:.2f} ({worst}; goal <= {GOAL}: "
          f"{'met' if ratios[worst] <= GOAL else 'missed'}); the floor's worst: {floor_ratio:.2f}\n")


def floor_requests(requests: int, connection_id: str, pythonpath: str, package: Path, admin: object,
                   tenant: str) -> float:
    """The floor (``bench/apps/floor_function_app.py``: the least a read or a create does) against the bare
    function, interleaved; prints its table and returns the worst of its ratios."""
    from azure.data.tables import TableServiceClient

    with TableServiceClient.from_connection_string(os.environ["AzureWebJobsStorage"]) as tables:  # noqa: SIM112
        for name in common.FLOOR_TABLES:
            tables.create_table_if_not_exists(os.environ["STATE_TABLE_PREFIX"] + name)
    bare: list[float] = []
    floors: dict[str, list[dict[str, object]]] = {floor: [] for floor in FLOORS}
    for run in range(requests):  # interleaved, so that drift in the machine's load hits all alike
        bare.append(float(str(first_request(call("bare", None), pythonpath, package)["total"])))
        floors["floor"].append(first_request(call("floor", connection_id), pythonpath, package))
        body = new_connection_body(admin, tenant, f"cold-floor-{run}")
        floors["floor-write"].append(first_request(call("floor-write", None, body), pythonpath, package))
    bare_total = common.median(bare)
    rows: list[list[object]] = []
    ratios: list[float] = []
    for what, found in zip(("read: keys fetched, RS256 checked, one entity read",
                            "create: and a token with the credentials, audit, Key Vault, one entity"),
                           floors.values(), strict=True):
        total = common.median([float(str(r["total"])) for r in found])
        ratios.append(total / bare_total)
        rows.append([what, common.median([float(str(r["import"])) for r in found]),
                     common.median([float(str(r["request"])) for r in found]), total, bare_total, ratios[-1],
                     int(str(found[0]["modules"]))])
    print(common.table(f"The floor of a cold first request, median of {requests} processes each, side by side with "
                       "a bare function app", ["floor", "import + index (s)", "request (s)", "total (s)",
                                               "bare total (s)", "ratio", "modules"], rows))
    for kind, ratio in zip(("read", "create"), ratios, strict=True):
        print(f"the floor's ratio for a {kind}: {ratio:.2f}; a goal of {GOAL} x leaves "
              f"{(GOAL - ratio) * bare_total * 1000:.1f} ms for all else it does")
    print()
    return max(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=common.count, default=9,
                        help="fresh processes per import (at least 7 for the goal)")
    parser.add_argument("--requests", type=common.count, default=5, help="cold processes per kind of route")
    parser.add_argument("--profile",
                        help="a folder: a cProfile of one more cold process per route, not in the figures, goes there")
    parser.add_argument("--routes", default=",".join(ROUTES), help="kinds of route, comma-separated")
    parser.add_argument("--baseline", default=common.ISSUE_BASELINE,
                        help="a revision of this repository measured side by side ('' for none)")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    unknown = sorted({r for r in args.routes.split(",") if r} - set(ROUTES))
    if unknown:
        parser.error(f"unknown route {', '.join(unknown)}: the routes are {', '.join(ROUTES)}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    started = time.monotonic()
    from localdev import package

    with tempfile.TemporaryDirectory(prefix="bench-package-") as unpacked:
        deployed = package.build(Path(unpacked) / "service")  # what a cold instance runs: the package, compiled
        apps: dict[str, tuple[Path, dict[str, str]]] = {"service": (deployed, {})}
        if args.baseline:
            source = common.baseline_root(args.baseline, Path(unpacked) / "baseline-source")
            if source is not None:
                apps[common.baseline_name(args.baseline)] = (
                    package.build(Path(unpacked) / "baseline", source),
                    {"STATE_TABLE_PREFIX": "Cold" + secrets.token_hex(4)})
        imports(args.runs, deployed)
        first_requests(args.requests, [r for r in args.routes.split(",") if r], apps, args.profile)
    log.info("done in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
