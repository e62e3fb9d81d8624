"""What the benchmarks share: a local environment around a worker process, tables, RSS, logging, seeding.

Each benchmark is one script with two halves. Run as the README says, it starts a
:class:`localdev.environment.LocalEnvironment` (Azurite and the stand-in, on free loopback ports), runs itself
again as a *worker* process with the environment's settings, and stops the environment when the worker ends.
The worker is the service under test: its CPU and memory are not shared with the stand-in's thread, and its
peak RSS is the service's own.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKER_FLAG = "--worker"
STANDIN_URL = "BENCH_STANDIN_URL"
STANDIN_CA = "BENCH_STANDIN_CA"
AZURITE_PID = "BENCH_AZURITE_PID"
ENVIRONMENT_PID = "BENCH_ENVIRONMENT_PID"  # the process that serves the stand-in (it does nothing else)
API_TOKEN = "BENCH_API_TOKEN"  # an access token for the service's API (an administrator daemon's)
ROTATION_ROLE = "Application.ReadWrite.OwnedBy"

log = logging.getLogger("bench")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for noisy in ("azure", "httpx", "msal", "kiota", "msgraph", "shared", "asyncio", "localdev", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def in_worker(argv: Sequence[str] | None = None) -> bool:
    return WORKER_FLAG in (sys.argv[1:] if argv is None else argv)


def count(text: str) -> int:
    """An argument that counts something: a whole number of at least 1 (argparse's error otherwise)."""
    return _whole(text, 1)


def amount(text: str) -> int:
    """An argument that may be nothing: a whole number of at least 0 (argparse's error otherwise)."""
    return _whole(text, 0)


def counts(text: str) -> list[int]:
    """Comma-separated counts (``1,8,32``)."""
    return [count(part) for part in text.split(",")]


def seconds(text: str) -> float:
    """A duration in seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not more than 0")
    return value


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is less than {least}")
    return value


def add_worker_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)


def run_in_environment(script: str, argv: Sequence[str], environment: dict[str, str] | None = None) -> int:
    """Start Azurite and the stand-in (with the service's API registered), run ``script`` as a worker with their
    settings and an administrator's access token for the API, stop them."""
    from localdev.api_token import daemon_token
    from localdev.environment import LocalEnvironment

    with tempfile.TemporaryDirectory(prefix="bench-") as state:
        started = time.monotonic()
        env = LocalEnvironment(Path(state), table_prefix="Bench" + secrets.token_hex(4),
                               sweep_schedule="0 0 0 1 1 *", health_schedule="0 0 0 1 1 *", with_api=True)
        with env:
            assert env.standin is not None
            assert env.azurite is not None
            assert env.api is not None
            assert env.azurite.process is not None
            log.info("environment up in %.1f s (stand-in %s)", time.monotonic() - started, env.standin.url)
            child_env = {**os.environ, **env.settings, STANDIN_URL: env.standin.url,
                         STANDIN_CA: str(env.standin.ca_path), AZURITE_PID: str(env.azurite.process.pid),
                         ENVIRONMENT_PID: str(os.getpid()), API_TOKEN: daemon_token(env.api), **(environment or {})}
            child_env.setdefault("PYTHONPATH", str(ROOT))
            return subprocess.call([sys.executable, script, *argv, WORKER_FLAG], cwd=ROOT, env=child_env)


def api_headers() -> dict[str, str]:
    """The headers that authenticate a worker's requests to the service's API."""
    return {"Authorization": f"Bearer {os.environ[API_TOKEN]}"}


def admin_client() -> Any:
    from localdev.standin import AdminClient

    return AdminClient(os.environ[STANDIN_URL], os.environ[STANDIN_CA])


def register_rotatable_app(admin: Any, tenant_id: str, name: str) -> dict[str, str]:
    """An app that may rotate its own secret (the Graph role; its service principal owns it): a client-secret
    credentials body for the API."""
    app = admin.add_app(tenant_id, display_name=name, roles=[ROTATION_ROLE])
    secret = admin.add_secret(tenant_id, app["appId"], display_name="given")
    admin.add_owner(tenant_id, app["appId"], app["servicePrincipalId"])
    return {"tenantId": tenant_id, "clientId": app["appId"], "clientSecret": secret["secretText"],
            "clientSecretKeyId": secret["keyId"]}


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process so far (Linux /proc; 0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def machine_cpu_seconds() -> float:
    """CPU time every process of the machine has used so far, over all cores (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return 0.0
    busy = sum(int(v) for v in fields[:8]) - int(fields[3]) - int(fields[4])  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def environment_cpu_seconds() -> tuple[float, float]:
    """CPU so far of the stand-in's process (the benchmark's parent) and of Azurite."""
    return (process_cpu_seconds(int(os.environ.get(ENVIRONMENT_PID, "0") or 0)),
            process_cpu_seconds(int(os.environ.get(AZURITE_PID, "0") or 0)))


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (it reads as a table on a terminal too)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = [f"### {title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in text]
    return "\n".join(lines) + "\n"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def progress(every: int, total: int, what: str) -> Callable[[], None]:
    """A counter that logs every ``every`` steps."""
    done = [0]

    def step() -> None:
        done[0] += 1
        if done[0] % every == 0 or done[0] == total:
            log.info("%s: %d of %d", what, done[0], total)

    return step


# The revision issue 17 measured (on the machine it was filed from: a cold read 2.31 x a bare function's first
# request, 0.9 ms of CPU per warm GET, about 6 ms per 50-row page). Run side by side, it shows whether a
# benchmark here measures what the issue measured, and turns the issue's goals into ratios that hold anywhere.
ISSUE_BASELINE = "1886fe0"


def baseline_name(revision: str) -> str:
    """How the benchmarks' tables name the service at ``revision``."""
    return f"service at {revision}" + (" (issue 17)" if revision == ISSUE_BASELINE else "")


def baseline_root(revision: str, parent: Path) -> Path | None:
    """The function app at ``revision`` of this repository, unpacked into ``parent`` (None without that history)."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True,
                             check=False)
    if archive.returncode != 0:
        log.warning("revision %s is not in this clone (%s): no baseline", revision,
                    archive.stderr.decode(errors="replace").strip()[:200])
        return None
    parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(parent)], input=archive.stdout, check=True)
    return parent


# A bare Functions app: one anonymous async HTTP function that answers a small JSON document and does nothing
# else. The baseline the service's cold start and read path are compared with, on the same host and runtime.
BARE_MODULE = "bare_function_app"
BARE_FUNCTION = "bare"
BARE_APP_SOURCE = '''
import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("bare")
@app.route(route="bare/{id}", methods=["GET"])
async def bare(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"id": req.route_params.get("id")}), mimetype="application/json",
                             headers={"Cache-Control": "no-store"})
'''


def bare_app_dir(parent: Path) -> Path:
    """Write the bare function app into ``parent`` (as ``bare_function_app.py``); put ``parent`` on sys.path."""
    (parent / f"{BARE_MODULE}.py").write_text(BARE_APP_SOURCE)
    return parent


# The floor of a cold instance's first request (``bench/apps/floor_function_app.py``): the least any service does
# to answer an authenticated read of one connection, or a create of one, beside the bare function in
# ``bench/cold_start.py``.
FLOOR_MODULE = "floor_function_app"
FLOOR_FUNCTION = "floor"
FLOOR_CREATE_FUNCTION = "floor_create"
FLOOR_TABLES = ("FloorAudit", "FloorConnections", "FloorHealth")  # after the service's table prefix
FLOOR_APP = ROOT / "bench" / "apps" / f"{FLOOR_MODULE}.py"
