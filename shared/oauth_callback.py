"""What the OAuth callback reads from Entra's answer, and how it refuses an answer that completes no sign-in of ours.

:class:`shared.oauth.OAuthFlow` completes a sign-in; this module is the part of it that needs nothing but the query
and whether the state is pending, so that the anonymous callback answers a stray, replayed or expired-and-purged
state (the common failure, and anyone's to send) without building the write side (the domain services, the Azure
SDKs, pydantic): :func:`refuse_unless_pending` looks the state up through a read-only port
(:class:`shared.ports.OAuthStateLookup`, which reads no column of the state, so no PKCE verifier) and raises the
very :class:`OAuthFailed` the flow raises when its atomic ``take`` finds nothing. A state that is pending goes on
to the flow, which consumes it atomically as before (the lookup decides nothing for it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared.errors import ServiceError

if TYPE_CHECKING:
    from shared.ports import OAuthStateLookup

CALLBACK_PARAMS = {"code": 8192, "state": 256, "error": 256, "error_description": 4096}  # name -> max length
# What Entra (or RFC 6749/9207) may add to the answer besides those: tolerated, never read. Any other
# query parameter makes the callback fail (a 400 page).
CALLBACK_IGNORED = frozenset({"session_state", "iss", "error_uri"})


class OAuthFailed(ServiceError):
    """The callback could not create or update the connection; ``detail`` says why (shown on the page)."""

    status = 400
    slug = "oauth-failed"
    title = "The connection was not authorized"


def callback_values(params: Mapping[str, str]) -> dict[str, str | None]:
    """``code``, ``state``, ``error`` and ``error_description`` of the answer (None when absent or empty), each
    within its length and without control characters; nothing else of the query is read."""
    values: dict[str, str | None] = {}
    for name, limit in CALLBACK_PARAMS.items():
        value = params.get(name) or None
        if value is not None and (len(value) > limit or any(ord(ch) < 32 and ch not in "\r\n\t" for ch in value)):
            raise OAuthFailed(f"The '{name}' parameter of the sign-in answer is not valid.")
        values[name] = value
    return values


def unexpected_parameter(params: Mapping[str, str]) -> OAuthFailed | None:
    """The refusal of an answer that carries a query parameter besides those read and those tolerated."""
    if any(name not in CALLBACK_PARAMS and name not in CALLBACK_IGNORED for name in params):
        return OAuthFailed(
            "The sign-in answer carries a parameter it should not. Start again from the authorize link.")
    return None


def no_pending_sign_in(values: Mapping[str, str | None], params: Mapping[str, str]) -> OAuthFailed:
    """The refusal of an answer whose state names no pending sign-in (none sent, unknown, already used, or
    purged once expired). An error Entra reports is not shown then: it answers no sign-in of ours."""
    if values["error"]:
        return OAuthFailed("The sign-in did not complete. Start again from the App Connections page.")
    unexpected = unexpected_parameter(params)
    if unexpected is not None:
        return unexpected
    if not values["state"]:
        return OAuthFailed("The sign-in answer carries no state. Start again from the authorize link.")
    return OAuthFailed("This sign-in answer is unknown or was already used. Start again from the authorize link.")


async def refuse_unless_pending(states: OAuthStateLookup, params: Mapping[str, str]) -> None:
    """Raise what :meth:`shared.oauth.OAuthFlow.complete` raises for this answer when its state is not pending;
    return (deciding nothing) when it is, for the flow to consume it."""
    values = callback_values(params)
    state = values["state"]
    if not state or not await states.pending(state):
        raise no_pending_sign_in(values, params)
