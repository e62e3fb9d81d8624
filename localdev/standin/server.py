"""The stand-in server: HTTP/1.1 keep-alive over TLS on 127.0.0.1, one thread per connection.

Each request is dispatched through the :class:`~localdev.standin.routing.Router` built by :func:`build_router`
(admin API, Key Vault, OAuth, Entra ID, Graph, webhook receivers); no route is 404, a path known under other
methods is 405, a body over ``routing.MAX_BODY`` is 413, a handler bug is 500 (JSON ``{"error": {"code",
"message"}}``).

Requests outside ``/_admin/`` also go through the failure injection set with the admin API: the first fault
rule that fires (``State.take_fault``) is applied before the handler runs. Its ``delay_ms`` is slept first;
then ``respond`` and ``rate_limit`` answer with the rule's status, headers and body instead of the handler,
``drop`` closes the connection without handling the request, ``delay`` only delays it, ``drop_after`` lets the
handler run (its effects stay) and then closes the connection without the answer, and ``respond_after`` lets the
handler run and answers with the rule's status, headers and body instead of the handler's answer. The global
latency (``PUT /_admin/latency``) is added to each such request that a ``drop`` rule did not close. A client
that goes away mid-body gets nothing done.

Each non-admin request is appended to the request log (method, path, query, status, duration, selected
headers, the fault applied and what the handler noted, never a secret) before its answer is written, and
the server counts TLS handshakes and the connections whose first request was not an admin call
(``GET /_admin/stats``). :class:`StandIn` starts and stops it and knows its URL, CA file and admin client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from localdev.standin import admin_api, apis, entra, federation, graph, keys, keyvault, oauth, webhooks
from localdev.standin.admin import AdminClient
from localdev.standin.context import Context
from localdev.standin.pki import server_pki
from localdev.standin.routing import (
    BodyTooLarge,
    HttpError,
    IncompleteBody,
    Request,
    Response,
    Router,
    json_response,
)
from localdev.standin.state import FaultRule, State
from localdev.standin.tokens import Signer

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
LOGGED_HEADERS = ("user-agent", "content-type", "content-length", "client-request-id", "x-ms-client-request-id")


def _is_admin(path: str) -> bool:
    return path == "/_admin" or path.startswith("/_admin/")


def _fault_response(rule: FaultRule) -> Response:
    headers = dict(rule.headers)
    if rule.body is None:
        body = b""
    elif isinstance(rule.body, str):
        body = rule.body.encode()
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    else:
        body = json.dumps(rule.body).encode()
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
    return Response(rule.status, body, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, ctx: Context, router: Router, tls: ssl.SSLContext, verbose: bool) -> None:
        self.ctx = ctx
        self.router = router
        self.tls = tls
        self.verbose = verbose
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # The handshake happens in the connection's own thread (Handler.setup), never in the accept loop.
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # the raw socket: wakes a thread blocked in read
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | ValueError):  # handshakes refused, resets, timeouts, closed files
            return
        if self.verbose or not isinstance(exc, Exception):
            super().handle_error(request, client_address)
        else:
            sys.stderr.write(f"stand-in: {type(exc).__name__} while serving a connection\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server_version = "StandIn/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        conn = self.request
        conn.settimeout(HANDSHAKE_TIMEOUT)
        conn.do_handshake()
        state = self.server.ctx.state
        with state.lock:
            state.handshakes += 1
        self._first_request = True
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"stand-in {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    # --- one request -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        ctx = self.server.ctx
        state = ctx.state
        started = time.monotonic()
        req = Request(ctx, self.command, self.path, dict(self.headers.items()), self.rfile)
        admin = _is_admin(req.path)
        if self._first_request:
            self._first_request = False
            if not admin:
                with state.lock:
                    state.connections_opened += 1
        fault: FaultRule | None = None
        try:
            response: Response | None = None
            if not admin:
                with state.lock:
                    latency = state.latency_ms
                fault = state.take_fault(req.method, req.path)
                if fault is not None:
                    if fault.delay_ms:
                        time.sleep(fault.delay_ms / 1000)
                    if fault.action == "drop":
                        self._log(req, None, started, fault)
                        self._drop()
                        return
                    if fault.action in ("respond", "rate_limit"):
                        response = _fault_response(fault)
                if latency:
                    time.sleep(latency / 1000)
            if response is None:
                response = self._route(req)
            if fault is not None and fault.action == "respond_after":  # applied, then answered as the rule says
                response = _fault_response(fault)
            if fault is not None and fault.action == "drop_after":  # applied, but its answer is lost
                self._log(req, None, started, fault)
                self._drop()
                return
        except HttpError as exc:
            response = exc.response
        except IncompleteBody:  # the client is gone: act on nothing, answer nothing
            self._log(req, None, started, fault)
            self._drop()
            return
        except BodyTooLarge:
            response = json_response(413, {"error": {"code": "RequestTooLarge", "message": "request body too large"}})
            self.close_connection = True
        except Exception as exc:
            if self.server.verbose:
                traceback.print_exc()
            else:
                sys.stderr.write(f"stand-in: {type(exc).__name__} in {req.method} {req.path}\n")
            response = json_response(500, {"error": {"code": "InternalError", "message": type(exc).__name__}})
        if not req.body_read:  # read and discard an unread body so the connection stays usable
            try:
                _ = req.body
            except (BodyTooLarge, IncompleteBody, ValueError):
                self.close_connection = True
        if not admin:  # logged before the answer goes out, so a client that reads the log next finds it
            self._log(req, response.status, started, fault)
        self._write(req, response)

    def _route(self, req: Request) -> Response:
        found = self.server.router.resolve(req.method, req.path)
        if found is None:
            if self.server.router.path_known(req.path):
                return json_response(
                    405, {"error": {"code": "MethodNotAllowed", "message": f"{req.method} {req.path}"}}
                )
            return json_response(
                404, {"error": {"code": "NotFound", "message": f"no route for {req.method} {req.path}"}}
            )
        handler, req.params = found
        return handler(req)

    def _write(self, req: Request, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if req.method == "HEAD" or not response.body:
            self.end_headers()
        else:  # the headers, their blank line and the body in one write (one TLS record), not two
            self._headers_buffer.extend((b"\r\n", response.body))  # type: ignore[attr-defined]  # http.server's
            self.flush_headers()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.request, socket.SHUT_RDWR)

    def _log(self, req: Request, status: int | None, started: float, fault: FaultRule | None) -> None:
        headers = {name: req.headers[name] for name in LOGGED_HEADERS if name in req.headers}
        auth = req.header("authorization")
        if auth:
            headers["authorization"] = auth.split(" ", 1)[0] + " ..."  # the scheme only
        entry: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "status": status,
            "durationMs": round((time.monotonic() - started) * 1000, 1),
            "headers": headers,
            "fault": None if fault is None else {"action": fault.action, "status": fault.status},
        }
        entry.update(req.note)
        self.server.ctx.state.log(entry)


def build_router(ctx: Context) -> Router:
    """The dispatch table: admin, APIs, Key Vault, OAuth (before Entra), Entra, Graph, webhook receivers; a new service
    adds its rows here."""
    router = Router()
    admin_api.register(router, ctx)
    apis.register(router, ctx)
    keyvault.register(router, ctx)
    oauth.register(router, ctx)  # before entra: it answers /organizations/ token requests
    entra.register(router, ctx)
    graph.register(router, ctx)
    federation.register(router, ctx)
    keys.register(router, ctx)
    webhooks.register(router, ctx)
    return router


class StandIn:
    """Entra ID + Microsoft Graph + Key Vault stand-in over TLS on 127.0.0.1, serving in a daemon thread.

    ``ca_dir``: where the CA (reused across restarts) and the server certificate live; a temporary folder
    (removed on stop) when None.
    """

    def __init__(self, port: int = 0, ca_dir: Path | None = None, *, verbose: bool = False) -> None:
        self.requested_port = port
        self.ca_dir = None if ca_dir is None else Path(ca_dir)
        self.verbose = verbose
        self.state = State()
        self.ctx = Context(self.state, Signer())
        self.router = build_router(self.ctx)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._temp_dir: Path | None = None
        self._ca_path: Path | None = None
        self._admin: AdminClient | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> StandIn:
        if self._server is not None:
            return self
        directory = self.ca_dir
        if directory is None:
            directory = self._temp_dir = Path(tempfile.mkdtemp(prefix="standin-"))
        pki = server_pki(directory)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(pki.cert_path, pki.key_path)
        tls.set_alpn_protocols(["http/1.1"])
        server = _Server(self.requested_port, self.ctx, self.router, tls, self.verbose)
        self.port = int(server.server_address[1])
        self.ctx.url = f"https://127.0.0.1:{self.port}"
        self._ca_path = pki.ca_path
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"standin-{self.port}", daemon=True
        )
        self._thread.start()
        self._admin = AdminClient(self.url, pki.ca_path)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._admin is not None:
            self._admin.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def serve_forever(self) -> None:
        """Block until interrupted (for the command line)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- where it is -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.ctx.url:
            raise RuntimeError("the stand-in is not started")
        return self.ctx.url

    @property
    def ca_path(self) -> Path:
        if self._ca_path is None:
            raise RuntimeError("the stand-in is not started")
        return self._ca_path

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            raise RuntimeError("the stand-in is not started")
        return self._admin
