"""Sweep read cost at scale: a schedule index of many entries, few of them due.

``--connections`` schedule-index entries spread over the coming year (for connections that are never due in
this run), plus ``--due`` real connections with rotation enabled that are due; then one sweep with a clock past
their due time. Every Table Storage request of the sweep is counted, with the entities each response carries:
the SDKs' at the HTTP pipeline (a counting transport under the service's own clients), the lean client's
(``shared.azure.rest``: lean reads, single-entity writes such as audit records) at its ``send``, where a request
it retried counts once.

How the entries not due get into the schedule table (``--setup``):

- ``seed`` (default): before Azurite starts, a database holding them is written into its folder with LokiJS,
  the library Azurite keeps its tables in (``localdev.azurite.Azurite(location=...)``); Azurite then serves it.
  Azurite looks up each entity it writes by scanning its partition, and the schedule index is one partition,
  so writing N entries through the API costs O(N^2): about 40 s for the first 10,000 and an hour for 100,000
  on the development machine (and Azurite drops connections that wait minutes).
- ``api``: through the Tables API, entity-group transactions of 100 (upserts, retried when a connection
  drops). Fine up to a few thousand; a cross-check that seeded entries read as written ones.

Goal: the sweep's reads (GET requests, entities read) <= 2 x due + a constant, whatever the index size.

    .venv/bin/python -m bench.sweep_scale --connections 100000 --due 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common

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
    """The service's clients, with a transport under the SDKs and a lean client (``shared.azure.rest``: the lean
    reads and single-entity writes, audit records among them) that report every request to ``counter``."""
    from azure.core.pipeline.transport import AioHttpTransport

    from shared.azure.clients import AzureClients
    from shared.azure.rest import Response, RestClient

    class CountingRest(RestClient):
        async def send(self, method: str, url: str, headers: Any, body: bytes = b"") -> Response:
            response = await super().send(method, url, headers, body)  # a request it retried counts once
            counter.seen(method.upper(), url, response.body if method.upper() == "GET" else None)
            return response

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
        def transport(self, upstream: str) -> AioHttpTransport:  # counted, not traced
            return CountingTransport(session=self.session(), session_owner=False)

        rest_class = CountingRest  # the lean client's requests, counted

    return CountingClients(settings)


def index_keys(count: int, start: datetime) -> list[str]:
    """Schedule-index keys of ``count`` connections that do not exist, due over the year after ``start``."""
    from shared.store.schedule import schedule_key

    span = timedelta(days=365).total_seconds()
    return [schedule_key(start + timedelta(seconds=span * n / max(1, count)), APP, str(uuid.uuid4()))
            for n in range(count)]


# Writes a LokiJS database as Azurite 3.x keeps its tables (LokiTableMetadataStore: a "$TABLES_COLLECTION$" of
# {account, table}, a "$SERVICES_COLLECTION$", and one collection per table, "{account}${table}", indexed on
# PartitionKey and RowKey), holding one table whose entities have the RowKeys read from stdin (a JSON list).
SEED_SCRIPT = r"""
const [lokiPath, dbPath, account, table, partition] = process.argv.slice(1);
const Loki = require(lokiPath);
const rowKeys = JSON.parse(require("fs").readFileSync(0, "utf8"));
const db = new Loki(dbPath, { persistenceMethod: "fs" });
db.addCollection("$TABLES_COLLECTION$", { indices: ["account", "table"] }).insert({ account, table });
db.addCollection("$SERVICES_COLLECTION$", { unique: ["accountName"] });
const entities = db.addCollection(`${account}$${table}`, { indices: ["PartitionKey", "RowKey"] });
const stamp = new Date().toISOString().replace("Z", "0000Z");
const eTag = `W/"datetime'${encodeURIComponent(stamp)}'"`;
entities.insert(rowKeys.map((RowKey) => ({
  PartitionKey: partition, RowKey,
  properties: { PartitionKey: partition, RowKey, Timestamp: stamp, "Timestamp@odata.type": "Edm.DateTime" },
  lastModifiedTime: stamp, eTag,
})));
db.saveDatabase((error) => { if (error) { console.error(error); process.exit(1); } });
"""


def seed_index(folder: Path, table: str, keys: list[str]) -> None:
    """Write an Azurite database into ``folder`` whose ``table`` holds the schedule-index entries ``keys``."""
    from localdev.azurite import ROOT
    from shared.settings import AZURITE_ACCOUNT
    from shared.store.schedule import PARTITION

    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node is not installed (Azurite needs it too)")
    database = folder / "__azurite_db_table__.json"
    subprocess.run([node, "-e", SEED_SCRIPT, str(ROOT / "node_modules" / "lokijs"), str(database), AZURITE_ACCOUNT,
                    table, PARTITION], input=json.dumps(keys).encode(), check=True, cwd=ROOT)


async def write_index(clients: Any, keys: list[str], concurrency: int = 4) -> None:
    """The schedule-index entries ``keys``, written through the Tables API in transactions of 100."""
    from azure.core.exceptions import ServiceRequestError

    from shared.store.schedule import PARTITION, SCHEDULE_TABLE

    table = await clients.table(SCHEDULE_TABLE)
    gate = asyncio.Semaphore(concurrency)
    batches = (len(keys) + 99) // 100
    step = common.progress(max(1, batches // 10), batches, "index batches written")

    async def batch(first: int) -> None:
        operations = [("upsert", {"PartitionKey": PARTITION, "RowKey": key}) for key in keys[first:first + 100]]
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

    await asyncio.gather(*(batch(first) for first in range(0, len(keys), 100)))


async def count_index(clients: Any) -> int:
    """How many entries the schedule table holds (a check on the setup, before counting starts)."""
    from shared.store.schedule import PARTITION, SCHEDULE_TABLE

    table = await clients.table(SCHEDULE_TABLE)
    count = 0
    async for _ in table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION}, select=["RowKey"],
                                        results_per_page=1000):
        count += 1
    return count


async def run(args: argparse.Namespace) -> int:
    from shared import wiring
    from shared.azure.clients import _BY_LOOP
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
    service = wiring.services(wiring.adapters(clients)).connections
    started = time.monotonic()
    for n in range(args.due):
        credentials = common.register_rotatable_app(admin, tenant, f"scale-{n}")
        await service.create(APP, {
            "name": f"scale-{n}", "method": "client-secret", "credentials": credentials,
            "isAutoRotationEnabled": True,
            "rotation": {"rotationInterval": 1, "rotateAtUtc": {"hours": 3, "minutes": 0}},
        })
    log.info("%d due connections created in %.1f s", args.due, time.monotonic() - started)
    at = datetime.fromisoformat(args.at)  # past the due connections' next rotation, before the seeded entries
    setup = args.seed_seconds
    if args.setup == "api":
        started = time.monotonic()
        await write_index(clients, index_keys(args.connections, at + timedelta(hours=1)))
        setup = time.monotonic() - started
        log.info("%d index entries written through the API in %.1f s", args.connections, setup)
    indexed = await count_index(clients)
    if indexed != args.connections + args.due:
        log.error("the schedule table holds %d entries, not %d", indexed, args.connections + args.due)
        return 1

    counter.enabled = True
    started = time.monotonic()
    rotator = wiring.services(wiring.adapters(clients), clock=lambda: at).rotator
    report = await sweep(rotator, max_concurrency=8, budget_seconds=1e9)
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
         "sweep wall (s)", f"setup of the index ({args.setup}, s)"],
        [[indexed, report.due, report.succeeded, total,
          " ".join(f"{m}:{c}" for m, c in sorted(counter.requests.items())), reads, counter.entities_read, wall,
          setup]]))
    ok = reads <= bound and counter.entities_read <= bound
    print(f"reads {reads} and entities read {counter.entities_read} vs 2 x due + {CONSTANT} = {bound}: "
          f"goal {'met' if ok else 'missed'} (all table requests: {total / args.due:.1f} per rotation)\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=common.amount, default=100_000, help="schedule-index entries not due")
    parser.add_argument("--due", type=common.count, default=10, help="connections due now")
    parser.add_argument("--setup", choices=("seed", "api"), default="seed",
                        help="how the entries not due are written (see above)")
    parser.add_argument("--at", help=argparse.SUPPRESS)  # the sweep's clock (set for the worker)
    parser.add_argument("--seed-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    common.add_worker_flag(parser)
    args = parser.parse_args()
    common.setup_logging()
    if args.worker:
        return asyncio.run(run(args))
    at = datetime.now(UTC) + timedelta(days=3)  # past the due connections' first scheduled rotation
    argv = [*sys.argv[1:], "--at", at.isoformat()]
    if args.setup == "api":
        return common.run_in_environment(__file__, argv)
    from localdev.azurite import Azurite
    from shared.store.schedule import SCHEDULE_TABLE

    prefix = "Bench" + secrets.token_hex(4)
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as folder:
        started = time.monotonic()
        seed_index(Path(folder), prefix + SCHEDULE_TABLE, index_keys(args.connections, at + timedelta(hours=1)))
        log.info("%d index entries seeded in %.1f s", args.connections, time.monotonic() - started)
        with Azurite(location=Path(folder)) as azurite:
            seeded = time.monotonic() - started  # written and loaded by Azurite
            # The worker uses this Azurite (and its table prefix); the environment's own stays unused.
            return common.run_in_environment(
                __file__, [*argv, "--seed-seconds", f"{seeded:.1f}"],
                environment={"AzureWebJobsStorage": azurite.connection_string, "STATE_TABLE_PREFIX": prefix})


if __name__ == "__main__":
    sys.exit(main())
