"""The local Functions host, through real HTTP against uvicorn in a thread (and once as a subprocess)."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import azure.functions as func
import httpx
import pytest

from localdev.host import (
    HostConfigError,
    LocalHost,
    RouteTemplate,
    build_local_host,
    load_function_app,
    load_function_app_file,
    read_route_prefix,
    run_in_thread,
)
from tests.conftest import CaptureAll

SAMPLE = Path(__file__).parent / "sample_app"
REPO = Path(__file__).resolve().parents[2]
SCHEDULE = "SCHEDULE_SETTING"


def load_sample(name: str) -> tuple[func.FunctionApp, ModuleType]:
    """A fresh copy of the sample app (its own FunctionApp instance) as module ``name``."""
    app = load_function_app_file(SAMPLE / "function_app.py", module_name=name)
    return app, sys.modules[name]


@pytest.fixture(scope="module")
def sample() -> Iterator[tuple[func.FunctionApp, ModuleType]]:
    previous = os.environ.get(SCHEDULE)
    os.environ[SCHEDULE] = "*/1 * * * * *"
    try:
        yield load_sample("localdev_sample_app_for_host_tests")
    finally:
        if previous is None:
            os.environ.pop(SCHEDULE, None)
        else:
            os.environ[SCHEDULE] = previous
        sys.modules.pop("localdev_sample_app_for_host_tests", None)


@pytest.fixture(scope="module")
def host(sample: tuple[func.FunctionApp, ModuleType]) -> LocalHost:
    return LocalHost(sample[0], SAMPLE / "host.json")


@pytest.fixture(scope="module")
def base_url(host: LocalHost) -> Iterator[str]:
    with run_in_thread(host.asgi) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=5) as c:
        yield c


# ---- routing -------------------------------------------------------------------------------------


def test_literal_segment_beats_parameter(client: httpx.Client) -> None:
    assert client.get("/items/options").json() == {"handler": "options"}
    assert client.get("/items/other").json()["handler"] == "item"
    assert client.get("/items/x/name/y").json() == {"handler": "by-name", "route": {"app": "x", "name": "y"}}
    assert client.get("/items/x/42").json()["handler"] == "sub"


def test_literal_matching_is_case_insensitive(client: httpx.Client) -> None:
    assert client.get("/ITEMS/Options").json() == {"handler": "options"}
    assert client.get("/Items/MyApp/Name/Bob").json()["route"] == {"app": "MyApp", "name": "Bob"}


def test_route_params_query_and_url_arrive(client: httpx.Client, base_url: str) -> None:
    body = client.get("/items/my%20app", params=[("q", "1"), ("q", "2"), ("empty", "")]).json()
    assert body["route"] == {"app": "my app"}
    assert body["query"] == {"q": "1", "empty": ""}  # first value per key, like the host
    assert body["url"] == f"{base_url}/items/my%20app?q=1&q=2&empty="


def test_method_falls_through_to_the_route_that_allows_it(client: httpx.Client) -> None:
    # POST /items/options: the literal route is GET only, so the {app} POST route takes it.
    response = client.post("/items/options", json={"n": 1})
    assert response.status_code == 201
    assert response.json()["app"] == "options"


def test_headers_arrive(client: httpx.Client) -> None:
    assert client.get("/echo/headers", headers={"X-Custom": "hello"}).json() == {"x-custom": "hello"}


def test_post_json_to_a_sync_function(client: httpx.Client) -> None:
    response = client.post("/items/app1", json={"name": "n1", "values": [1, 2]})
    assert response.status_code == 201
    body = response.json()
    assert body["payload"] == {"name": "n1", "values": [1, 2]}
    assert body["content_type"] == "application/json"
    assert body["thread"] != "MainThread"
    assert not body["thread"].startswith("localdev-host")  # not on the server loop's thread
    assert response.headers["location"] == "/items/app1/1"
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_async_function_and_methods(client: httpx.Client) -> None:
    assert client.delete("/items/a/b").json() == {
        "handler": "sub",
        "route": {"app": "a", "itemId": "b"},
        "method": "DELETE",
    }


def test_text_response_gets_charset(client: httpx.Client) -> None:
    response = client.get("/files/a/b/c.txt")
    assert response.text == "a/b/c.txt"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_optional_parameter(client: httpx.Client) -> None:
    assert client.get("/opt/1").json() == {"a": "1"}
    assert client.get("/opt/1/2").json() == {"a": "1", "b": "2"}
    assert client.get("/opt/1/2/3").status_code == 404


def test_not_found_is_problem_json(client: httpx.Client) -> None:
    response = client.get("/nothing/here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                               "detail": "No function of this app answers at this path."}
    assert (response.headers["cache-control"], response.headers["x-content-type-options"]) == ("no-store", "nosniff")


def test_a_path_is_logged_as_it_came_so_it_cannot_forge_a_log_line(client: httpx.Client,
                                                                    log_capture: CaptureAll) -> None:
    before = len(log_capture.records)
    assert client.get("/x%0a2026-12-01 12:00:00,000 ERROR FORGED").status_code == 404
    lines = "\n".join(log_capture.texts()[before:]).splitlines()
    assert not [line for line in lines if line.startswith("2026-12-01 12:00:00,000 ERROR FORGED")]
    assert [line for line in lines if "/x%0a2026-12-01" in line and "-> 404" in line]


def test_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    response = client.put("/items/x/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Method Not Allowed", "status": 405,
                               "detail": "This path answers DELETE, GET."}


@pytest.mark.parametrize("path", ["/boom", "/boom-sync"])
def test_exception_is_500_and_logged_without_the_body(client: httpx.Client, log_capture: CaptureAll, path: str) -> None:
    before = len(log_capture.records)
    response = client.request(
        "POST" if path == "/boom" else "GET", path, content=b"BODY-MARKER-123" if path == "/boom" else None
    )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Internal Server Error", "status": 500}
    texts = "\n".join(log_capture.texts()[before:])
    assert "kaboom" in texts
    assert "BODY-MARKER-123" not in texts


def test_keys_not_enforced_by_default(client: httpx.Client) -> None:
    response = client.get("/secure")  # authLevel FUNCTION, trigger parameter named "request"
    assert response.status_code == 200
    assert response.text == "secret stuff for secured"


def test_admin_status(client: httpx.Client) -> None:
    assert client.get("/admin/host/status").json()["state"] == "Running"


# ---- function keys, body limit, route prefix, shutdown hooks: other hosts on the same app -----------


def test_function_key_enforced_when_configured(sample: tuple[func.FunctionApp, ModuleType]) -> None:
    keyed = LocalHost(sample[0], SAMPLE / "host.json", function_key="xyz", run_timers=False)
    with run_in_thread(keyed.asgi) as url, httpx.Client(base_url=url) as c:
        missing = c.get("/secure")
        assert missing.status_code == 401
        assert missing.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401}
        assert c.get("/secure", headers={"x-functions-key": "wrong"}).status_code == 401
        assert c.get("/secure", headers={"x-functions-key": "xyz"}).text == "secret stuff for secured"
        assert c.get("/secure", params={"code": "xyz"}).status_code == 200
        assert c.get("/items/options").status_code == 200  # ANONYMOUS needs no key
        assert c.post("/admin/functions/tick", json={"input": ""}).status_code == 401


def test_function_key_from_environment(
    sample: tuple[func.FunctionApp, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALDEV_FUNCTION_KEY", "env-key")
    assert LocalHost(sample[0], SAMPLE / "host.json", run_timers=False).function_key == "env-key"
    monkeypatch.delenv("LOCALDEV_FUNCTION_KEY")
    assert LocalHost(sample[0], SAMPLE / "host.json", run_timers=False).function_key is None


def test_body_limit_is_413(sample: tuple[func.FunctionApp, ModuleType]) -> None:
    small = LocalHost(sample[0], SAMPLE / "host.json", max_body_bytes=10, run_timers=False)
    with run_in_thread(small.asgi) as url, httpx.Client(base_url=url) as c:
        assert c.post("/size", content=b"x" * 10).text == "10"
        too_big = c.post("/size", content=b"x" * 11)
        assert too_big.status_code == 413
        assert too_big.json()["title"] == "Content Too Large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            yield b"x" * 6
            yield b"x" * 6

        assert c.post("/size", content=chunks()).status_code == 413


def test_default_route_prefix_is_api(sample: tuple[func.FunctionApp, ModuleType], tmp_path: Path) -> None:
    assert read_route_prefix(None) == "api"
    assert read_route_prefix(tmp_path / "missing.json") == "api"
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    assert read_route_prefix(tmp_path / "host.json") == "api"
    (tmp_path / "host.json").write_text('{"extensions": {"http": {"routePrefix": "/v2/"}}}')
    assert read_route_prefix(tmp_path / "host.json") == "v2"
    assert read_route_prefix(SAMPLE / "host.json") == ""

    prefixed = LocalHost(sample[0], tmp_path / "missing.json", run_timers=False)
    assert "api/items/options" in [f.route for f in prefixed.http_functions()]
    with run_in_thread(prefixed.asgi) as url, httpx.Client(base_url=url) as c:
        assert c.get("/api/items/options").json() == {"handler": "options"}
        assert c.get("/items/options").status_code == 404


def test_shutdown_hooks_run_and_timers_stop(sample: tuple[func.FunctionApp, ModuleType]) -> None:
    calls: list[str] = []

    async def close_clients() -> None:
        await asyncio.sleep(0)
        calls.append("closed")

    async def broken() -> None:
        raise RuntimeError("hook failure is logged, not fatal")

    hooked = LocalHost(sample[0], SAMPLE / "host.json", on_shutdown=[broken, close_clients])
    with run_in_thread(hooked.asgi):
        assert calls == []
        assert hooked._tasks  # the timer loop runs
    assert calls == ["closed"]
    assert hooked._tasks == []


# ---- timers --------------------------------------------------------------------------------------


def test_timer_listing_expands_the_setting(host: LocalHost) -> None:
    [timer] = host.timer_functions()
    assert timer.name == "tick"
    assert timer.raw_schedule == "%SCHEDULE_SETTING%"
    assert timer.schedule == "*/1 * * * * *"
    assert timer.arg_name == "timer"
    assert timer.run_on_startup is False


def test_timer_fires_on_schedule(sample: tuple[func.FunctionApp, ModuleType], base_url: str) -> None:
    module = sample[1]
    module.TIMER_EVENT.clear()
    assert module.TIMER_EVENT.wait(3.0), "the one-second timer did not fire within 3 s"
    assert module.TIMER_CALLS[-1]["past_due"] is False


async def test_trigger_timer_runs_it_now(
    sample: tuple[func.FunctionApp, ModuleType], host: LocalHost, base_url: str
) -> None:
    module = sample[1]
    before = len(module.TIMER_CALLS)
    await host.trigger_timer("tick")
    assert len(module.TIMER_CALLS) > before
    with pytest.raises(KeyError, match="no timer function named 'nope'"):
        await host.trigger_timer("nope")


def test_admin_endpoint_runs_a_timer(sample: tuple[func.FunctionApp, ModuleType], client: httpx.Client) -> None:
    module = sample[1]
    module.TIMER_EVENT.clear()
    assert client.post("/admin/functions/tick", json={"input": ""}).status_code == 202
    assert module.TIMER_EVENT.wait(3.0)


async def test_trigger_timer_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEDULE, "0 0 0 1 Jan *")
    app, module = load_sample("localdev_sample_app_unstarted")
    try:
        idle = LocalHost(app, SAMPLE / "host.json")
        await idle.trigger_timer("tick", past_due=True)
        [call] = module.TIMER_CALLS
        assert call["past_due"] is True
    finally:
        sys.modules.pop("localdev_sample_app_unstarted", None)


def test_missing_schedule_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCHEDULE, raising=False)
    app, _ = load_sample("localdev_sample_app_missing_setting")
    try:
        with pytest.raises(HostConfigError, match=r"'SCHEDULE_SETTING'.*is not set") as caught:
            LocalHost(app, SAMPLE / "host.json")
        assert "tick" in str(caught.value)
    finally:
        sys.modules.pop("localdev_sample_app_missing_setting", None)


def test_bad_schedule_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEDULE, "* * *")
    app, _ = load_sample("localdev_sample_app_bad_schedule")
    try:
        with pytest.raises(HostConfigError, match=r"timer function 'tick'.*expected 6 fields"):
            LocalHost(app, SAMPLE / "host.json")
    finally:
        sys.modules.pop("localdev_sample_app_bad_schedule", None)


# ---- loading ---------------------------------------------------------------------------------------


def test_indexing_survives_a_previous_get_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCHEDULE, "0 0 * * * *")
    app, _ = load_sample("localdev_sample_app_reindexed")
    try:
        names = {f.get_function_name() for f in app.get_functions()}  # someone else indexed it first
        first = LocalHost(app, SAMPLE / "host.json", run_timers=False)
        second = LocalHost(app, SAMPLE / "host.json", run_timers=False)
        assert {f.name for f in first.http_functions()} | {"tick"} == names
        assert first.http_functions() == second.http_functions()
    finally:
        sys.modules.pop("localdev_sample_app_reindexed", None)


def test_load_function_app_by_module_name(tmp_path: Path) -> None:
    (tmp_path / "ld_tmp_app_by_name.py").write_text(
        textwrap.dedent("""
        import azure.functions as func
        other = 1
        my_app = func.FunctionApp()
    """)
    )
    try:
        app = load_function_app("ld_tmp_app_by_name", tmp_path)
        assert app is sys.modules["ld_tmp_app_by_name"].my_app
    finally:
        sys.modules.pop("ld_tmp_app_by_name", None)
        sys.path.remove(str(tmp_path.resolve()))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("@app.route(route='r')\ndef f(request): pass\n", r"parameters are declared in Python.*\['request'\]"),
        ("@app.route(route='r')\ndef f(): pass\n", r"bindings have no Python parameter: \['req'\]"),
    ],
)
def test_parameters_must_match_bindings(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "mismatch.py").write_text("import azure.functions as func\napp = func.FunctionApp()\n" + source)
    app = load_function_app_file(tmp_path / "mismatch.py")
    with pytest.raises(HostConfigError, match=message):
        LocalHost(app)


def test_load_function_app_without_an_app(tmp_path: Path) -> None:
    (tmp_path / "empty_app.py").write_text("x = 1\n")
    with pytest.raises(HostConfigError, match=r"defines no azure\.functions\.FunctionApp"):
        load_function_app_file(tmp_path / "empty_app.py")


def test_build_local_host_reads_local_settings_before_import(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {"LD_TMP_SCHED": "0 */5 * * * *", "LD_TMP_AT_IMPORT": "seen"},
            }
        )
    )
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    (tmp_path / "ld_tmp_build_app.py").write_text(
        textwrap.dedent("""
        import os
        import azure.functions as func
        AT_IMPORT = os.environ["LD_TMP_AT_IMPORT"]
        app = func.FunctionApp()

        @app.timer_trigger(arg_name="t", schedule="%LD_TMP_SCHED%")
        def every_five(t): pass
    """)
    )
    try:
        local = build_local_host(tmp_path, module="ld_tmp_build_app")
        assert sys.modules["ld_tmp_build_app"].AT_IMPORT == "seen"
        assert [t.schedule for t in local.timer_functions()] == ["0 */5 * * * *"]
        assert local.route_prefix == "api"
    finally:
        for name in ("LD_TMP_SCHED", "LD_TMP_AT_IMPORT"):
            os.environ.pop(name, None)
        sys.modules.pop("ld_tmp_build_app", None)
        sys.path.remove(str(tmp_path.resolve()))


# ---- route templates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("a/{b}", "a/x", {"b": "x"}),
        ("a/{b}", "A/x", {"b": "x"}),
        ("a/{b}", "a", None),
        ("a/{b}", "a/x/y", None),
        ("a/{id:int}", "a/12", {"id": "12"}),
        ("a/{id:int}", "a/x", None),
        ("a/{name:alpha}", "a/abc", {"name": "abc"}),
        ("a/{name:alpha}", "a/ab1", None),
        ("a/{v:unknown}", "a/anything", {"v": "anything"}),  # unknown constraints are ignored
        ("a/{v:length(3)}", "a/abc", {"v": "abc"}),
        ("a/{v:length(3)}", "a/anything", None),
        ("a/{v:length(2,4)}", "a/abcd", {"v": "abcd"}),
        ("a/{v:minlength(2)}", "a/x", None),
        ("a/{v:maxlength(2)}", "a/xy", {"v": "xy"}),
        ("{ignored:maxlength(0)?}", "", {}),  # the site's root, as the Functions host routes it
        ("{ignored:maxlength(0)?}", "x", None),
        ("a/{b?}", "a", {}),
        ("a/{b=dflt}", "a", {"b": "dflt"}),
        ("a/{*rest}", "a", {}),
        ("a/{*rest}", "a/x/y/z", {"rest": "x/y/z"}),
        ("files/{name}.{ext}", "files/report.PDF", {"name": "report", "ext": "PDF"}),
    ],
)
def test_route_template_matching(template: str, path: str, expected: dict[str, str] | None) -> None:
    parts = [p for p in path.split("/") if p]
    assert RouteTemplate(template).match(parts) == expected


def test_route_precedence_orders_literals_first() -> None:
    ordered = sorted(
        ["a/{b}/{c}", "a/{*rest}", "a/{b}/name/{n}", "a/options", "a/{id:int}", "a/{b}"],
        key=lambda t: RouteTemplate(t).precedence,
    )
    assert ordered.index("a/options") < ordered.index("a/{id:int}") < ordered.index("a/{b}")
    assert ordered.index("a/{b}/name/{n}") < ordered.index("a/{b}/{c}") < ordered.index("a/{*rest}")


def test_bad_templates_are_rejected() -> None:
    with pytest.raises(HostConfigError, match="catch-all"):
        RouteTemplate("a/{*rest}/b")
    with pytest.raises(HostConfigError, match="invalid parameter"):
        RouteTemplate("a/{}")
    with pytest.raises(HostConfigError, match="invalid constraint"):
        RouteTemplate("a/{v:maxlength(x)}")


@pytest.mark.parametrize("template", ["", "/"])
def test_an_empty_route_is_refused_as_the_functions_host_never_runs_it(template: str) -> None:
    """The Functions host answers a request to the site's root itself, whatever function has an empty route
    (azure-functions-host #4638): a local host that ran it hid that the console's root redirect never ran in Azure
    (review S)."""
    with pytest.raises(HostConfigError, match="maxlength"):
        RouteTemplate(template)


# ---- as a process (what `python -m localdev host` runs) -------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_main_serves_in_a_subprocess_and_dies_on_sigkill(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": {SCHEDULE: "0 0 0 1 Jan *"}}))
    for name in ("function_app.py", "host.json"):
        (tmp_path / name).write_text((SAMPLE / name).read_text())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != SCHEDULE}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from localdev.host import main; sys.exit(main(sys.argv[1:]))",
            "--port",
            str(port),
            "--app-dir",
            str(tmp_path),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 8
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/items/options", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "the host did not start"
                time.sleep(0.05)
        assert response.json() == {"handler": "options"}
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(5)
        if process.stdout:
            process.stdout.close()
