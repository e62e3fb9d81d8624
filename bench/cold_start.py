"""Cold start: what a fresh Functions worker process pays before and at its first request.

1. Import: the median over ``--runs`` fresh processes of ``import function_app;
   function_app.app.get_functions()`` against ``import azure.functions`` alone (the floor every Python
   function app pays), interleaved in the same run. Goal: ratio <= 1.3.
2. First request: a fresh process imports the app, builds the service and creates a client-secret connection
   against the stand-in (the API access token checked, a token, Key Vault, Table Storage); the median over
   ``--requests`` processes.

    .venv/bin/python -m bench.cold_start [--runs 9] [--requests 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

from bench import common

log = logging.getLogger("bench.cold_start")

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
started = time.perf_counter()
import azure.functions as func
import function_app
functions = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
imported = time.perf_counter()
body = json.loads(os.environ["BENCH_BODY"])
req = func.HttpRequest("POST", "http://localhost/api/v1/app-connections/azure-key-vault",
                       headers={"content-type": "application/json",
                                "authorization": "Bearer " + os.environ["BENCH_API_TOKEN"]},
                       route_params={"app": "azure-key-vault"}, body=json.dumps(body).encode())

async def main():
    from shared.azure.clients import close_clients
    response = await functions["create_app_connection"](req)
    done = time.perf_counter()
    await close_clients()
    return response, done

response, done = asyncio.run(main())
assert response.status_code == 201, response.get_body()[:300]
print(json.dumps({"import": imported - started, "request": done - imported, "total": done - started}))
"""


def clean_env() -> dict[str, str]:
    """The environment without the service's settings (an import must not depend on them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "AZURE", "KEY_VAULT"))}


def time_import(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", MEASURE.format(code=code)], cwd=common.ROOT, env=clean_env(),
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout))


def imports(runs: int) -> None:
    floor: list[float] = []
    app: list[float] = []
    for run in range(runs):  # interleaved, so that drift in the machine's load hits both alike
        floor.append(time_import(IMPORT_FLOOR))
        app.append(time_import(IMPORT_APP))
        log.info("import run %d of %d: azure.functions %.3f s, function_app %.3f s", run + 1, runs, floor[-1], app[-1])
    floor_median, app_median = common.median(floor), common.median(app)
    ratio = app_median / floor_median
    print(common.table(f"Import cost, median of {runs} fresh processes", ["import", "median (s)", "min (s)",
                                                                          "max (s)"], [
        ["azure.functions alone", floor_median, min(floor), max(floor)],
        ["function_app + get_functions()", app_median, min(app), max(app)],
    ]))
    print(f"ratio function_app / azure.functions: {ratio:.2f} (goal <= 1.3: {'met' if ratio <= 1.3 else 'missed'})\n")


def first_requests(requests: int) -> None:
    admin = common.admin_client()
    tenant = admin.add_tenant()
    rows: list[dict[str, float]] = []
    for run in range(requests):
        app = admin.add_app(tenant, display_name=f"cold-{run}")
        secret = admin.add_secret(tenant, app["appId"])
        body = {"name": f"cold-{run}-{os.getpid()}", "method": "client-secret",
                "credentials": {"tenantId": tenant, "clientId": app["appId"], "clientSecret": secret["secretText"]}}
        env = {**os.environ, "BENCH_BODY": json.dumps(body)}
        out = subprocess.run([sys.executable, "-c", FIRST_REQUEST], cwd=common.ROOT, env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"the first-request process failed (exit {out.returncode})")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        log.info("first request %d of %d: %.3f s after %.3f s of import", run + 1, requests, rows[-1]["request"],
                 rows[-1]["import"])
    print(common.table(f"Cold process, first request (create a client-secret connection), median of {requests}",
                       ["phase", "median (s)", "min (s)", "max (s)"], [
        [phase, common.median([r[phase] for r in rows]), min(r[phase] for r in rows), max(r[phase] for r in rows)]
        for phase in ("import", "request", "total")
    ]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per import (at least 7 for the goal)")
    parser.add_argument("--requests", type=int, default=5, help="cold processes that serve a first request")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    started = time.monotonic()
    imports(args.runs)
    first_requests(args.requests)
    log.info("done in %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
