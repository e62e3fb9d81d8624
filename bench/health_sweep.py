"""Health sweep cost at scale, against the in-memory adapters (``tests/fakes.py``): the store reads and writes
of one sweep over ``--connections`` connections of which ``--due`` are due, side by side with the baseline a
sweep without the due-time index would need (reading every connection to find the due ones).

It measures what the domain asks of its stores (reads and writes per checked connection, CPU per check), not
Table Storage's latency; ``sweep_scale.py`` measures the index's range query against Azurite.

    .venv/bin/python -m bench.health_sweep --connections 20000 --due 200
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from shared import wiring
from shared.health import HealthChecker
from tests.fakes import TENANT, build_fakes

APP = "azure-key-vault"


async def run(connections: int, due: int) -> None:
    fakes = build_fakes()
    built = wiring.services(fakes.adapters)
    world = fakes.world
    started = time.perf_counter()
    for index in range(connections):
        app = world.application()  # one application each: the fake Entra looks a secret up in its application
        password = world.add(app.client_id, f"s{index}", end=fakes.clock.now + timedelta(days=400))
        await built.connections.create(APP, {"name": f"c{index}", "method": "client-secret", "credentials": {
            "tenantId": TENANT, "clientId": app.client_id, "clientSecret": password.secret}})
        if index == due - 1:  # the first ``due`` fall due first; the rest an hour later
            fakes.clock.advance(timedelta(hours=1))
        if (index + 1) % 5000 == 0:
            print(f"created {index + 1} of {connections} connections ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr)
    fakes.clock.advance(timedelta(hours=23, minutes=1))  # the first ``due`` are due, the others not yet
    world.calls.clear()
    checker = HealthChecker(built.adapters, built.connections)
    cpu = time.process_time()
    wall = time.perf_counter()
    report = await checker.sweep(max_concurrency=8)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    reads = world.calls.count("store.get")
    writes = world.calls.count("store.update")
    baseline_reads = connections  # without the index: every connection read to find the due ones
    print(f"### One health sweep over {connections} connections, {report.due} due")
    print()
    print("| figure | this sweep | baseline (no index) | ratio |")
    print("|---|---|---|---|")
    print(f"| connections checked | {report.checked} | {report.checked} | 1.00 |")
    print(f"| store reads | {reads} | {baseline_reads} | {reads / baseline_reads:.4f} |")
    print(f"| store reads per checked connection | {reads / max(1, report.checked):.2f} | "
          f"{baseline_reads / max(1, report.checked):.2f} | {reads / baseline_reads:.4f} |")
    print(f"| store writes per checked connection | {writes / max(1, report.checked):.2f} | - | - |")
    print(f"| CPU per checked connection (ms) | {1000 * cpu / max(1, report.checked):.2f} | - | - |")
    print(f"| wall time of the sweep (s) | {wall:.2f} | - | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=common.amount, default=20000)
    parser.add_argument("--due", type=common.count, default=200)
    args = parser.parse_args()
    if not 0 < args.due <= args.connections:
        parser.error("--due must be between 1 and --connections")
    asyncio.run(run(args.connections, args.due))


if __name__ == "__main__":
    main()
