"""The App Connections console: ``/`` (a redirect), the page at ``/organization/app-connections`` (and a
connection's page under it, routed in the browser) and its static assets under ``/console/assets/``.

The page is static HTML, ES modules and CSS from ``console/``: it holds no data, so it is served to anyone; every
datum comes from the API, which checks the caller's session or token. Strict headers go with every answer: a
Content-Security-Policy that allows only this origin's scripts and styles (no inline script or style, nothing from
a third party) and form posts only to this origin and the sign-in authority; no framing, no sniffing, no referrer.

Nothing heavy is imported here (the page is on the read path of a cold start): the standard library already loaded
by azure.functions (``os.path``, not ``pathlib``) and, inside the handler, the settings.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache

import azure.functions as func

from shared.functions.http import traced

bp = func.Blueprint()

CONSOLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))), "console")
PAGE_PATH = "/organization/app-connections"
ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\.(js|css|svg)\Z")
SEGMENT = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")
ASSET_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}


def content_security_policy(authority_host: str) -> str:
    """The page's policy: this origin only, and form posts to the sign-in authority (its origin, no path)."""
    authority = "/".join(authority_host.split("/", 3)[:3])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        f"form-action 'self' {authority}; frame-ancestors 'none'; base-uri 'none'"
    )


@lru_cache(maxsize=32)
def _read(name: str) -> tuple[bytes, str]:
    """The bytes of a file of the console and their strong ETag (read once per process)."""
    with open(os.path.join(CONSOLE_DIR, name), "rb") as file:
        data = file.read()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _is_asset(name: str) -> bool:
    """Whether ``console/assets`` holds a file of that name (a name ``ASSET_NAME`` allows: no path)."""
    return os.path.isfile(os.path.join(CONSOLE_DIR, "assets", name))


def _not_found() -> func.HttpResponse:
    return func.HttpResponse("Not found.", status_code=404, mimetype="text/plain", charset="utf-8",
                             headers={**COMMON_HEADERS, "Cache-Control": "no-store",
                                      "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"})


def _page() -> func.HttpResponse:
    from shared.settings import get_settings

    body, _ = _read("index.html")
    headers = {**COMMON_HEADERS, "Cache-Control": "no-store",
               "Content-Security-Policy": content_security_policy(get_settings().authority_host)}
    return func.HttpResponse(body, status_code=200, headers=headers, mimetype="text/html", charset="utf-8")


@bp.function_name("console_root")
# The site's root: the Functions host runs no function of an empty route (it answers / itself), so the root is an
# optional parameter that takes no value (any other single segment is not this route's).
@bp.route(route="{ignored:maxlength(0)?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_root(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(status_code=302, headers={**COMMON_HEADERS, "Location": PAGE_PATH,
                                                       "Cache-Control": "no-store"})


@bp.function_name("console_page")
@bp.route(route="organization/app-connections", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_page(req: func.HttpRequest) -> func.HttpResponse:
    return _page()


@bp.function_name("console_connection_page")
@bp.route(route="organization/app-connections/{app}/{connectionId}", methods=["GET"],
          auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_connection_page(req: func.HttpRequest) -> func.HttpResponse:
    """A connection's page: the same document; the browser reads the path and asks the API for the connection.

    A path under an app the service does not have is not a page of it: 404, as for any other path."""
    from shared.apps import find_app

    params = req.route_params or {}
    if not all(SEGMENT.match(params.get(name) or "") for name in ("app", "connectionId")):
        return _not_found()
    if find_app(params["app"]) is None:
        return _not_found()
    return _page()


@bp.function_name("console_asset")
@bp.route(route="console/assets/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@traced
async def console_asset(req: func.HttpRequest) -> func.HttpResponse:
    name = (req.route_params or {}).get("name") or ""
    match = ASSET_NAME.match(name)
    if match is None or not _is_asset(name):
        return _not_found()
    body, etag = _read(f"assets/{name}")
    headers = {**COMMON_HEADERS, "ETag": etag, "Cache-Control": "no-cache",
               "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
    if etag in {tag.strip() for tag in (req.headers.get("if-none-match") or "").split(",")}:
        return func.HttpResponse(status_code=304, headers=headers)
    return func.HttpResponse(body, status_code=200, headers=headers, mimetype=ASSET_TYPES[match.group(1)],
                             charset="utf-8")
