"""The console's sign-in routes (``shared.sessions``): a session cookie for the browser, never a token.

The contract the console page relies on:

* ``GET /auth/login?returnTo=/organization/app-connections/...`` -> 302 to the authority's authorize endpoint
  (state, nonce, PKCE S256) and sets ``__Host-appconn-login-<tag>`` (the state: the callback must come back to
  this browser; one cookie per sign-in, so tabs signing in at once coexist). ``returnTo`` must be a path of this
  origin, else it is ignored; ``loginHint`` (optional, a user name) is passed on to Entra ID as ``login_hint``;
  ``selectAccount=true`` (the page's link after a sign-out or a lapsed session) as ``prompt=select_account``.
* ``GET /auth/callback`` -> redeems the code, creates the session, sets ``__Host-appconn`` (HttpOnly, Secure,
  SameSite=Lax, Path=/) and 302 to ``returnTo`` (default ``/organization/app-connections``). A failure is a small
  HTML page with a link to sign in again, never a stack trace.
* ``GET /auth/session`` (not a use of the session: it does not move the idle expiry) -> 200
  ``{"user": {"name", "username", "oid", "tid"}, "roles": [...], "csrfToken": "...",
  "expiresAt": "...", "expiresIn": <seconds left by the service's clock>, "absoluteExpiresIn": <seconds until
  the absolute expiry, which no use extends>}``, or 401 problem
  ``{"type": "urn:app-connections:problem:unauthenticated", "loginUrl": "/auth/login"}``.
* ``POST /auth/session`` (cookie, ``X-CSRF-Token`` and this service's ``Origin``, checked as for a sign-out: the
  console's Stay signed in) -> 200 and the session described as by ``GET /auth/session``, its use noted at once
  (the idle expiry moved, even within a minute of the last use). Any signed-in person may ask: no role is needed,
  so nothing is refused for want of one. Without the token or the Origin, 403 ``csrf-rejected``, recorded
  (``access.refused``) naming the session's user; without a live session, 401 as above.
* ``POST /auth/logout`` (cookie, ``X-CSRF-Token`` and this service's ``Origin``) -> 204, the session deleted and
  the cookie cleared (also 204 when there was no session, and when its audit record cannot be written: sign-out
  is never refused for it). Without the token or the Origin, 403; recorded (``access.refused``) when the cookie
  is a live session's, whose user it names.
* Every ``/api/v1/...`` route accepts the cookie (``fetch(url, {credentials: 'same-origin'})``), with
  ``X-CSRF-Token`` and ``Origin`` on POST, PUT, PATCH and DELETE (``shared.functions.http.caller``).

Each sign-in and sign-out is audited (``session.start``, ``session.end``: ``started``, then ``succeeded`` or
``failed`` with the kind of error; the user as actor, never the id).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import azure.functions as func

from shared.functions.http import json_response, problem_response, traced

# shared.sessions (and through it shared.auth and shared.settings) is imported inside the handlers: registering
# these routes needs none of it, and the other routes' first request must not pay for it (cold start).
if TYPE_CHECKING:
    from shared.audit import RequestContext
    from shared.auth import Principal

bp = func.Blueprint()
log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {**NO_STORE, "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; "
                                           "frame-ancestors 'none'"}


def _redirect(location: str, cookies: list[str]) -> func.HttpResponse:
    response = func.HttpResponse(status_code=302, headers={**NO_STORE, "Location": location})
    for cookie in cookies:
        response.headers.add("Set-Cookie", cookie)
    return response


def error_page(title: str, detail: str, status: int, return_to: str | None = None,
               login_cookie: str | None = None) -> func.HttpResponse:
    """A small page: what went wrong (plain text, escaped) and a link to sign in again; ``login_cookie``: the
    sign-in's cookie, cleared."""
    import html

    from shared.sessions import clear_cookie, login_url

    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title></head><body><main><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(detail)}</p><p><a href=\"{html.escape(login_url(return_to))}\">Sign in again</a></p>"
        "</main></body></html>"
    )
    response = func.HttpResponse(document, status_code=status, headers=dict(PAGE_HEADERS), mimetype="text/html",
                                 charset="utf-8")
    if login_cookie is not None:
        response.headers.add("Set-Cookie", clear_cookie(login_cookie))
    return response


def _context(req: func.HttpRequest, principal: Principal) -> RequestContext:
    """The audit context of a sign-in or sign-out: the user acts, by their console session."""
    from shared.functions.http import request_context
    from shared.records import Actor

    return request_context(req, Actor(principal.id, principal.name, principal.type, "session"))


@bp.function_name("console_login")
@bp.route(route="auth/login", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_login(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ServiceError
    from shared.sessions import LOGIN_LIFETIME, clear_cookie, login_cookie, set_cookie, stale_login_cookies
    from shared.wiring import sign_in

    try:
        url, state = await sign_in().begin(req.params.get("returnTo"), req.params.get("loginHint"),
                                           select_account=req.params.get("selectAccount") == "true")
    except ServiceError as error:
        log.warning("Console sign-in could not start: %s", error.detail)
        return error_page("Sign-in is not available", error.detail, error.status)
    except Exception as error:
        log.warning("Console sign-in could not start (%s)", type(error).__name__)
        return error_page("Sign-in is not available", "The service could not start the sign-in; try again later.",
                          503)
    stale = [clear_cookie(name) for name in stale_login_cookies(req.headers.get("cookie"))]
    return _redirect(url, [*stale, set_cookie(login_cookie(state), state, int(LOGIN_LIFETIME.total_seconds()))])


@bp.function_name("console_callback")
@bp.route(route="auth/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared.audit import acting
    from shared.errors import ServiceError
    from shared.sessions import DEFAULT_RETURN_TO, SESSION_COOKIE, clear_cookie, cookie_value, login_cookie, set_cookie
    from shared.wiring import audit_log, sessions, sign_in

    async def failed(error: ServiceError) -> None:
        """A sign-in this browser started that signed no one in: audited, by the browser that brought it back."""
        from shared.functions.http import request_context
        from shared.records import Actor

        with acting(request_context(req, Actor("anonymous", "the console sign-in", "user"))):
            await audit_log().record("session.start", "refused" if error.status < 500 else "failed",
                                     detail=f"console sign-in: {error.detail}")

    bound = login_cookie(req.params.get("state") or "")  # this sign-in's cookie (tabs may have others)
    try:
        signed_in = await sign_in().complete(dict(req.params), cookie_value(req.headers.get("cookie"), bound), failed)
        with acting(_context(req, signed_in.principal)):
            audit = audit_log()
            await audit.record("session.start", "started", detail="console sign-in")
            service = sessions()
            previous = None
            try:
                previous = await service.end(cookie_value(req.headers.get("cookie"), SESSION_COOKIE))
                session_id, session = await service.start(signed_in.principal, signed_in.display_name)
            except Exception as error:  # its outcome, as an API route's change has: the kind of error, never its text
                await audit.record("session.start", "failed", detail=f"console sign-in: {type(error).__name__}"
                                   + (f"; session {previous.key[:12]} ended" if previous else ""))
                raise
            await audit.record("session.start", "succeeded",
                               detail=f"console session {session.key[:12]}; roles: {' '.join(sorted(session.roles))}"
                               + (f"; replaces session {previous.key[:12]}" if previous else ""))
    except ServiceError as error:
        log.warning("Console sign-in %s: %s", "refused" if error.status < 500 else "failed", error.detail)
        return error_page("You are not signed in", error.detail, 400 if error.status < 500 else error.status,
                          login_cookie=bound)
    except Exception as error:
        from azure.core.exceptions import AzureError

        if not isinstance(error, AzureError | OSError | TimeoutError):
            log.exception("Console sign-in failed")
        else:
            log.warning("Console sign-in failed: an Azure call failed (%s)", type(error).__name__)
        return error_page("You are not signed in", "The service could not finish the sign-in; try again.", 502,
                          login_cookie=bound)
    # No Max-Age: the cookie goes with the browser's session (a shared machine); the server ends the session at its
    # idle and absolute expiry whatever the browser keeps.
    return _redirect(signed_in.return_to or DEFAULT_RETURN_TO,
                     [set_cookie(SESSION_COOKIE, session_id, None), clear_cookie(bound)])


@bp.function_name("console_session")
@bp.route(route="auth/session", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_session(req: func.HttpRequest) -> func.HttpResponse:
    from shared.errors import ServiceError
    from shared.sessions import SESSION_COOKIE, cookie_value
    from shared.wiring import sessions

    service = sessions()
    try:
        # Not a use: the page asks when the session should lapse, and that must not keep it alive.
        session = await service.resume(cookie_value(req.headers.get("cookie"), SESSION_COOKIE), use=False)
    except ServiceError as error:
        return problem_response(error, "/auth/session")
    except Exception as error:  # the session's Table read failed (a 502), or a defect (a 500)
        from shared.functions.http import unexpected

        return unexpected(error, req, "/auth/session", "The session could not be read; try again.")
    return json_response(service.describe(session))


@bp.function_name("console_stay")
@bp.route(route="auth/session", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_stay(req: func.HttpRequest) -> func.HttpResponse:
    """Stay signed in: a use of the session the person asked for (``Sessions.stay``)."""
    from shared.errors import RequestForgery, ServiceError
    from shared.functions.http import audit_refusal, unexpected
    from shared.sessions import CSRF_HEADER, SESSION_COOKIE, cookie_value
    from shared.wiring import sessions

    instance = "/auth/session"
    service = sessions()
    try:
        session = await service.stay(cookie_value(req.headers.get("cookie"), SESSION_COOKIE), req.method,
                                     req.headers.get("origin"), req.headers.get(CSRF_HEADER))
    except RequestForgery as forged:  # forged against a person signed in: recorded, as a forged sign-out is
        from shared.auth import Principal

        if isinstance(forged.principal, Principal):
            await audit_refusal(req, instance, forged.principal, None, forged)
        return problem_response(forged, instance)
    except ServiceError as error:
        return problem_response(error, instance)
    except Exception as error:  # the session's Table read or write failed (a 502), or a defect (a 500)
        return unexpected(error, req, instance, "The session could not be read; try again.")
    return json_response(service.describe(session))


@bp.function_name("console_logout")
@bp.route(route="auth/logout", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_logout(req: func.HttpRequest) -> func.HttpResponse:
    from shared.audit import acting
    from shared.errors import AuditUnavailable, RequestForgery, ServiceError, SignInRequired
    from shared.functions.http import audit_refusal, unexpected
    from shared.sessions import CSRF_HEADER, SESSION_COOKIE, clear_cookie, cookie_value
    from shared.wiring import audit_log, sessions

    instance = "/auth/logout"
    service = sessions()
    session_id = cookie_value(req.headers.get("cookie"), SESSION_COOKIE)
    origin = req.headers.get("origin")
    cleared = func.HttpResponse(status_code=204, headers=dict(NO_STORE))
    cleared.headers.add("Set-Cookie", clear_cookie(SESSION_COOKIE))
    try:  # not a use: read to end it, or to know whom a forged sign-out was aimed at
        session = await service.resume(session_id, use=False)
    except SignInRequired:  # nothing to end; a forged request names nobody, and is not recorded (anyone may send it)
        if (origin or "").strip().lower() != service.origin:
            return problem_response(RequestForgery(f"Sign out from {service.origin} (the Origin header)."), instance)
        return cleared
    except ServiceError as error:
        return problem_response(error, instance)
    except Exception as error:  # the session's Table read failed (a 502), or a defect (a 500)
        return unexpected(error, req, instance, "The session could not be read; try again.")
    try:
        service.check_change(session, req.method, origin, req.headers.get(CSRF_HEADER))
    except RequestForgery as forged:  # a sign-out forged against a person signed in: recorded, as on /api/v1
        await audit_refusal(req, instance, session.principal(), None, forged)
        return problem_response(forged, instance)
    # Sign-out is never refused for its audit record (a person leaving a shared machine): the session is ended, and
    # the records are written as well as can be (a record that cannot be written goes to the log).
    detail = f"console session {session.key[:12]}"
    with acting(_context(req, session.principal())):
        audit = audit_log()
        try:
            await audit.record("session.end", "started", detail=detail)
        except AuditUnavailable:
            log.warning("Console session %s is ended though its audit record could not be written", session.key[:12])
        try:
            await service.end(session_id)
        except Exception as error:
            await audit.record("session.end", "failed", detail=f"{detail}: {type(error).__name__}")
            if isinstance(error, ServiceError):
                return problem_response(error, instance)
            return unexpected(error, req, instance, "The session could not be ended; try again.")
        await audit.record("session.end", "succeeded", detail=detail)
    return cleared
