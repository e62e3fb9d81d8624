"""Client reuse: TLS connections opened at the stand-in over many API requests through the local host.

The worker serves the function app with the local host (the same ASGI host the tests use) and sends
``--requests`` API requests to it: one create with rotation enabled (tokens, Key Vault, Graph), then
validations (a token each) with a manual rotation every tenth (Graph, Key Vault, tokens). The stand-in counts
the TLS connections its clients open (``admin.connections_opened()``). Pooled clients keep that count bounded
by the pool sizes, not by the number of requests.

    .venv/bin/python -m bench.connections [--requests 100]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

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
    return 0 if set(statuses) <= {200, 201} else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
