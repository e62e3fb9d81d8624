"""Client reuse: TLS connections opened at the stand-in over many API requests through the local host.

The worker serves the function app with the local host (the same ASGI host the tests use) and sends
``--requests`` API requests to it: one create with rotation enabled (tokens, Key Vault, Graph), then
validations (a token each) with a manual rotation every tenth (Graph, Key Vault, tokens). The stand-in counts
the TLS connections its clients open (``admin.connections_opened()``). Pooled clients keep that count bounded
by the pool sizes, not by the number of requests.

Then the read path: worker CPU (user + system of the process that holds the function and its HTTP client, not
Azurite's) per warm GET of one connection and per list page of ``--rows`` connections, each function called in
process as the Functions host calls it. Three apps are measured alike, each in processes of its own, interleaved
over ``--rounds``: the service, a bare function app (``common.BARE_APP_SOURCE``), and the service at
``--baseline``, by default the revision issue 17 measured (0.9 ms per GET and about 6 ms per 50-row page on the
machine it was filed from). Goals: at most 0.5 ms per GET and 2.5 ms per 50-row page; on another machine, the
same goals as ratios to that revision run side by side (0.5 / 0.9 and 2.5 / 6).

    .venv/bin/python -m bench.connections [--requests 100] [--reads 300] [--rows 50] [--rounds 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
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
    from shared.azure.clients import close_clients

    host = LocalHost(load_function_app("function_app", common.ROOT), common.ROOT / "host.json",
                     on_shutdown=[close_clients])  # as the host does: no session left open at exit
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
    if not set(statuses) <= {200, 201}:
        log.error("requests failed: statuses %s", statuses)
        return 1
    return read_path(args, admin, tenant)


# The read path of one function app, measured in a process of its own, so that ``shared`` is the package at that
# app's root: seeds ``rows`` connections through its create function when asked, then the worker CPU per call of
# a GET of one of them and of a list page, each after a warm-up, called in process as the Functions host calls it.
READ_CPU = r"""
import asyncio, json, os, resource, sys
spec = json.loads(os.environ["BENCH_READS"])
sys.path.insert(0, spec["root"])
import azure.functions as func
module = __import__(spec["module"])
functions = {f.get_function_name(): f.get_user_function() for f in module.app.get_functions()}
base, app, headers = spec["base"], spec["app"], spec["headers"]

def request(kind, connection_id=None, body=None):
    if spec["module"] != "function_app":
        return "bare", func.HttpRequest("GET", "http://localhost/bare/1", headers={}, route_params={"id": "1"},
                                        body=b"")
    if kind == "create":
        return "create_app_connection", func.HttpRequest(
            "POST", f"http://localhost{base}/{app}", headers={**headers, "content-type": "application/json"},
            route_params={"app": app}, body=json.dumps(body).encode())
    if kind == "get":
        return "get_app_connection", func.HttpRequest(
            "GET", f"http://localhost{base}/{app}/{connection_id}", headers=headers,
            route_params={"app": app, "connectionId": connection_id}, body=b"")
    return "list_app_connections", func.HttpRequest("GET", f"http://localhost{base}/{app}", headers=headers,
                                                    route_params={"app": app}, params={"limit": str(spec["rows"])},
                                                    body=b"")

async def call(kind, connection_id=None, body=None):
    name, req = request(kind, connection_id, body)
    return await functions[name](req)

async def cpu(kind, connection_id):
    for _ in range(10):
        response = await call(kind, connection_id)
        assert response.status_code == 200, response.get_body()[:300]
    failed = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(spec["calls"]):
        failed += (await call(kind, connection_id)).status_code != 200
    after = resource.getrusage(resource.RUSAGE_SELF)
    if failed:  # a failed call costs less than a read: its CPU is not the read path's figure
        raise SystemExit(f"{failed} of {spec['calls']} measured {kind} calls did not answer 200")
    user = after.ru_utime - before.ru_utime
    if spec.get("profile"):  # a profiled pass of its own: profiling inflates CPU, so it is not the figure
        import cProfile
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(spec["calls"]):
            await call(kind, connection_id)
        profile.disable()
        profile.dump_stats(os.path.join(spec["profile"], f"{kind}.pstats"))
    return (user + after.ru_stime - before.ru_stime) * 1000 / spec["calls"], user * 1000 / spec["calls"]

async def main():
    result = {}
    if spec["module"] == "function_app":
        for body in spec["seed"]:
            created = await call("create", body=body)
            assert created.status_code == 201, created.get_body()[:300]
        listed = json.loads((await call("list")).get_body())["appConnections"]
        assert len(listed) == spec["rows"], len(listed)
        connection_id = listed[0]["id"]
    else:
        connection_id = None
    result["get"] = await cpu("get", connection_id)
    result["page"] = await cpu("list", connection_id)
    if spec["module"] == "function_app":
        from shared.azure.clients import close_clients
        await close_clients()
    return result

print(json.dumps(asyncio.run(main())))
"""

def read_cpu(root: Path, module: str, prefix: str, args: argparse.Namespace, seed: list[dict[str, object]],
             profile: str | None = None) -> dict[str, tuple[float, float]]:
    """One process of ``module`` at ``root`` on the tables ``prefix``: ms of CPU (all, user) per GET and per page."""
    import os
    import subprocess

    spec = {"root": str(root), "module": module, "base": BASE, "app": APP, "rows": args.rows, "calls": args.reads,
            "headers": {k.lower(): v for k, v in common.api_headers().items()}, "seed": seed, "profile": profile}
    env = {**os.environ, "BENCH_READS": json.dumps(spec), "STATE_TABLE_PREFIX": prefix, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", READ_CPU], cwd=root, env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"the read-path process of {root} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    figures: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return {kind: (values[0], values[1]) for kind, values in figures.items()}


def read_path(args: argparse.Namespace, admin: Any, tenant: str) -> int:
    """Worker CPU per warm GET and per list page: the service, a bare function app and (unless ``--baseline ''``)
    the service at ``--baseline``, each in processes of its own, interleaved over ``--rounds``."""
    import secrets

    registered = admin.add_app(tenant, display_name="reads")
    secret = admin.add_secret(tenant, registered["appId"])
    short = {"tenantId": tenant, "clientId": registered["appId"], "clientSecret": secret["secretText"]}
    seed: list[dict[str, object]] = [{"name": f"read-{n}", "method": "client-secret", "credentials": short}
                                     for n in range(args.rows)]
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as scratch:
        apps: dict[str, tuple[Path, str, str]] = {
            "bare function": (common.bare_app_dir(Path(scratch)), common.BARE_MODULE, "Unused"),
            "service": (common.ROOT, "function_app", "Reads" + secrets.token_hex(4)),
        }
        if args.baseline:
            root = common.baseline_root(args.baseline, Path(scratch) / "baseline")
            if root is not None:
                apps[common.baseline_name(args.baseline)] = (root, "function_app", "Base" + secrets.token_hex(4))
        for name, (root, module, prefix) in apps.items():
            if module == "function_app":
                read_cpu(root, module, prefix, argparse.Namespace(rows=args.rows, reads=1), seed)
                log.info("%s: %d connections seeded", name, args.rows)
        runs: dict[str, list[dict[str, tuple[float, float]]]] = {name: [] for name in apps}
        for round_ in range(args.rounds):  # interleaved, so that drift in the machine's load hits all alike
            for name, (root, module, prefix) in apps.items():
                profile = args.profile if args.profile and name == "service" and round_ == 0 else None
                runs[name].append(read_cpu(root, module, prefix, args, [], profile))
            log.info("read path round %d of %d: %s", round_ + 1, args.rounds,
                     ", ".join(f"{name} {runs[name][-1]['get'][0]:.3f} / {runs[name][-1]['page'][0]:.3f} ms"
                               for name in apps))
    figures = {name: {kind: (common.median([r[kind][0] for r in found]), common.median([r[kind][1] for r in found]))
                      for kind in ("get", "page")} for name, found in runs.items()}
    bare = figures.pop("bare function")
    service = figures["service"]
    baseline = next((figures[name] for name in figures if name != "service"), None)
    rows: list[list[object]] = []
    verdicts: list[str] = []
    for kind, what, goal, issue in (("get", "GET one connection", 0.5, 0.9),
                                    ("page", f"list page of {args.rows}", 2.5 * args.rows / 50, 6.0 * args.rows / 50)):
        for name, found in [*figures.items(), ("bare function", bare)]:
            ms, user = found[kind]
            rows.append([what, name, ms, user, ms / max(bare[kind][0], 1e-6)]
                        + ([ms / baseline[kind][0]] if baseline is not None else []))
        ms = service[kind][0]
        verdict = f"{what}: {ms:.3f} ms (goal <= {goal:.2f} ms: {'met' if ms <= goal else 'missed'})"
        if baseline is not None and args.baseline == common.ISSUE_BASELINE:  # the issue's goals as ratios to it
            scaled, allowed = ms / baseline[kind][0], goal / issue
            verdict += (f"; {scaled:.2f} x the issue's revision (goal {goal:.2f} / {issue:.2f} ms = {allowed:.2f} x:"
                        f" {'met' if scaled <= allowed else 'missed'})")
        verdicts.append(verdict)
    print(common.table(f"Read path: worker CPU per warm request, {args.reads} requests each, median of {args.rounds} "
                       "interleaved processes per app", ["request", "app", "ms CPU", "of which user (ms)",
                                                         "ratio to bare"]
                       + ([f"ratio to {args.baseline}"] if baseline is not None else []), rows))
    print("\n".join(verdicts) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=common.count, default=100)
    parser.add_argument("--reads", type=common.count, default=300, help="warm requests per read measured")
    parser.add_argument(
        "--profile", help="a folder: a cProfile of the service's GET and page goes there (get.pstats, list.pstats)")
    parser.add_argument("--rows", type=common.count, default=50, help="connections in a list page")
    parser.add_argument("--rounds", type=common.count, default=3,
                        help="interleaved processes per app for the read path")
    parser.add_argument("--baseline", default=common.ISSUE_BASELINE,
                        help="a revision of this repository measured side by side ('' for none)")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
