"""The authority's token endpoint for OAuth grants (authorization code, refresh token): the real
``TokenEndpoint`` adapter. Entra's refusal is a ``CredentialRejected`` carrying its error; tokens are never
logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.credentials import entra_unavailable, rejection_from, relayed
from shared.errors import CredentialRejected, UpstreamError
from shared.ports import TokenResult

if TYPE_CHECKING:
    from shared.azure.clients import AzureClients


def jwt_claims(token: str | None) -> dict[str, Any]:
    """The payload of a JWT, unverified: the token came straight from the token endpoint over TLS (OIDC 3.1.3.7)."""
    if not token or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


class EntraTokenEndpoint:
    """The authority's token endpoint (the real ``TokenEndpoint`` adapter)."""

    def __init__(self, clients: AzureClients) -> None:
        self._clients = clients

    async def redeem(self, tenant: str, form: Mapping[str, str]) -> TokenResult:
        return await redeem(self._clients, tenant, form)


async def redeem(clients: AzureClients, tenant: str, form: Mapping[str, str]) -> TokenResult:
    """POST a grant to ``{authority}/{tenant}/oauth2/v2.0/token``; Entra's refusal is a CredentialRejected."""
    from azure.core.exceptions import AzureError
    from azure.core.rest import HttpRequest

    url = f"{clients.settings.authority_host}/{urllib.parse.quote(tenant, safe='')}/oauth2/v2.0/token"
    request = HttpRequest("POST", url, data=dict(form), headers={"Accept": "application/json"})
    started = time.time()
    # An authorization code is single use: a 500/502/504 may come after Entra redeemed it, and the code sent again
    # would be refused (AADSTS54005) as if the user's sign-in were bad. Only a 429/503 with a wait is retried.
    single_use = {"single_use": True} if form.get("grant_type") == "authorization_code" else {}
    try:
        response = await clients.entra_tokens().send_request(request, **single_use)
        await response.read()
    except (AzureError, OSError, TimeoutError):
        raise UpstreamError("Entra ID could not be reached.") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise UpstreamError(f"Entra ID answered {response.status_code} without a token response.")
    if response.status_code == 200 and isinstance(body.get("access_token"), str):
        try:
            expires_in = int(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            expires_in = 3600
        claims = jwt_claims(body.get("id_token")) or jwt_claims(body["access_token"])
        refresh = body.get("refresh_token")
        return TokenResult(
            access_token=body["access_token"],
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_on=int(started) + expires_in,
            claims=claims,
            id_token=body["id_token"] if isinstance(body.get("id_token"), str) else None,
        )
    error = str(body.get("error") or "")
    description = str(body.get("error_description") or "")
    unavailable = entra_unavailable(response.status_code, error, response.headers)
    if unavailable is not None:
        raise unavailable
    if error:
        rejected = rejection_from(Exception(f"({error}) {description}"))
        if rejected is None:
            detail = f"{relayed(error, 80)}: {relayed(description, 300)}".rstrip(": ")
            rejected = CredentialRejected(detail, extensions={"entraError": error})
        raise rejected
    raise UpstreamError(f"Entra ID answered {response.status_code} without a token response.")
