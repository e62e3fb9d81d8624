"""Sweep read cost at scale: a schedule index of many entries, few of them due.

Writes ``--connections`` schedule-index entries spread over the coming year straight into the schedule table
(entity-group transactions of 100), plus ``--due`` real connections with rotation enabled that are due; then
one sweep with a clock past their due time. Every Table Storage request of the sweep is counted at the HTTP
pipeline (a counting transport under the service's own clients), with the entities each response carries.

Goal: the sweep's reads (GET requests, entities read) <= 2 x due + a constant, whatever the index size.

    .venv/bin/python bench/sweep_scale.py --connections 100000 --due 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import common

log = logging.getLogger("bench.sweep_scale")
APP = "azure-key-vault"
CONSTANT = 5  # reads a sweep may make whatever is due: the index query, its pages


class TableCounter:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.enabled = False
        self.requests: collections.Counter[str] = collections.Counter()
        self.entities_read = 0

    def seen(self, method: str, url: str, body: bytes | None) -> None:
        if not self.enabled or not url.startswith(self.endpoint):
            return
        self.requests[method] += 1
        if method == "GET" and body:
            try:
                data = json.loads(body)
            except ValueError:
                return
            self.entities_read += len(data.get("value", [])) if "value" in data else 1


def counting_clients(settings: Any, counter: TableCounter) -> Any:
    """The service's clients, with a transport that reports every request to ``counter``."""
    from azure.core.pipeline.transport import AioHttpTransport

    from shared.azure.clients import AzureClients

    class CountingTransport(AioHttpTransport):
        async def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            response = await super().send(request, **kwargs)
            if counter.enabled and request.url.startswith(counter.endpoint):
                body: bytes | None = None
                if request.method == "GET":
                    try:
                        body = response.body()  # the legacy response (what the Tables SDK gets)
                    except Exception:
                        body = None
                counter.seen(request.method, request.url, body)
            return response

    class CountingClients(AzureClients):
        def transport(self) -> AioHttpTransport:
            return CountingTransport(session=self.session(), session_owner=False)

    return CountingClients(settings)


async def write_index(clients: Any, count: int, start: datetime, concurrency: int = 4) -> None:
    """``count`` entries for connections that do not exist, due over the year after ``start``."""
    from azure.core.exceptions import ServiceRequestError

    from shared.store.schedule import PARTITION, SCHEDULE_TABLE, schedule_key

    table = await clients.table(SCHEDULE_TABLE)
    span = timedelta(days=365).total_seconds()
    gate = asyncio.Semaphore(concurrency)
    batches = (count + 99) // 100
    step = common.progress(max(1, batches // 10), batches, "index batches written")

    async def batch(first: int) -> None:
        operations = []
        for n in range(first, min(first + 100, count)):
            due = start + timedelta(seconds=span * n / max(1, count))
            key = schedule_key(due, APP, str(uuid.uuid4()))
            operations.append(("upsert", {"PartitionKey": PARTITION, "RowKey": key}))
        async with gate:
            for attempt in range(1, 6):  # an upsert batch is idempotent; Azurite under load may drop a connection
                try:
                    await table.submit_transaction(operations)
                    break
                except ServiceRequestError:
                    if attempt == 5:
                        raise
                    log.warning("index batch at %d: connection dropped, retrying", first)
                    await asyncio.sleep(attempt)
        step()

    await asyncio.gather(*(batch(first) for first in range(0, count, 100)))


async def run(args: argparse.Namespace) -> int:
    from shared.azure.clients import _BY_LOOP
    from shared.connections import ConnectionService
    from shared.rotation.protocol import Rotator
    from shared.rotation.sweep import sweep
    from shared.settings import get_settings

    settings = get_settings()
    assert settings.storage.connection_string
    endpoint = next(part.split("=", 1)[1] for part in settings.storage.connection_string.split(";")
                    if part.startswith("TableEndpoint="))
    counter = TableCounter(endpoint)
    clients = counting_clients(settings, counter)
    _BY_LOOP[asyncio.get_running_loop()] = clients  # the service's get_clients() finds these

    admin = common.admin_client()
    tenant = admin.add_tenant()
    service = ConnectionService(clients)
    started = time.monotonic()
    for n in range(args.due):
        credentials = common.register_rotatable_app(admin, tenant, f"scale-{n}")
        await service.create(APP, {
            "name": f"scale-{n}", "method": "client-secret", "credentials": credentials,
            "isAutoRotationEnabled": True,
            "rotation": {"rotationInterval": 1, "rotateAtUtc": {"hours": 3, "minutes": 0}},
        })
    log.info("%d due connections created in %.1f s", args.due, time.monotonic() - started)
    at = datetime.now(UTC) + timedelta(days=3)  # past the due connections' next rotation
    started = time.monotonic()
    await write_index(clients, args.connections, at + timedelta(hours=1))
    log.info("%d index entries written in %.1f s", args.connections, time.monotonic() - started)

    counter.enabled = True
    started = time.monotonic()
    report = await sweep(Rotator(clients, now=lambda: at), max_concurrency=8, budget_seconds=1e9)
    wall = time.monotonic() - started
    counter.enabled = False
    await clients.close()
    if report.succeeded != args.due or report.due != args.due:
        log.error("expected %d due and rotated, got %s", args.due, report)
        return 1
    reads = counter.requests["GET"]
    total = sum(counter.requests.values())
    bound = 2 * args.due + CONSTANT
    print(common.table(
        f"One sweep over a schedule index of {args.connections + args.due} entries, {args.due} due",
        ["index entries", "due", "rotated", "table requests", "by method", "read requests", "entities read",
         "sweep wall (s)"],
        [[args.connections + args.due, report.due, report.succeeded, total,
          " ".join(f"{m}:{c}" for m, c in sorted(counter.requests.items())), reads, counter.entities_read, wall]]))
    ok = reads <= bound and counter.entities_read <= bound
    print(f"reads {reads} and entities read {counter.entities_read} vs 2 x due + {CONSTANT} = {bound}: "
          f"goal {'met' if ok else 'missed'} (all table requests: {total / args.due:.1f} per rotation)\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000, help="schedule-index entries not due")
    parser.add_argument("--due", type=int, default=10, help="connections due now")
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if not args.worker:
        return common.run_in_environment(__file__, sys.argv[1:])
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
