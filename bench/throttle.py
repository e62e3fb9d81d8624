"""Throttle-aware throughput: a sweep against a stand-in that allows ``--limit`` Graph writes per ``--window-s``
seconds and answers 429 (with Retry-After) beyond.

Setup (no limit): ``--rotations`` connections with rotation enabled. Then a stand-in ``rate_limit`` rule on
Graph's addPassword/removePassword, a clock past their due time, and one sweep at ``--concurrency`` (the
adaptive limiter in ``shared.rotation.sweep`` backs off on 429 and recovers). Figures: Graph writes accepted
per second against the allowed rate, and the share of Graph writes throttled.
Goals: >= 80 % of the allowed rate, < 5 % throttled.

    .venv/bin/python bench/throttle.py --rotations 1000 --limit 300 --window-s 10 --concurrency 32

A rate the worker cannot reach by itself (see the ``unthrottled`` row) does not test the limiter: lower
``--limit`` until the unthrottled rate is above it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from datetime import UTC, datetime, timedelta

import common
from sweep import create_connections

log = logging.getLogger("bench.throttle")
WRITES = r"^/v1\.0/applications/[^/]+/(addPassword|removePassword)$"


async def one_sweep(admin, clients, at: datetime, concurrency: int, rule: dict | None,  # type: ignore[no-untyped-def]
                    latency_ms: int):
    from shared.rotation.protocol import Rotator
    from shared.rotation.sweep import sweep

    admin.clear_requests()
    admin.set_latency(latency_ms)
    admin.set_faults([rule] if rule else [])
    started = time.monotonic()
    report = await sweep(Rotator(clients, now=lambda: at), max_concurrency=concurrency, budget_seconds=1e9,
                         limit=100_000)
    wall = time.monotonic() - started
    admin.clear_faults()
    admin.set_latency(0)
    writes = [r for r in admin.requests(clear=True) if r["method"] == "POST" and r["path"].endswith(
        ("/addPassword", "/removePassword"))]
    throttled = sum(1 for r in writes if r["status"] == 429)
    return report, wall, len(writes) - throttled, throttled


async def run(args: argparse.Namespace) -> int:
    from shared.azure.clients import close_clients, get_clients

    admin = common.admin_client()
    started = time.monotonic()
    await create_connections(admin, args.rotations)
    log.info("setup: %d connections in %.1f s", args.rotations, time.monotonic() - started)
    clients = get_clients()
    allowed = args.limit / args.window_s
    rows = []
    clock = datetime.now(UTC)
    rule = {"method": "POST", "path": WRITES, "action": "rate_limit", "limit": args.limit,
            "window_ms": int(args.window_s * 1000), "status": 429,
            "body": {"error": {"code": "TooManyRequests", "message": "Please retry again later."}}}
    for name, applied in (("unthrottled", None), ("rate-limited", rule)):
        if name == "unthrottled" and args.skip_unthrottled:
            continue
        clock += timedelta(days=3)
        log.info("%s sweep of %d rotations at concurrency %d ...", name, args.rotations, args.concurrency)
        report, wall, accepted, throttled = await one_sweep(admin, clients, clock, args.concurrency, applied,
                                                            args.latency_ms)
        rate = accepted / wall
        share = throttled / max(1, accepted + throttled)
        rows.append([name, report.succeeded, report.failed, wall, accepted, throttled, rate,
                     rate / allowed if applied else "-", share, report.lowest_concurrency])
        log.info("%s: %.1f writes/s, %.1f %% throttled, %d failed", name, rate, 100 * share, report.failed)
    await close_clients()
    print(common.table(
        f"Sweep of {args.rotations} rotations, Graph writes limited to {args.limit} per {args.window_s:g} s "
        f"({allowed:.1f}/s), concurrency {args.concurrency}, {args.latency_ms} ms per call",
        ["sweep", "succeeded", "failed", "wall (s)", "writes accepted", "writes throttled", "writes/s",
         "of allowed", "throttled share", "lowest concurrency"], rows))
    limited = rows[-1]
    ok = isinstance(limited[7], float) and limited[7] >= 0.8 and limited[8] < 0.05
    share_of_allowed = f"{limited[7]:.0%}" if isinstance(limited[7], float) else "-"
    print(f"rate-limited: {limited[6]:.1f} writes/s = {share_of_allowed}"
          f" of the allowed {allowed:.1f}/s, {limited[8]:.1%} throttled (goal >= 80 % and < 5 %: "
          f"{'met' if ok else 'missed'})\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rotations", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=300, help="Graph writes allowed per window")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=int, default=0, help="added to every stand-in call during the sweeps")
    parser.add_argument("--skip-unthrottled", action="store_true", help="run only the rate-limited sweep")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
