"""``python -m localdev up`` (what ``scripts/start.sh`` runs) works out of the box, as a new user meets it:

* the commands it prints work as printed, with curl and the project's Python only (no ``jq``): a token, the
  demo connection's create, its rotation (``200``: the demo app holds ``Application.ReadWrite.OwnedBy`` and owns
  itself), a list, and a create again after the rotation (the printed create fetches a new secret each time);
* Ctrl+C (SIGINT) stops Azurite, the stand-in and the host: exit code 130, no traceback, no process left;
* ``--persist`` keeps the local data: a connection created before a restart is listed and validates after it
  (Azurite's tables and the stand-in's directory and vault survived).

Each test starts ``up`` as a process of its own on free loopback ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from localdev.api_token import ApiAccess, daemon_token
from localdev.azurite import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Azurite runs in a session of its own but is still a child of ``up``)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Up:
    """``python -m localdev up`` in a process of its own; its output is collected as it comes."""

    def __init__(self, state_dir: Path, *extra: str, background: bool = False) -> None:
        """``background``: started as a script's background job (``up &``), which inherits SIGINT ignored."""
        self.port = free_port()
        self.state_dir = state_dir
        self.base = f"http://localhost:{self.port}/api/v1/app-connections/azure-key-vault"
        env = {k: v for k, v in os.environ.items() if k not in ("SITE_URL", "AUTH_TENANT_ID", "AUTH_AUDIENCE")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localdev", "up", "--port", str(self.port), "--state-dir", str(state_dir), *extra],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_ready()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while "Application startup complete" not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"`up` did not start:\n{self.output[-4000:]}")
            time.sleep(0.1)

    def printed_commands(self) -> list[str]:
        """The shell lines ``up`` printed (indented by two spaces), continuation lines joined."""
        block = self.output.split("Ctrl+C stops", 1)[0]
        commands: list[str] = []
        for line in block.splitlines():
            if not line.startswith("  "):
                continue
            if commands and commands[-1].endswith("\\"):
                commands[-1] = commands[-1][:-1] + " " + line.strip()
            else:
                commands.append(line[2:])
        return commands

    def interrupt(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(10)
        return code

    def kill(self) -> None:
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait()

    def token(self) -> str:
        return daemon_token(ApiAccess.load(self.state_dir / "api-auth.json"))


def _bash(script: str) -> str:
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result.stdout


def test_the_printed_commands_create_rotate_and_create_again_and_ctrl_c_stops_everything(tmp_path):
    up = Up(tmp_path / "state")
    try:
        commands = up.printed_commands()
        named = {name: next(c for c in commands if c.startswith(prefix)) for name, prefix in {
            "token": "TOKEN=", "create": "curl -s -X POST " + up.base + " ", "id": "ID=",
            "rotate": "curl -s -X POST -H", "list": f"curl -s -H \"Authorization: Bearer $TOKEN\" {up.base}",
            "oauth-url": "URL=", "oauth": "curl -sL --cacert",
        }.items()}
        assert not any("jq" in command.split() for command in commands)
        assert not any(secret_like in up.output for secret_like in ("clientSecret", "8Q~"))  # no secret printed

        out = _bash("\n".join([named["token"], named["create"], "echo", named["id"], named["rotate"], "echo",
                               named["list"]]))
        created, rotated, listed = (json.loads(line) for line in out.strip().splitlines())
        connection = created["appConnection"]
        assert connection["name"] == "demo-key-vault"
        assert rotated["appConnection"]["id"] == connection["id"], rotated  # 200 with the connection, not a problem
        assert [c["id"] for c in listed["appConnections"]] == [connection["id"]]

        # The demo app is in the tenant of the host's managed identity: its connection moves to federated (an
        # application of another tenant is refused, AADSTS700236).
        moved = httpx.post(f"{up.base}/{connection['id']}/migrate-to-federated", json={},
                           headers={"Authorization": f"Bearer {up.token()}"}, timeout=120)
        assert moved.status_code == 200 and moved.json()["appConnection"]["method"] == "federated", moved.text

        # The same create command, after the rotation replaced the demo secret it was first given: it still works.
        again = named["create"].replace("--name demo-key-vault", "--name demo-after-rotation")
        second = json.loads(_bash(named["token"] + "\n" + again))
        assert second["appConnection"]["name"] == "demo-after-rotation", second

        # The OAuth commands, as printed: the stand-in signs the demo administrator in (no account picker to click).
        page = _bash("\n".join([named["token"], named["oauth-url"], named["oauth"]]))
        assert "Connection authorized" in page and "demo-oauth" in page, page[-2000:]

        # A second `up` on the same state folder refuses at once, and leaves the first one's files alone.
        before = {p.name: p.read_bytes() for p in up.state_dir.iterdir() if p.is_file()}
        second = subprocess.run([sys.executable, "-m", "localdev", "up", "--port", str(free_port()), "--state-dir",
                                 str(up.state_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "another `localdev up` is running" in second.stderr, second.stderr
        assert {p.name: p.read_bytes() for p in up.state_dir.iterdir() if p.is_file()} == before
        taken = subprocess.run([sys.executable, "-m", "localdev", "up", "--port", str(up.port), "--state-dir",
                                str(up.state_dir.parent / "other")], cwd=ROOT, capture_output=True, text=True,
                               timeout=60)
        assert taken.returncode == 2 and f"port {up.port} is in use" in taken.stderr, taken.stderr
        after = up.output.split("Ctrl+C stops", 1)[1]  # the instructions stay on the screen: no list of routes after
        assert "[GET]" not in after and "timerTrigger" not in after, after[:2000]

        children = _descendants(up.process.pid)
        assert children, "Azurite runs as a child of `up`"
    except BaseException:
        up.kill()
        raise
    code = up.interrupt()
    assert code == 130 and "stopped" in up.output, up.output[-4000:]
    assert "Traceback" not in up.output, up.output[-4000:]
    assert not [pid for pid in children if _alive(pid)], "a process of `up` outlived Ctrl+C"


def test_ctrl_c_while_starting_stops_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "localdev", "up", "--port", str(free_port()), "--state-dir",
                                str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _descendants(process.pid) and time.monotonic() < deadline:  # Azurite started: mid-start
            time.sleep(0.05)
        children = _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130 and "stopped" in output, output
    assert "Traceback" not in output, output
    assert not [pid for pid in children if _alive(pid)]


def test_persist_keeps_connections_and_the_standins_directory_and_vault_across_a_restart(tmp_path):
    state = tmp_path / "state"
    first = Up(state, "--persist")
    try:
        headers = {"Authorization": f"Bearer {first.token()}"}
        body = json.loads(Path(re.search(r"A create body with a new secret of it: (\S+)", first.output)[1]).read_text())
        body["name"] = "kept"
        created = httpx.post(first.base, json=body, headers=headers, timeout=60)
        assert created.status_code == 201, created.text
        connection_id = created.json()["appConnection"]["id"]
        demo_client = json.loads((state / "demo-app.json").read_text())["client_id"]
    except BaseException:
        first.kill()
        raise
    assert first.interrupt() == 130, first.output[-4000:]
    assert (state / "standin-state.json").stat().st_mode & 0o077 == 0  # it holds secrets: owner only
    # A run in memory between the two (review A, session 17: it overwrote demo-app.json, and the next persisted
    # run registered another demo app than its connections used).
    in_memory = Up(state, background=True)  # SIGINT ignored as it starts: `kill -INT` stops it all the same
    assert json.loads((state / "demo-app.json").read_text())["client_id"] != demo_client
    assert in_memory.interrupt() == 130 and "stopped" in in_memory.output

    second = Up(state, "--persist")
    try:
        headers = {"Authorization": f"Bearer {second.token()}"}
        listed = httpx.get(second.base, headers=headers, timeout=60)
        assert [c["id"] for c in listed.json()["appConnections"]] == [connection_id], listed.text
        # Its secret is read from the stand-in's vault and checked against the demo app's passwords: both kept.
        validated = httpx.post(f"{second.base}/{connection_id}/validate", headers=headers, timeout=60)
        assert validated.status_code == 200, validated.text
        assert json.loads((state / "demo-app.json").read_text())["client_id"] == demo_client  # the same demo app
    finally:
        assert second.interrupt() == 130


@pytest.mark.parametrize("apart", [0.02, 0.2, 0.5])
def test_ctrl_c_pressed_twice_stops_everything_quietly(tmp_path, apart):
    """(Review A, session 17.) A second Ctrl+C forced uvicorn's exit (a traceback, the shutdown hooks skipped),
    or broke off the environment's stop before Azurite, which kept running on its port."""
    up = Up(tmp_path / "state")
    children = _descendants(up.process.pid)
    up.process.send_signal(signal.SIGINT)
    time.sleep(apart)
    with contextlib.suppress(ProcessLookupError):
        up.process.send_signal(signal.SIGINT)
    try:
        code = up.process.wait(60)
    finally:
        if up.process.poll() is None:
            up.kill()
    up._reader.join(10)
    assert code == 130, up.output[-4000:]
    assert "Traceback" not in up.output and "stopped" in up.output, up.output[-4000:]
    assert not [pid for pid in children if _alive(pid)], "a process of `up` outlived Ctrl+C"


def test_without_persist_no_data_is_written_to_disk(tmp_path):
    state = tmp_path / "state"
    first = Up(state)
    try:
        headers = {"Authorization": f"Bearer {first.token()}"}
        body = json.loads((state / "demo-connection.json").read_text())
        assert httpx.post(first.base, json=body, headers=headers, timeout=60).status_code == 201
    finally:
        first.interrupt()
    assert not (state / "standin-state.json").exists()
    assert not (state / "azurite").exists()


def test_a_port_the_stopped_host_left_only_closing_connections_on_is_free_to_start_again(tmp_path: Path) -> None:
    """(Review of a newcomer's run.) Straight after Ctrl+C, a connection the host closed (a browser's) stays on its
    port for up to a minute (TIME_WAIT); the host binds it again at once (uvicorn sets SO_REUSEADDR), but the check
    before starting did not, and `start.sh --persist` said the port was in use. A listener still holds it."""
    import socket

    from localdev.__main__ import _LOCKS, _busy

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    served.close()  # the server closes first, as the host at shutdown: its side waits in TIME_WAIT
    client.recv(1)
    client.close()
    for folder in ("running", "stopped"):
        (tmp_path / folder).mkdir()
    try:
        assert _busy(port, tmp_path / "running") is not None  # the listener is still there: taken
    finally:
        listener.close()
    try:
        assert _busy(port, tmp_path / "stopped") is None
    finally:
        while _LOCKS:
            _LOCKS.pop().close()
