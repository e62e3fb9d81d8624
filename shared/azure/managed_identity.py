"""Tokens of the host's managed identity from App Service's local endpoint, without azure-identity.

The read path (``shared.store.table_reads``) needs one bearer token, for Table Storage, and must not import
azure-identity for it: with MSAL, requests, azure-core and aiohttp that is about 0.4 s on a cold instance. Azure
Functions and App Service give every app a local token endpoint for its managed identities (``IDENTITY_ENDPOINT``,
guarded by the secret ``IDENTITY_HEADER``; ``shared.settings.ManagedIdentityEndpoint``), and one GET there is a
token. This module makes that GET over the lean client of ``shared.azure.rest`` (the one retry policy, a client
span labelled ``entra`` as every token request is), as azure-identity's ``ManagedIdentityCredential`` does on
App Service (api-version 2019-08-01; Microsoft's "REST endpoint reference" of managed identities for App Service
and Azure Functions):

- ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource={resource}[&client_id={id}]`` with the header
  ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``. The resource is the scope without ``/.default``; ``client_id`` names a
  user-assigned identity (``AzureWebJobsStorage__clientId``, the one DefaultAzureCredential is given), and
  without it the system-assigned identity answers.
- 200: ``access_token``, ``expires_on`` (epoch seconds, as a number or a string; the 2017-09-01 version's date
  text ``MM/DD/YYYY HH:MM:SS [AM|PM] +00:00`` is read too) or ``expires_in`` (seconds from the request), and
  optionally ``refresh_in``; as azure-identity does, a token living two hours or more is refreshed at half its
  life when the answer names no ``refresh_in``.
- 429, 500, 502, 503, 504 and 408 are retried by the one policy (``shared.azure.retry``, ``Retry-After``
  honoured); when retries run out the read fails as :class:`~shared.errors.UpstreamThrottled` (503, still 429 or
  503) or :class:`~shared.errors.UpstreamError` (502), the endpoint's text to the log only. 400 (no such
  identity on this app, or no system-assigned one) and 401/403 (a wrong ``X-IDENTITY-HEADER``) are the
  deployment's to fix: :class:`~shared.errors.ServiceMisconfigured` (503) quoting the endpoint's ``message``.

Neither the token nor the header's value is ever logged, put in a span (``shared.telemetry`` records no header
and redacts query values) or in an error's message; :class:`AccessToken` does not show its token in its repr.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from shared.errors import ServiceMisconfigured, UpstreamError, UpstreamThrottled

if TYPE_CHECKING:
    from shared.azure.rest import RestClient
    from shared.settings import ManagedIdentityEndpoint

log = logging.getLogger(__name__)

API_VERSION = "2019-08-01"
HALF_LIFE_FROM = 7200  # seconds: a token living this long or longer is refreshed at half its life (azure-identity)
_MESSAGE_LIMIT = 300  # characters of the endpoint's error message quoted in ours


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token, when it expires and when it should be refreshed (epoch seconds; None: near expiry)."""

    token: str = field(repr=False)
    expires_on: float
    refresh_on: float | None = None


def resource_of(scope: str) -> str:
    """The resource of an Entra ID v2 scope (``https://storage.azure.com/.default`` -> ``https://storage.azure.com``),
    as the managed-identity endpoint takes it."""
    return scope[: -len("/.default")] if scope.endswith("/.default") else scope


def token_url(endpoint: str, scope: str, client_id: str | None) -> str:
    """The request's URL: the endpoint with ``api-version``, ``resource`` and, for a user-assigned identity,
    ``client_id``."""
    params = {"api-version": API_VERSION, "resource": resource_of(scope)}
    if client_id:
        params["client_id"] = client_id
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)


async def get_token(rest: RestClient, endpoint: ManagedIdentityEndpoint, scope: str,
                    client_id: str | None) -> AccessToken:
    """A token for ``scope`` of the managed identity ``client_id`` (None: the system-assigned one) from the host's
    endpoint; raises :class:`UpstreamError` or :class:`ServiceMisconfigured` (see the module docstring)."""
    from shared.azure.rest import RestError

    requested_at = time.time()
    try:
        response = await rest.get(token_url(endpoint.url, scope, client_id),
                                  {"X-IDENTITY-HEADER": endpoint.header, "Accept": "application/json"})
    except RestError as error:  # its text (the endpoint's address) goes to the log only
        log.warning("The managed identity's token endpoint failed: %s", error)
        if error.status in (429, 503):
            raise UpstreamThrottled("The managed identity's token endpoint is busy; try again later.",
                                    retry_after=error.retry_after) from None
        raise UpstreamError("The managed identity's token endpoint could not be reached.") from None
    if response.status != 200:
        raise _refused(response.status, response.body, endpoint.header, client_id)
    return parse_token(response.body, requested_at)


def parse_token(body: bytes, requested_at: float) -> AccessToken:
    """The token of a 200 answer requested at ``requested_at``; an answer without a usable token or expiry is an
    :class:`UpstreamError` that quotes none of it."""
    try:
        content = json.loads(body)
    except ValueError:
        content = None
    if not isinstance(content, dict):
        raise UpstreamError("The managed identity's token endpoint answered without a JSON object.")
    token = content.get("access_token")
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise UpstreamError("The managed identity's token endpoint answered without an access token.")
    token_type = content.get("token_type")
    if token_type is not None and str(token_type).lower() != "bearer":
        raise UpstreamError("The managed identity's token endpoint answered with a token that is not a bearer token.")
    expires_on = _expires_on(content, requested_at)
    if expires_on is None:
        raise UpstreamError("The managed identity's token endpoint answered without a valid expiry.")
    refresh_on: float | None = None
    refresh_in = _seconds(content.get("refresh_in"))
    if refresh_in is not None:
        refresh_on = requested_at + refresh_in
    elif expires_on - requested_at >= HALF_LIFE_FROM:
        refresh_on = requested_at + (expires_on - requested_at) // 2
    return AccessToken(token, expires_on, refresh_on)


def _seconds(value: Any) -> float | None:
    """A whole number of seconds given as a number or a string of digits, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(int(value))
    if isinstance(value, str) and value.strip().isdigit():
        return float(int(value.strip()))
    return None


def _expires_on(content: dict[str, Any], requested_at: float) -> float | None:
    raw = content.get("expires_on")
    if raw is not None and raw != "":
        seconds = _seconds(raw)
        if seconds is not None:
            return seconds
        return _date_text(raw) if isinstance(raw, str) else None
    expires_in = _seconds(content.get("expires_in"))
    return None if expires_in is None else float(int(requested_at) + int(expires_in))


def _date_text(value: str) -> float | None:
    """App Service's 2017-09-01 ``expires_on``: ``06/20/2019 02:57:58 +00:00`` (Linux) or
    ``1/16/2020 5:24:12 AM +00:00`` (Windows)."""
    from datetime import datetime

    for layout in ("%m/%d/%Y %H:%M:%S %z", "%m/%d/%Y %I:%M:%S %p %z"):
        try:
            return datetime.strptime(value.strip(), layout).timestamp()
        except ValueError:
            continue
    return None


def _refused(status: int, body: bytes, header: str, client_id: str | None) -> Exception:
    """The error of an answer other than 200 that was not retried (or no longer)."""
    message = ""
    try:
        content = json.loads(body)
    except ValueError:
        content = None
    if isinstance(content, dict):
        # App Service answers {"statusCode", "message", "correlationId"}; some hosts {"error", "error_description"}.
        found = content.get("message") or content.get("error_description") or content.get("error") or ""
        message = str(found).replace(header, "***")[:_MESSAGE_LIMIT].strip()
        correlation = content.get("correlationId")
        if isinstance(correlation, str) and correlation and len(correlation) <= 64:
            message += f" (correlation id {correlation})"
    said = f": {message}" if message else ""
    identity = f"the user-assigned managed identity {client_id}" if client_id else "the system-assigned identity"
    if status == 400:
        return ServiceMisconfigured(
            f"The host has no token for {identity} (its token endpoint answered 400{said}). Check that the "
            "identity is assigned to the function app and that AzureWebJobsStorage__clientId (or, without it, "
            "AZURE_CLIENT_ID) names it.")
    if status in (401, 403):
        return ServiceMisconfigured(
            f"The managed identity's token endpoint refused the request ({status}{said}). Is IDENTITY_HEADER "
            "the host's?")
    return UpstreamError(f"The managed identity's token endpoint answered {status}{said}.")
