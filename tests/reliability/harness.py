"""Helpers of the crash and storm campaigns: the local host as a separate process (so it can be SIGKILLed),
direct Table Storage edits that stand for the passage of time, an audit of every connection's health,
a secret scan of logs and tables, and the figures written to ``.reliability/``.

Time is never faked inside the host: the host always runs on the real clock. Instead the test moves the
*data* through time, through the Table API, while no sweep runs:

- :func:`make_due` rewrites a connection's due time (``RotNextAt``), its schedule-index row and the
  connection's pointer to it (``RotScheduleKey``) to one minute ago, as a sweep would find them once
  their day came;
- :func:`expire_leases` sets ``RotLeaseUntil`` of a crashed rotation to the past, as it is once the lease
  (``ROTATION_TEST_TIMEOUT_SECONDS`` + 600 s) has run out.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / ".reliability"
BASE = "/api/v1/app-connections"
SWEEP_DONE = "Rotation sweep done"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_figures(name: str, figures: dict[str, Any]) -> Path:
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / f"{name}.json"
    figures = {**figures, "writtenAt": datetime.now(UTC).isoformat(timespec="seconds")}
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return path


def keep_log(path: Path, name: str) -> None:
    """Copy a campaign's host log to ``.reliability/<name>-host.log`` (each run writes its own log first, so
    two runs in one checkout do not mix theirs)."""
    if path.exists():
        FIGURES.mkdir(exist_ok=True)
        shutil.copyfile(path, FIGURES / f"{name}-host.log")


class Secrets:
    """Every secret value a campaign saw, for its final scan (thread-safe: requests run in a pool)."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        with self._lock:
            self.values.update(v for v in values if v)


NEVER = "0 0 0 1 1 *"  # only on 1 January, and the host runs no timer at all (--no-timers): a campaign
# triggers every sweep itself, and no timer of the service's (the daily audit retention) runs on the real clock


@contextmanager
def campaign_environment(name: str, state: Path, concurrency: int) -> Iterator[tuple[Any, HostProcess, Tables]]:
    """Azurite and the stand-in in this process, the host in its own (started), the campaign's tables; all
    stopped at the end, and the host's log kept as ``.reliability/<name>-host.log`` for a failure's diagnosis.
    The service's API is registered on the stand-in: :meth:`HostProcess.api` calls it as an administrator."""
    from localdev.environment import LocalEnvironment
    from tests.tokens import Tokens

    port = free_port()
    env = LocalEnvironment(state, table_prefix=name.capitalize() + secrets.token_hex(4), sweep_schedule=NEVER,
                           health_schedule=NEVER, site_url=f"http://127.0.0.1:{port}", with_api=True)
    env.start()
    assert env.api is not None and env.standin is not None
    auth = Tokens(env.api, env.standin.admin).auth()
    auth.tokens.for_roles(*auth.roles)  # its daemon registered once, before requests run in parallel
    host = HostProcess(env.settings, port, state / "host.log", extra_env={
        "ROTATION_MAX_CONCURRENCY": str(concurrency), "ROTATION_TEST_TIMEOUT_SECONDS": "60"}, auth=auth)
    tables = Tables(env.settings["AzureWebJobsStorage"], env.table_prefix)
    try:
        host.start()
        yield env, host, tables
    finally:
        host.stop()
        tables.close()
        env.stop()
        keep_log(host.log_path, name)


# -- the host, as a process of its own --------------------------------------------------------------------
@dataclass
class HostProcess:
    """``python -m localdev host`` in a separate process with the environment's settings; its output (all
    runs) is appended to ``log_path``."""

    settings: dict[str, str]
    port: int
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    auth: httpx.Auth | None = None  # how API calls authenticate (an administrator daemon's token)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _read: int = 0  # bytes of the log already counted
    _done: int = 0  # sweep ends counted so far

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, **kwargs: Any) -> httpx.Client:
        """A client of the host's API, authenticated with :attr:`auth`."""
        return httpx.Client(base_url=self.url, auth=self.auth, **kwargs)

    def start(self, timeout: float = 60.0) -> None:
        assert self.process is None or self.process.poll() is not None
        env = {**os.environ, **self.settings, **self.extra_env}
        env.pop("LOCALDEV_FUNCTION_KEY", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localdev", "host", "--port", str(self.port), "--app-dir", str(ROOT),
                 "--no-timers"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the host exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/admin/host/status", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the host did not start within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, nothing is cleaned up."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sweeps_done(self) -> int:
        """Sweeps that ended so far (read incrementally: the log grows to megabytes)."""
        if not self.log_path.exists():
            return 0
        with self.log_path.open("rb") as log:
            log.seek(max(0, self._read - len(SWEEP_DONE)))
            chunk = log.read()
        start = max(0, self._read - len(SWEEP_DONE))
        marker = SWEEP_DONE.encode()
        index = chunk.find(marker)
        while index != -1:  # count only the occurrences that end after what was already counted
            if start + index + len(marker) > self._read:
                self._done += 1
            index = chunk.find(marker, index + 1)
        self._read = start + len(chunk)
        return self._done

    def trigger_sweep(self) -> None:
        response = httpx.post(f"{self.url}/admin/functions/rotate_due_credentials", json={"input": None}, timeout=10)
        assert response.status_code == 202, response.text

    def run_sweep(self, timeout: float = 300.0) -> float:
        """Trigger a sweep and wait for it to end; returns its duration in seconds."""
        before = self.sweeps_done()
        started = time.monotonic()
        self.trigger_sweep()
        while self.sweeps_done() <= before:
            if time.monotonic() - started > timeout:
                raise AssertionError(f"the sweep did not end within {timeout} s")
            if self.process is None or self.process.poll() is not None:
                raise AssertionError("the host died during the sweep")
            time.sleep(0.05)
        return time.monotonic() - started


# -- Table Storage, directly ------------------------------------------------------------------------------
class Tables:
    def __init__(self, connection_string: str, prefix: str) -> None:
        from azure.data.tables import TableServiceClient

        self.service = TableServiceClient.from_connection_string(connection_string)
        self.prefix = prefix

    def table(self, suffix: str) -> Any:
        return self.service.get_table_client(self.prefix + suffix)

    def connections(self, app: str) -> list[dict[str, Any]]:
        table = self.table("Connections")
        query = "PartitionKey eq @app and Kind eq 'connection'"
        return [dict(e) | {"_etag": e.metadata["etag"]} for e in table.query_entities(query, parameters={"app": app})]

    def history(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.table("Rotations").list_entities()]

    def dump(self) -> str:
        """Every entity of this campaign's tables, as text (for the secret scan)."""
        lines = []
        for item in self.service.list_tables():
            if item.name.startswith(self.prefix):
                for entity in self.service.get_table_client(item.name).list_entities():
                    lines.append(json.dumps(dict(entity), default=str))
        return "\n".join(lines)

    def make_due(self, app: str, ids: Iterable[str] | None = None, at: datetime | None = None) -> int:
        """Move the due time of these connections (all of them by default) to ``at`` (one minute ago):
        a new index row, the connection pointed at it, the old row removed (as the service reschedules)."""
        from azure.data.tables import UpdateMode

        from shared.store.schedule import PARTITION, schedule_key

        wanted = set(ids) if ids is not None else None
        at = at or datetime.now(UTC) - timedelta(minutes=1)
        index = self.table("Schedule")
        table = self.table("Connections")
        moved = 0
        for entity in self.connections(app):
            if wanted is not None and entity["RowKey"] not in wanted:
                continue
            key = schedule_key(at, app, entity["RowKey"])
            index.upsert_entity({"PartitionKey": PARTITION, "RowKey": key})
            table.update_entity(
                {"PartitionKey": app, "RowKey": entity["RowKey"], "RotNextAt": at, "RotScheduleKey": key},
                mode=UpdateMode.MERGE,
            )
            old = entity.get("RotScheduleKey")
            if old and old != key:
                index.delete_entity(PARTITION, old)
            moved += 1
        return moved

    def expire_leases(self, app: str) -> int:
        """Crashed rotations keep their lease until it runs out: make it have run out."""
        from azure.data.tables import UpdateMode

        table = self.table("Connections")
        past = datetime.now(UTC) - timedelta(seconds=1)
        expired = 0
        for entity in self.connections(app):
            if entity.get("RotLeaseUntil") is not None:
                table.update_entity(
                    {"PartitionKey": app, "RowKey": entity["RowKey"], "RotLeaseUntil": past}, mode=UpdateMode.MERGE
                )
                expired += 1
        return expired

    def close(self) -> None:
        self.service.close()


# -- the audit ----------------------------------------------------------------------------------------------
@dataclass
class Rotated:
    """An app registration at the stand-in and the connection that rotates its secret."""

    tenant_id: str
    client_id: str
    object_id: str
    given_key_id: str
    connection_id: str = ""
    method: str = "client-secret"  # or "certificate": its keys (keyCredentials) are rolled, not its passwords


@dataclass
class Audit:
    connections: int = 0
    not_succeeded: list[str] = field(default_factory=list)  # status is not "succeeded", or a journal is left
    lost: list[str] = field(default_factory=list)  # no working current credential in the vault
    orphaned: list[str] = field(default_factory=list)  # live passwords other than the current one
    unrevoked: list[str] = field(default_factory=list)  # a previous (given or rotated-out) key still live
    stray_versions: list[str] = field(default_factory=list)  # enabled vault versions other than the current
    duplicate_history: list[str] = field(default_factory=list)  # an attempt of a rotation recorded twice
    unfinished_history: list[str] = field(default_factory=list)  # an attempt still "running" when all are done
    history_rows: int = 0
    secret_values: set[str] = field(default_factory=set)

    @property
    def problems(self) -> dict[str, list[str]]:
        found = {
            "not succeeded": self.not_succeeded, "lost": self.lost, "orphaned": self.orphaned,
            "unrevoked": self.unrevoked, "stray vault versions": self.stray_versions,
            "duplicate history": self.duplicate_history, "unfinished history": self.unfinished_history,
        }
        return {name: items for name, items in found.items() if items}


def token_works(token_http: httpx.Client, authority: str, tenant_id: str, client_id: str, secret: str,
                certificate: tuple[str, str] | None = None) -> bool:
    """A client-credentials token with ``secret``, or with a client assertion signed by ``certificate``
    (certificate PEM, private key PEM) as the certificate method signs it."""
    form = {"grant_type": "client_credentials", "client_id": client_id, "scope": "https://vault.azure.net/.default"}
    if certificate is not None:
        from shared.credentials import client_assertion, parse_certificate

        parsed = parse_certificate(*certificate)
        form.update(client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    client_assertion=client_assertion(parsed, tenant_id, client_id, authority))
    else:
        form["client_secret"] = secret
    response = token_http.post(f"{authority}/{tenant_id}/oauth2/v2.0/token", data=form)
    return response.status_code == 200


def live_credentials(admin: Any, rotated: Rotated) -> dict[str, dict[str, Any]]:
    """The application's live credentials of the connection's kind (passwords, or certificate keys), by Key ID."""
    if rotated.method == "certificate":
        keys = admin.get_app(rotated.tenant_id, rotated.client_id)["keyCredentials"]
        return {str(k["keyId"]).lower(): k for k in keys}
    passwords = admin.app_passwords(rotated.tenant_id, rotated.client_id)
    return {str(p["keyId"]).lower(): p for p in passwords if not p.get("revoked")}


def audit(tables: Tables, admin: Any, authority: str, ca_path: str, app: str, apps: list[Rotated]) -> Audit:
    """Check every connection: succeeded with no journal, a current vault secret that gets a token, exactly
    one live password at the stand-in (the current one), every previous key revoked, one enabled vault
    version, and in the history one entry per attempt of a rotation, none of them still running (an attempt cut
    short is marked interrupted by the one that resumes its rotation)."""
    result = Audit()
    by_id = {a.connection_id: a for a in apps}
    vault = admin.vault_secrets()
    entities = {e["RowKey"]: e for e in tables.connections(app)}
    history = tables.history()
    result.history_rows = len(history)
    seen: dict[tuple[str, str, int], int] = {}
    revoked_by_history: dict[str, set[str]] = {}
    for row in history:
        key = (row["PartitionKey"], row["RotationId"], int(row.get("Attempt") or 1))
        seen[key] = seen.get(key, 0) + 1
        if row.get("Outcome") == "running" and row["PartitionKey"] in by_id:
            result.unfinished_history.append(f"{row['PartitionKey']}:{row['RotationId']} attempt {key[2]}")
        if row.get("RevokedKeyId") and row.get("Outcome") == "succeeded":
            revoked_by_history.setdefault(row["PartitionKey"], set()).add(str(row["RevokedKeyId"]).lower())
    result.duplicate_history = [f"{c}:{r} attempt {a} x{n}" for (c, r, a), n in seen.items() if n > 1]
    with httpx.Client(verify=ca_path, timeout=30) as token_http:
        for cid, rotated in by_id.items():
            result.connections += 1
            entity = entities.get(cid)
            if entity is None:
                result.lost.append(f"{cid}: no connection")
                continue
            if entity.get("RotStatus") != "succeeded" or entity.get("RotRotationId") or entity.get("RotLeaseUntil"):
                result.not_succeeded.append(f"{cid}: {entity.get('RotStatus')} step={entity.get('RotStep')} "
                                            f"message={entity.get('RotMessage')!r}")
            current_key = str(entity.get("RotKeyId") or "").lower()
            secret = vault.get(entity["SecretName"])
            versions = secret["versions"] if secret else []
            current = next((v for v in versions if v["version"] == entity.get("SecretVersion")), None)
            material = json.loads(current["value"]) if current else {}
            value = material.get("clientSecret") or material.get("privateKey")
            if value:
                result.secret_values.add(value)
            for version in versions:
                stored = json.loads(version["value"]) if version.get("value") else {}
                with_value = stored.get("clientSecret") or stored.get("privateKey")
                if with_value:
                    result.secret_values.add(with_value)
            certificate = ((material.get("certificateBody", ""), material.get("privateKey", ""))
                           if rotated.method == "certificate" else None)
            if not (current and current["enabled"] and value and token_works(
                    token_http, authority, rotated.tenant_id, rotated.client_id, value, certificate)):
                result.lost.append(cid)
            enabled = [v["version"] for v in versions if v["enabled"]]
            if enabled != [entity.get("SecretVersion")]:
                result.stray_versions.append(f"{cid}: {len(enabled)} enabled")
            details = live_credentials(admin, rotated)
            live = set(details)
            if live - {current_key}:
                result.orphaned.extend(
                    f"{cid}:{k} ({details[k].get('displayName')!r}, created {details[k].get('createdAt')}, "
                    f"current {current_key}, step {entity.get('RotStep')})" for k in sorted(live - {current_key}))
            previous = {rotated.given_key_id.lower(), *revoked_by_history.get(cid, set())} - {current_key}
            if previous & live:
                result.unrevoked.extend(f"{cid}:{k}" for k in sorted(previous & live))
    return result


def scan_for_secrets(values: Iterable[str], *texts: str) -> list[str]:
    """The secret values (shortened) found in any of ``texts``."""
    joined = "\n".join(texts)
    return sorted({v[:4] + "..." for v in values if v and len(v) >= 8 and v in joined})
