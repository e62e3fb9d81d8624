"""A benchmark that met failures stops, or leaves them out of its figures, rather than reporting them as a
measure: refused requests, failed rotations, failed reads. Stubs where a failure cannot be had from the local
environment on demand; the local environment (Azurite and the stand-in) where it can, at the smallest sizes."""

import argparse
import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import cold_start, common, connections, sweep_scale, throttle
from shared.rotation.sweep import SweepReport

ROOT = Path(__file__).resolve().parents[2]


# bench.cold_start: a first request is timed only when it answered what its route answers having done its work.

@pytest.mark.e2e
def test_a_cold_read_refused_for_its_token_stops_the_run(local_env, monkeypatch):
    monkeypatch.setenv(common.API_TOKEN, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    with pytest.raises(SystemExit, match="get_app_connection answered 401, not 200"):
        cold_start.first_request(cold_start.call("read", "0" * 31 + "1"), str(ROOT), ROOT)


@pytest.mark.e2e
def test_a_cold_read_of_a_connection_that_does_not_exist_stops_the_run(local_env, monkeypatch):
    from localdev.api_token import daemon_token

    monkeypatch.setenv(common.API_TOKEN, daemon_token(local_env.api))
    with pytest.raises(SystemExit, match="get_app_connection answered 404, not 200"):
        cold_start.first_request(cold_start.call("read", str(None)), str(ROOT), ROOT)


def test_every_route_has_the_status_it_answers_when_it_did_its_work():
    assert set(cold_start.EXPECTED) == {*cold_start.ROUTES, "bare", *cold_start.FLOORS}
    assert cold_start.call("floor", "c")["expected"] == 200 and cold_start.call("floor-write", None)["expected"] == 201
    assert cold_start.call("write", None)["expected"] == 201
    assert cold_start.call("callback", None)["expected"] == 400  # an unknown state: refused after its lean read


def test_the_profiled_cold_process_is_not_one_of_the_measured(monkeypatch, tmp_path, capsys):
    class Admin:
        def add_tenant(self):
            return "tenant"

    measured = []

    def first_request(request, pythonpath, package, profile=None, environment=None):
        total = 100.0 if profile else 1.0  # profiling inflates a process
        if request["module"] == "function_app":
            measured.append(profile)
        return {"import": total / 2, "request": total / 2, "total": total, "status": request["expected"],
                "created": "seeded", "body": "", "modules": 1}

    monkeypatch.setattr(common, "admin_client", Admin)
    monkeypatch.setattr(cold_start, "first_request", first_request)
    monkeypatch.setattr(cold_start, "new_connection_body", lambda admin, tenant, name: {})
    cold_start.first_requests(1, ["read"], {"service": (tmp_path, {})}, str(tmp_path / "profiles"))
    out = capsys.readouterr().out
    assert "worst ratio to the bare function's first request: 1.00 (read" in out, out
    assert measured == [None, str(tmp_path / "profiles" / "read.pstats"), None]  # seed, profiled, measured


# bench.connections

@pytest.mark.e2e
def test_the_tls_part_fails_when_no_request_after_the_create_succeeded(local_env, monkeypatch, capsys):
    from localdev.api_token import daemon_token

    monkeypatch.setenv(common.STANDIN_URL, local_env.standin.url)
    monkeypatch.setenv(common.STANDIN_CA, str(local_env.standin.ca_path))
    monkeypatch.setenv(common.API_TOKEN, daemon_token(local_env.api))
    real = common.admin_client()

    class FailingAfterCreate:  # the stand-in's admin client; Entra's token endpoint fails once the create is done
        calls = 0

        def __getattr__(self, name):
            return getattr(real, name)

        def connections_opened(self):
            FailingAfterCreate.calls += 1
            if FailingAfterCreate.calls == 2:  # right after the create
                real.set_faults([{"method": "POST", "path": r".*/oauth2/v2\.0/token$", "status": 500}])
            return real.connections_opened()

    reached = []
    monkeypatch.setattr(common, "admin_client", FailingAfterCreate)
    monkeypatch.setattr(connections, "read_path", lambda *a: reached.append(True) or 0)
    try:
        code = connections.run(argparse.Namespace(requests=3, reads=1, rows=1, rounds=1, baseline=""))
    finally:
        real.clear_faults()
    line = next(line for line in capsys.readouterr().out.splitlines() if "statuses" in line)
    assert "200" not in line.split("statuses ")[1].split(";")[0]  # every request after the create failed
    assert code == 1 and not reached, line


# A bare app whose calls answer 200 while OK holds (calls[0]: the calls so far), 503 otherwise.
APP = '''
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
calls = [0]


@app.function_name("bare")
@app.route(route="bare/{id}", methods=["GET"])
async def bare(req: func.HttpRequest) -> func.HttpResponse:
    calls[0] += 1
    ok = OK
    return func.HttpResponse("ok" if ok else "failing", status_code=200 if ok else 503)
'''

# Only measured GET calls fail (the 14th, 21st and 28th call): every warm-up call answers 200.
FLAKY_APP = APP.replace("OK", "not 10 < calls[0] <= 30 or calls[0] % 7")


def test_measured_read_calls_that_did_not_answer_200_fail_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv(common.API_TOKEN, "unused")
    (tmp_path / "flaky_app.py").write_text(FLAKY_APP)
    with pytest.raises(SystemExit, match="3 of 20 measured get calls did not answer 200"):
        connections.read_cpu(tmp_path, "flaky_app", "Unused", argparse.Namespace(rows=5, reads=20), [])


def test_read_calls_that_all_answer_200_are_figures(tmp_path, monkeypatch):
    monkeypatch.setenv(common.API_TOKEN, "unused")
    (tmp_path / "steady_app.py").write_text(APP.replace("OK", "True"))
    figures = connections.read_cpu(tmp_path, "steady_app", "Unused", argparse.Namespace(rows=5, reads=20), [])
    assert set(figures) == {"get", "page"}


# bench.throttle

def run_throttle(monkeypatch, report, writes, wall, limit=1, window_s=1.0):
    async def no_setup(admin, count):
        return []

    async def one_sweep(admin, clients, at, concurrency, rule, latency_ms):
        calls = throttle.GraphCalls()
        calls.calls, calls.writes = writes, writes
        return report, wall, calls

    async def nothing():
        return None

    monkeypatch.setattr(throttle, "create_connections", no_setup)
    monkeypatch.setattr(throttle, "one_sweep", one_sweep)
    monkeypatch.setattr(common, "admin_client", lambda: object())
    monkeypatch.setattr("shared.azure.clients.get_clients", lambda: object())
    monkeypatch.setattr("shared.azure.clients.close_clients", nothing)
    args = argparse.Namespace(rotations=report.due, limit=limit, window_s=window_s, concurrency=4, latency_ms=0,
                              skip_unthrottled=True)
    return asyncio.run(throttle.run(args))


def test_throttle_fails_when_a_rotation_failed(monkeypatch, capsys, caplog):
    code = run_throttle(monkeypatch, SweepReport(due=6, claimed=6, succeeded=5, failed=1), writes=9, wall=10.0)
    verdict = capsys.readouterr().out.splitlines()[-2]
    assert code == 1
    assert "rate-limited: 1 of 6 failed" in caplog.text and "not a measure" in caplog.text
    assert "(goal >= 80 % and <= 100 % of the allowed rate, < 5 % of calls: met)" in verdict  # 0.9 writes/s


def test_a_rate_far_above_the_allowed_one_is_not_the_goal_met(monkeypatch, capsys):
    code = run_throttle(monkeypatch, SweepReport(due=6, claimed=6, succeeded=6, failed=0), writes=12, wall=2.0)
    verdict = capsys.readouterr().out.splitlines()[-2]
    assert code == 0
    assert "6.0 writes/s = 600% of the allowed 1.0/s" in verdict and verdict.endswith("missed)"), verdict


# bench.sweep_scale

@pytest.mark.e2e
async def test_sweep_scale_counts_the_requests_of_the_lean_table_client(local_env):
    from shared.records import Actor, AuditRecord
    from shared.settings import get_settings
    from shared.store.audit import AuditTable

    settings = get_settings()
    endpoint = next(part.split("=", 1)[1] for part in settings.storage.connection_string.split(";")
                    if part.startswith("TableEndpoint="))
    counter = sweep_scale.TableCounter(endpoint)
    clients = sweep_scale.counting_clients(settings, counter)
    try:
        marker = "bench-" + uuid.uuid4().hex[:8]
        record = AuditRecord(at=datetime.now(UTC), action="rotation.attempt", outcome="started",
                             actor=Actor("system", "system", "app"), app="azure-key-vault", connection_id=marker)
        counter.enabled = True
        await AuditTable(clients).append(record)  # one insert over the lean client
        counter.enabled = False
        found, _ = await AuditTable(clients).query(record.at - timedelta(minutes=1),
                                                   record.at + timedelta(minutes=1), connection_id=marker)
        assert [r.connection_id for r in found] == [marker]
        assert sum(counter.requests.values()) >= 1, dict(counter.requests)
    finally:
        await clients.close()
