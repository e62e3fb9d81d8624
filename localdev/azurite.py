"""Start Azurite's table service (installed from npm with the project's lock file) on a loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from shared.settings import AZURITE_ACCOUNT, AZURITE_KEY

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with code {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def azurite_binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite-table"
    if local.exists():
        return str(local)
    found = shutil.which("azurite-table")
    if found:
        return found
    raise FileNotFoundError("azurite-table is not installed: run `npm ci` in the project folder")


class Azurite:
    """Azurite's table service in memory, on a free loopback port; stopped on exit.

    With ``location``, Azurite keeps its tables in that folder instead (``__azurite_db_table__.json``, loaded at
    start and saved every few seconds while it changes): a database written there beforehand is served.
    """

    def __init__(self, port: int = 0, *, location: Path | None = None) -> None:
        self.port = port or free_port()
        self.location = location
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"TableEndpoint={self.endpoint};"
        )

    def start(self) -> Azurite:
        command = [
            azurite_binary(),
            "--tableHost", "127.0.0.1",
            "--tablePort", str(self.port),
            *(["--location", str(self.location)] if self.location is not None else ["--inMemoryPersistence"]),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ}, start_new_session=True
        )
        try:
            wait_for_port(self.port, process=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGINT is Azurite's graceful stop: it closes the server and saves its database (with ``location``)
            # first; SIGTERM would end it at once, losing what it changed since its last autosave (5 s).
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
