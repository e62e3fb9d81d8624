"""Running the local host: under uvicorn in the foreground or in a background thread, and its command line.

* :func:`build_local_host` loads the app directory's local.settings.json (the environment wins), imports its
  function app and builds a :class:`~localdev.host.asgi.LocalHost` with its host.json.
* :func:`serve` serves that with uvicorn until interrupted (what ``python -m localdev host`` and ``up`` run).
* :func:`run_in_thread` serves any ASGI app in a daemon thread on a free (or given) port and yields its URL;
  tests and benchmarks use it. Both run the ASGI lifespan, so timers start and ``on_shutdown`` hooks are
  awaited when the server stops.
* :func:`main` is ``python -m localdev host``; ``--on-shutdown module:function`` adds shutdown hooks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import FrameType

from localdev.host.asgi import FUNCTION_KEY_ENV, ASGIApp, LocalHost, ShutdownHook
from localdev.host.loading import load_function_app
from localdev.local_settings import load_local_settings, read_local_settings

__all__ = ["build_local_host", "main", "run_in_thread", "serve"]

logger = logging.getLogger("localdev.host")  # one logger for the whole host, as before it was a package

# The request line and headers uvicorn (h11) reads before it gives up with a bare 400 of its own (16 KiB by
# default): room for the longest query the OpenAPI document allows (the OAuth callback's code, error and
# error_description at their maximum lengths, in multi-byte UTF-8, percent-encoded), so the app answers it.
MAX_REQUEST_HEAD_BYTES = 256 * 1024
# How long an idle keep-alive connection stays open: longer than clients keep an idle one in their pools (httpx:
# 5 s, uvicorn's own default too), so a client never sends on a connection the server is closing at that very
# moment ("Server disconnected without sending a response", seen once in CI).
KEEP_ALIVE_SECONDS = 30


def build_local_host(
    app_dir: Path | None = None,
    *,
    module: str = "function_app",
    function_key: str | None = None,
    on_shutdown: Iterable[ShutdownHook] = (),
    load_settings: bool = True,
    run_timers: bool = True,
) -> LocalHost:
    """Load ``app_dir``'s local.settings.json (environment wins), import its function app, build the host
    (``run_timers=False``: timer functions run only when triggered through ``/admin/functions``)."""
    directory = (app_dir or Path.cwd()).resolve()
    if load_settings:
        load_local_settings(directory / "local.settings.json")
    app = load_function_app(module, directory)
    return LocalHost(app, directory / "host.json", function_key=function_key, on_shutdown=on_shutdown,
                     run_timers=run_timers)


def serve(
    port: int = 7071,
    host: str = "127.0.0.1",
    app_dir: Path | None = None,
    *,
    module: str = "function_app",
    log_level: str = "info",
    function_key: str | None = None,
    on_shutdown: Iterable[ShutdownHook] = (),
    routes_level: int = logging.INFO,
    run_timers: bool = True,
) -> None:
    """Serve ``app_dir``'s function app with uvicorn until interrupted; the routes are logged at ``routes_level``
    (``localdev up`` prints its own instructions, which the list would push off the screen)."""
    import uvicorn

    local = build_local_host(app_dir, module=module, function_key=function_key, on_shutdown=on_shutdown,
                             run_timers=run_timers)
    display_host = f"[{host}]" if ":" in host else host
    for line in local.describe(f"http://{display_host}:{port}"):
        logger.log(routes_level, "%s", line)
    config = uvicorn.Config(
        local.asgi,
        host=host,
        port=port,
        lifespan="on",
        interface="asgi3",
        log_level=log_level,
        reload=False,
        access_log=False,  # the host logs each request without its query string instead
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # A second Ctrl+C does not force the exit (uvicorn's default): that skipped the lifespan's shutdown
            # (the clients left open) and printed a traceback. The graceful shutdown is bounded (10 s) anyway.
            if not self.should_exit:
                super().handle_exit(sig, frame)

    Server(config).run()


@contextlib.contextmanager
def run_in_thread(
    asgi_app: ASGIApp,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve ``asgi_app`` with uvicorn in a background thread; yields ``http://127.0.0.1:PORT``.

    ``port=0`` picks a free port. Waits until the server (and its lifespan startup) is up and stops it
    cleanly on exit, running the lifespan shutdown.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            asgi_app,
            host=host,
            port=bound_port,
            lifespan="on",
            interface="asgi3",
            log_level=log_level,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
        server = uvicorn.Server(config)

        def run() -> None:
            with contextlib.suppress(SystemExit):  # uvicorn exits this way when the lifespan startup fails
                server.run(sockets=[sock])

        thread = threading.Thread(target=run, name=f"localdev-host:{bound_port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the local host stopped during startup (see the log for the cause)")
            if time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                raise RuntimeError(f"the local host did not start within {startup_timeout} s")
            time.sleep(0.005)
        display_host = f"[{host}]" if ":" in host else host
        try:
            yield f"http://{display_host}:{bound_port}"
        finally:
            server.should_exit = True
            thread.join(15)
            if thread.is_alive():
                logger.warning("The local host on port %d did not stop within 15 s", bound_port)
    finally:
        sock.close()


def _import_hook(spec: str) -> ShutdownHook:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise argparse.ArgumentTypeError(f"--on-shutdown wants module:function, got {spec!r}")
    hook = getattr(importlib.import_module(module_name), attribute)
    if not callable(hook):
        raise argparse.ArgumentTypeError(f"{spec} is not callable")
    return hook  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None, *, on_shutdown: Iterable[ShutdownHook] = ()) -> int:
    """``python -m localdev host [--port 7071] [--host 127.0.0.1] [--app-dir .] [--no-timers]``."""
    parser = argparse.ArgumentParser(prog="python -m localdev host", description="Serve the function app locally.")
    parser.add_argument("--port", type=int, default=None, help="port (default: Host.LocalHttpPort or 7071)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="function app directory (default: .)")
    parser.add_argument("--module", default="function_app", help="module defining the FunctionApp")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--function-key", default=None, help=f"require this key on non-anonymous functions (env {FUNCTION_KEY_ENV})"
    )
    parser.add_argument(
        "--on-shutdown",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="async function to await at shutdown (repeatable), e.g. to close Azure clients",
    )
    parser.add_argument("--no-timers", action="store_true",
                        help="run timer functions only when triggered through /admin/functions (tests)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_dir: Path = args.app_dir.resolve()
    settings_file = app_dir / "local.settings.json"
    port = args.port
    if port is None:
        local_port = read_local_settings(settings_file).host.get("LocalHttpPort")
        port = int(local_port) if local_port else 7071
    load_local_settings(settings_file)  # before the function app is imported
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))  # so --on-shutdown can name the app's own modules
    hooks = [*on_shutdown, *(_import_hook(spec) for spec in args.on_shutdown)]
    serve(
        port=port,
        host=args.host,
        app_dir=app_dir,
        module=args.module,
        log_level=args.log_level,
        function_key=args.function_key,
        on_shutdown=hooks,
        run_timers=not args.no_timers,
    )
    return 0
