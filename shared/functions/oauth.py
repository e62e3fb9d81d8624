"""HTTP functions of the OAuth method: start (function key) and the callback (the one anonymous function).

A browser signed in to the console is sent back to the connection's page there (303). Anyone else gets a page:
the callback answers an HTML page for a person, never JSON: every value in it is HTML-escaped, it never holds
a token or code, and it is neither cached nor allowed to load or run anything.

The callback first asks whether the answer's state is pending (``shared.oauth_callback``, one lean read of the
state table): an answer that completes no sign-in is refused with the flow's own failure, without building the
flow; a pending state goes to ``OAuthFlow.complete``, which consumes it.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

import azure.functions as func

from shared.functions.connections import BASE, OPEN
from shared.functions.http import endpoint, json_response, refuse_repeated_query, traced

if TYPE_CHECKING:
    from shared.errors import ServiceError

bp = func.Blueprint()
log = logging.getLogger(__name__)

CALLBACK_ROUTE = "organization/app-connections/azure/oauth/callback"
CONSOLE_SESSION_COOKIE = "__Host-appconn"  # the cookie of a sign-in to the console (GET /auth/login)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _cookies(req: func.HttpRequest) -> dict[str, str]:
    """The request's cookies, name to value (``shared.sessions.cookies_of``)."""
    from shared.sessions import cookies_of

    return cookies_of(req.headers.get("cookie"))


def _from_console(req: func.HttpRequest) -> bool:
    """The browser holds a session cookie of the console: its page, not this one, shows the outcome (the console
    checks the session itself; the redirect carries only the connection's id, which this page would show too)."""
    if f"{CONSOLE_SESSION_COOKIE}=" not in (req.headers.get("cookie") or ""):
        return False  # no console session at all: the cookie parser's module (the sessions') is not loaded
    return bool(_cookies(req).get(CONSOLE_SESSION_COOKIE))


def _wants_json(req: func.HttpRequest) -> bool:
    accept = (req.headers.get("accept") or "").lower()
    return any(part.split(";", 1)[0].strip() == "application/json" for part in accept.split(","))


@bp.function_name("authorize_app_connection_oauth")
@bp.route(route=BASE + "/{app}/oauth/authorize", methods=["GET"], auth_level=OPEN)
@endpoint("Writer", action="connection.authorize", query=None)  # its query is checked field by field
async def authorize_app_connection_oauth(req: func.HttpRequest) -> func.HttpResponse:
    from shared.oauth_start import STATE_LIFETIME, new_browser_binding
    from shared.wiring import oauth_start

    # Started by the console's session cookie (a bearer token wins when both are sent): the answer must come back
    # to this browser, which gets a cookie for it. An API client's sign-in goes to whoever it hands the URL to.
    cookie = new_browser_binding() if not req.headers.get("authorization") else None
    url = await oauth_start().start(req.route_params["app"], dict(req.params), cookie[1] if cookie else None)
    response = json_response({"authorizationUrl": url}) if _wants_json(req) else func.HttpResponse(
        status_code=302, headers={"Location": url, "Cache-Control": "no-store"})
    if cookie is not None:
        from shared.sessions import set_cookie  # the cookie's caller loaded it already

        response.headers.add("Set-Cookie", set_cookie(*cookie, int(STATE_LIFETIME.total_seconds())))
    return response


CONSOLE_PAGE = "/organization/app-connections"


def page(title: str, paragraphs: list[str], status: int, back: bool = False) -> func.HttpResponse:
    """A minimal HTML page; ``title`` and ``paragraphs`` are plain text and escaped here; ``back``: a link to the
    console's page (the console started the sign-in in this tab, which closing would close)."""
    body = "".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)
    if back:
        body += f'<p><a href="{CONSOLE_PAGE}">Back to App Connections</a></p>'
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return func.HttpResponse(
        document, status_code=status, headers=dict(PAGE_HEADERS), mimetype="text/html", charset="utf-8"
    )


@bp.function_name("app_connection_oauth_callback")
@bp.route(route=CALLBACK_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def app_connection_oauth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ServiceError, UpstreamError
    from shared.oauth_callback import refuse_unless_pending
    from shared.wiring import oauth_state_lookup

    try:  # an answer that completes no pending sign-in is refused here, before the flow (and its SDKs) is built
        refuse_repeated_query(req)  # a state or code given twice: which one counts is not the host's to choose
        await refuse_unless_pending(oauth_state_lookup(), req.params)
    except ServiceError as error:
        if isinstance(error, UpstreamError):  # Table Storage failed: the page an Azure failure of the flow gives
            return _azure_failed(error.detail, req)
        return _failure_page(error, req)
    except (OSError, TimeoutError) as error:
        return _azure_failed(type(error).__name__, req)
    except Exception:
        log.exception("OAuth callback failed")
        return _failed(req)
    return await _complete(req)


def _failed(req: func.HttpRequest) -> func.HttpResponse:
    return page("The service could not finish", ["The service failed to handle the sign-in."], 500,
                back=_from_console(req))


def _azure_failed(what: str, req: func.HttpRequest) -> func.HttpResponse:
    log.warning("OAuth callback: an Azure call failed (%s)", what)
    return page("The service could not finish", ["An Azure service failed; try again later."], 502,
                back=_from_console(req))


def _failure_page(error: ServiceError, req: func.HttpRequest) -> func.HttpResponse:
    """The sign-in's failure; from the console (which started it in this tab), with the way back to its page."""
    if error.status >= 500:
        log.warning("OAuth callback failed: %s", error.detail)
    title = "The connection was not authorized" if error.status < 500 else "The service could not finish"
    console = _from_console(req)
    return page(title, [error.detail] if console else [error.detail, "You can close this window."],
                400 if error.status < 500 else error.status, back=console)


async def _complete(req: func.HttpRequest) -> func.HttpResponse:
    """The state is pending: the flow consumes it atomically, redeems the code and saves the connection (its
    audit records name the browser that brought the answer back, by address and user agent)."""
    from shared.audit import acting
    from shared.errors import ServiceError
    from shared.functions.http import request_context
    from shared.records import Actor
    from shared.wiring import oauth_flow

    browser = request_context(req, Actor("anonymous", "the OAuth callback", "user"))
    try:
        with acting(browser):
            outcome = await oauth_flow().complete(req.params, _cookies(req))
    except ServiceError as error:
        return _failure_page(error, req)
    except Exception as error:
        from azure.core.exceptions import AzureError

        if isinstance(error, AzureError):
            return _azure_failed(type(error).__name__, req)
        log.exception("OAuth callback failed")
        return _failed(req)
    record = outcome.record
    if _from_console(req):  # a signed-in browser goes back to the connection's page of the console
        path = f"/organization/app-connections/{outcome.app.id}/{record.id}"
        return func.HttpResponse(status_code=303, headers={
            **PAGE_HEADERS, "Location": f"{path}?authorized={'created' if outcome.created else 'again'}"})
    action = "created" if outcome.created else "authorized again"
    lines = [
        f"The {outcome.app.name} connection '{record.name}' was {action}.",
        f"Connection id: {record.id}. Tenant: {record.tenant_id}.",
    ]
    if record.description:
        lines.append(f"Description: {record.description}")
    if outcome.started_by is not None:
        lines.append(f"Started by {outcome.started_by.name or outcome.started_by.id}.")
    if outcome.username:
        lines.append(f"Signed in as {outcome.username}.")
    lines.append("You can close this window.")
    return page("Connection authorized", lines, 200)
