"""Throttle-aware throughput: a sweep against a stand-in that allows ``--limit`` Graph writes per ``--window-s``
seconds and answers 429 (with Retry-After) beyond.

Setup (no limit): ``--rotations`` connections with rotation enabled. Then a stand-in ``rate_limit`` rule on
Graph's addPassword/removePassword, a clock past their due time, and one sweep at ``--concurrency`` (the sweep
paces Graph requests once they are throttled and lowers its concurrency: ``shared.rotation.pacing.Pacer`` and
``AimdLimiter``). Every Graph call is counted at the worker's Graph HTTP client (a response hook), with its
answer. Figures: Graph writes accepted per second against the allowed rate; the share of all Graph calls
throttled (the issue's measure) and of Graph writes.
Goals: >= 80 % of the allowed rate, < 5 % of Graph calls throttled. A rate above the allowed one misses the goal:
the stand-in accepts no more than ``--limit`` writes in any window, so the run was too short to test the pacing.
The run fails (exit 1) when any rotation of either sweep did not succeed, as ``bench.sweep`` does.

    .venv/bin/python -m bench.throttle --rotations 1000 --limit 300 --window-s 10 --concurrency 32

A rate the worker cannot reach by itself (see the ``unthrottled`` row) does not test the pacing: lower
``--limit`` until the unthrottled rate is well above it. The unthrottled sweep runs second, over the same
connections and the state the first sweep left behind (a second sweep was the slower one even when neither was
throttled), so its rate is one the worker reached with the heavier state.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from datetime import UTC, datetime, timedelta

from bench import common
from bench.sweep import create_connections

log = logging.getLogger("bench.throttle")
WRITES = r"^/v1\.0/applications/[^/]+/(addPassword|removePassword)$"


class GraphCalls:
    """Every Graph answer the worker gets, by kind: a response hook on the service's Graph HTTP client."""

    def __init__(self) -> None:
        self.writes = self.writes_throttled = self.calls = self.throttled = 0

    async def __call__(self, response) -> None:  # type: ignore[no-untyped-def]
        throttled = response.status_code == 429
        self.calls += 1
        self.throttled += throttled
        if response.request.method == "POST" and re.search(WRITES, response.request.url.path):
            self.writes += 1
            self.writes_throttled += throttled


async def one_sweep(admin, clients, at: datetime, concurrency: int, rule: dict | None,  # type: ignore[no-untyped-def]
                    latency_ms: int):
    from shared import wiring
    from shared.rotation.sweep import sweep

    admin.clear_requests()
    admin.set_latency(latency_ms)
    admin.set_faults([rule] if rule else [])
    calls = GraphCalls()
    hooks = clients.graph_http().event_hooks["response"]
    hooks.append(calls)
    started = time.monotonic()
    try:
        rotator = wiring.services(wiring.adapters(clients), clock=lambda: at).rotator
        report = await sweep(rotator, max_concurrency=concurrency, budget_seconds=1e9,
                             limit=100_000)
    finally:
        wall = time.monotonic() - started
        hooks.remove(calls)
        admin.clear_faults()
        admin.set_latency(0)
        admin.clear_requests()
    return report, wall, calls


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
    try:
        for name, applied in (("rate-limited", rule), ("unthrottled", None)):
            if name == "unthrottled" and args.skip_unthrottled:
                continue
            clock += timedelta(days=3)
            log.info("%s sweep of %d rotations at concurrency %d ...", name, args.rotations, args.concurrency)
            report, wall, calls = await one_sweep(admin, clients, clock, args.concurrency, applied, args.latency_ms)
            accepted = calls.writes - calls.writes_throttled
            rate = accepted / wall
            share = calls.throttled / max(1, calls.calls)
            write_share = calls.writes_throttled / max(1, calls.writes)
            pace = report.paced.get("write")
            rows.append([name, report.succeeded, report.failed, wall, accepted, calls.writes_throttled, rate,
                         rate / allowed if applied else "-", calls.calls, calls.throttled, share, write_share,
                         report.lowest_concurrency, "-" if pace is None else pace])
            log.info("%s: %.1f writes/s, %.1f %% of Graph calls throttled, %d failed", name, rate, 100 * share,
                     report.failed)
    finally:
        await close_clients()
    print(common.table(
        f"Sweep of {args.rotations} rotations, Graph writes limited to {args.limit} per {args.window_s:g} s "
        f"({allowed:.1f}/s), concurrency {args.concurrency}, {args.latency_ms} ms per call",
        ["sweep", "succeeded", "failed", "wall (s)", "writes accepted", "writes throttled", "writes/s",
         "of allowed", "Graph calls", "Graph calls throttled", "throttled share (calls)", "throttled share (writes)",
         "lowest concurrency", "final write pace (/s)"], rows))
    limited = rows[0]
    share_of_allowed = f"{limited[7]:.0%}" if isinstance(limited[7], float) else "-"
    # The stand-in accepts at most --limit writes in any --window-s: above the allowed rate, the run was too short
    # for the limit to hold it back, and the pacing was not tested.
    ok = isinstance(limited[7], float) and 0.8 <= limited[7] <= 1.0 and limited[10] < 0.05
    print(f"rate-limited: {limited[6]:.1f} writes/s = {share_of_allowed} of the allowed {allowed:.1f}/s; "
          f"{limited[10]:.1%} of Graph calls and {limited[11]:.1%} of Graph writes throttled "
          f"(goal >= 80 % and <= 100 % of the allowed rate, < 5 % of calls: {'met' if ok else 'missed'})\n")
    failed = [f"{row[0]}: {row[2]} of {args.rotations} failed" for row in rows if row[2] or row[1] != args.rotations]
    if failed:  # as bench.sweep: the writes of a rotation that failed are not a throughput
        log.error("rotations did not all succeed (%s): the figures above are not a measure", "; ".join(failed))
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rotations", type=common.count, default=1000)
    parser.add_argument("--limit", type=common.count, default=300, help="Graph writes allowed per window")
    parser.add_argument("--window-s", type=common.seconds, default=10.0)
    parser.add_argument("--concurrency", type=common.count, default=32)
    parser.add_argument("--latency-ms", type=common.amount, default=0,
                        help="added to every stand-in call during the sweeps")
    parser.add_argument("--skip-unthrottled", action="store_true", help="run only the rate-limited sweep")
    parser.add_argument("--log-pacing", action="store_true", help="log each change of the sweep's pace and limit")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if args.log_pacing:
        logging.getLogger("shared.rotation.sweep").setLevel(logging.INFO)
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
