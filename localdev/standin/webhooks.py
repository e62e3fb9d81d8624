"""Webhook receivers: where the service's notifications (``NOTIFY_WEBHOOK_URL``) can point in tests.

``POST /webhooks/{name}`` (any name without ``/``; ``{standin.url}/webhooks/{name}``) records the delivery and
answers ``202`` ``{"accepted": true}``. It does not check the signature: a test recomputes it with the secret it
configured (the service's: HMAC-SHA256 of ``{timestamp}.{body}``) and compares it with ``headers.signature``
(``sha256=<hex>``). The body is
kept as received, decoded as UTF-8 (bytes that are not UTF-8 become U+FFFD, so such a body cannot be re-signed).

A delivery, as the admin interface shows it: ``name``, ``headers`` (``signature`` from
``X-AppConnections-Signature``, ``timestamp`` from ``X-AppConnections-Timestamp``, ``idempotencyKey`` from
``Idempotency-Key``, ``contentType``; None when absent), ``body`` (the raw text), ``json`` (the parsed body, None
when it is not JSON), ``receivedAt`` (ISO 8601 UTC, milliseconds) and ``status`` (what the receiver answered).

Failures, two ways:

* per receiver, ``PUT /_admin/webhooks/{name}/failures`` ``{"status": N, "times": K}``: its next ``K`` deliveries
  are answered ``N`` (``{"error": {"code": "WebhookFailure", ...}}``; a 2xx one ``{"accepted": true}``) and are
  still recorded, with that ``status``, so a test sees each attempt and its ``Idempotency-Key``; ``times: 0``
  cancels;
* the fault rules (``PUT /_admin/faults``, e.g. ``{"method": "POST", "path": "^/webhooks/hook$", "status":
  503, "times": 2}``, or ``"action": "drop"`` / ``"delay"``) apply to these paths as to any other. A request
  they answer or drop never reaches the receiver, so it is not a delivery (it is in the request log, and in the
  rule's ``hits``); ``drop_after`` records the delivery and then drops the connection without the answer.

Admin routes (registered here, with ``admin_api``'s conventions): ``GET /_admin/webhooks/deliveries``
(``?name=`` for one receiver) -> ``{"deliveries": [...]}`` oldest first; ``DELETE /_admin/webhooks/deliveries``
-> ``{"cleared": n}``; ``PUT /_admin/webhooks/{name}/failures``. The state lives in ``state.extra["webhooks"]``,
so ``POST /_admin/reset`` clears deliveries and pending failures.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from localdev.standin.admin_api import _body, _guard
from localdev.standin.context import Context
from localdev.standin.routing import Request, Response, Router, json_response
from localdev.standin.state import State, StateError

DELIVERY_LIMIT = 10_000
NAME = r"(?P<name>[^/]+)"
HEADERS = {
    "signature": "x-appconnections-signature",
    "timestamp": "x-appconnections-timestamp",
    "idempotencyKey": "idempotency-key",
    "contentType": "content-type",
}


@dataclass
class Webhooks:
    """Kept in ``state.extra["webhooks"]`` (so ``reset`` clears it), under ``state.lock``."""

    deliveries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=DELIVERY_LIMIT))
    failures: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (status, deliveries left)


def _webhooks(state: State) -> Webhooks:
    with state.lock:
        found = state.extra.get("webhooks")
        if not isinstance(found, Webhooks):
            found = state.extra["webhooks"] = Webhooks()
        return found


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def deliveries(state: State, name: str | None = None) -> list[dict[str, Any]]:
    """Deliveries received, oldest first (copies), all or one receiver's."""
    with state.lock:
        return [copy.deepcopy(d) for d in _webhooks(state).deliveries if name is None or d["name"] == name]


def receive(req: Request) -> Response:
    name = req.params["name"]
    raw = req.body
    text = raw.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = None
    delivery: dict[str, Any] = {
        "name": name,
        "headers": {key: req.headers.get(header) for key, header in HEADERS.items()},
        "body": text,
        "json": parsed,
        "receivedAt": _now(),
    }
    state = req.ctx.state
    with state.lock:
        hooks = _webhooks(state)
        status, left = hooks.failures.get(name, (202, 0))
        if left > 0:
            if left == 1:
                del hooks.failures[name]
            else:
                hooks.failures[name] = (status, left - 1)
        else:
            status = 202
        delivery["status"] = status
        hooks.deliveries.append(delivery)
    req.note["webhook"] = name
    if status < 300:
        return json_response(status, {"accepted": True})
    req.note["error"] = "WebhookFailure"
    message = f"configured failure of the webhook receiver {name!r}"
    return json_response(status, {"error": {"code": "WebhookFailure", "message": message}})


# --- admin ----------------------------------------------------------------------------------------------------


def admin_deliveries(req: Request) -> Response:
    return json_response(200, {"deliveries": deliveries(req.ctx.state, req.query.get("name") or None)})


def admin_clear(req: Request) -> Response:
    state = req.ctx.state
    with state.lock:
        hooks = _webhooks(state)
        cleared = len(hooks.deliveries)
        hooks.deliveries.clear()
    return json_response(200, {"cleared": cleared})


def _int(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(f"{key} must be an integer")
    return value


def admin_fail(req: Request) -> Response:
    body = _body(req)
    status = _int(body, "status")
    times = _int(body, "times", 1)
    if not 200 <= status <= 599:
        raise StateError("status must be an HTTP status from 200 to 599")
    if times < 0:
        raise StateError("times must be 0 or more")
    name = req.params["name"]
    state = req.ctx.state
    with state.lock:
        hooks = _webhooks(state)
        if times:
            hooks.failures[name] = (status, times)
        else:
            hooks.failures.pop(name, None)
    return json_response(200, {"name": name, "status": status, "times": times})


def register(router: Router, ctx: Context) -> None:
    del ctx
    router.add("POST", rf"/webhooks/{NAME}", receive)
    router.add("GET", r"/_admin/webhooks/deliveries", _guard(admin_deliveries))
    router.add("DELETE", r"/_admin/webhooks/deliveries", _guard(admin_clear))
    router.add("PUT", rf"/_admin/webhooks/{NAME}/failures", _guard(admin_fail))
