"""Sweep throughput: N due rotations against the stand-in with latency added to every call, at each concurrency.

Setup (no latency): N client-secret connections with rotation enabled, created through the domain
(``ConnectionService.create``, which rotates each once on enabling). Then, for each concurrency, the stand-in
adds ``--latency-ms`` to every call, a fake clock stands past every connection's due time, and one
``sweep(Rotator(...), max_concurrency=c)`` rotates them all.

Figures: wall time; calls per rotation (counted in the stand-in's request log; Table Storage calls go to
Azurite and carry no added latency); ideal = rotations x calls per rotation x latency / concurrency;
efficiency = ideal / wall; the CPU spent during each sweep by the worker, the stand-in's process (the
benchmark's parent: it serves the stand-in and does nothing else) and Azurite, which all share the machine's
cores, and what every other process of the machine used meanwhile (other work slows a sweep down); the worker's
peak RSS. Goals: efficiency >= 0.7 at 32, RSS < 250 MiB.

    .venv/bin/python -m bench.sweep --rotations 500 --latency-ms 50 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import re
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench import common

log = logging.getLogger("bench.sweep")
APP = "azure-key-vault"
INTERVAL_DAYS = 1


async def create_connections(admin, count: int, concurrency: int = 16) -> list[str]:  # type: ignore[no-untyped-def]
    from shared import wiring

    service = wiring.services().connections
    tenant = admin.add_tenant()
    gate = asyncio.Semaphore(concurrency)
    step = common.progress(max(1, count // 10), count, "connections created")
    ids: list[str] = []

    async def one(n: int) -> None:
        credentials = await asyncio.to_thread(common.register_rotatable_app, admin, tenant, f"bench-{n}")
        async with gate:
            record = await service.create(APP, {
                "name": f"bench-{n}-{uuid.uuid4().hex[:6]}", "method": "client-secret", "credentials": credentials,
                "isAutoRotationEnabled": True,
                "rotation": {"rotationInterval": INTERVAL_DAYS, "rotateAtUtc": {"hours": 3, "minutes": 0}},
            })
        ids.append(record.id)
        step()

    await asyncio.gather(*(one(n) for n in range(count)))
    return ids


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def breakdown(logged: list[dict[str, object]]) -> str:
    """Stand-in calls by method and path shape (ids replaced), most frequent first."""
    kinds = collections.Counter(
        f"{entry['method']} {re.sub(r'[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}', '*', str(entry['path']))}"
        for entry in logged)
    return ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())


async def run(args: argparse.Namespace) -> int:
    from shared import wiring
    from shared.azure.clients import close_clients, get_clients
    from shared.rotation.sweep import sweep

    admin = common.admin_client()
    started = time.monotonic()
    await create_connections(admin, args.rotations)
    log.info("setup: %d connections in %.1f s", args.rotations, time.monotonic() - started)
    clients = get_clients()
    try:
        rows = []
        clock = datetime.now(UTC)
        for concurrency in args.concurrency:
            clock += timedelta(days=INTERVAL_DAYS + 2)  # past every connection's next due time
            admin.clear_requests()
            admin.set_latency(args.latency_ms)
            log.info("sweep of %d due rotations at concurrency %d, %d ms per call ...", args.rotations, concurrency,
                     args.latency_ms)
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            handshakes0 = admin.stats()["handshakes"]
            cpu0 = cpu_seconds()
            standin0, azurite0 = common.environment_cpu_seconds()
            machine0 = common.machine_cpu_seconds()
            t0 = time.monotonic()
            rotator = wiring.services(wiring.adapters(clients), clock=lambda at=clock: at).rotator
            report = await sweep(rotator, max_concurrency=concurrency,
                                 budget_seconds=1e9, limit=max(1000, args.rotations))
            wall = time.monotonic() - t0
            cpu = cpu_seconds() - cpu0
            standin1, azurite1 = common.environment_cpu_seconds()
            others = common.machine_cpu_seconds() - machine0 - cpu - (standin1 - standin0) - (azurite1 - azurite0)
            handshakes = admin.stats()["handshakes"] - handshakes0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(f"{args.profile}.c{concurrency}")
            admin.set_latency(0)
            logged = admin.requests(clear=True)
            calls = len(logged)
            log.info("calls by kind: %s; TLS handshakes at the stand-in: %d", breakdown(logged), handshakes)
            if report.succeeded != args.rotations:
                log.error("only %d of %d rotations succeeded: %s", report.succeeded, args.rotations, report)
                return 1
            per_rotation = calls / report.succeeded
            ideal = report.succeeded * per_rotation * args.latency_ms / 1000 / concurrency
            rows.append([concurrency, report.succeeded, wall, per_rotation, ideal, ideal / wall, cpu,
                         1000 * cpu / report.succeeded, standin1 - standin0, azurite1 - azurite0, max(0.0, others),
                         common.peak_rss_mib()])
            cores = os.cpu_count() or 1
            log.info("concurrency %d: %.1f s wall, efficiency %.2f; CPU: worker %.1f s, stand-in %.1f s, "
                     "Azurite %.1f s, other processes %.1f s (of %.0f s on %d cores)", concurrency, wall,
                     ideal / wall, cpu, standin1 - standin0, azurite1 - azurite0, others, wall * cores, cores)
    finally:
        await close_clients()
    print(common.table(
        f"Sweep of {args.rotations} due rotations, {args.latency_ms} ms added to every stand-in call",
        ["concurrency", "rotations", "wall (s)", "calls/rotation", "ideal (s)", "efficiency", "worker CPU (s)",
         "worker CPU/rotation (ms)", "stand-in CPU (s)", "Azurite CPU (s)", "other processes' CPU (s)",
         "peak RSS (MiB)"],
        rows))
    top = rows[-1]
    print(f"efficiency at concurrency {top[0]}: {top[5]:.2f} (goal >= 0.7: {'met' if top[5] >= 0.7 else 'missed'}); "
          f"peak RSS {top[-1]:.0f} MiB (goal < 250: {'met' if top[-1] < 250 else 'missed'})\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rotations", type=common.count, default=500)
    parser.add_argument("--latency-ms", type=common.amount, default=50)
    parser.add_argument("--concurrency", type=common.counts, default=[1, 8, 32])
    parser.add_argument("--profile", metavar="PATH", help="write a cProfile of each sweep to PATH.c<concurrency>")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
