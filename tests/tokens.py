"""Access tokens for the service's API from the stand-in, as Entra ID issues them: a daemon per set of app roles
(client credentials), or a person (authorization code with PKCE); used by the end-to-end and reliability tests."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field

import httpx

from localdev.api_token import ApiAccess, daemon_token, user_token
from localdev.standin.admin import AdminClient

ADMIN = "AppConnections.Admin"


@dataclass
class Tokens:
    access: ApiAccess
    admin: AdminClient
    _daemons: dict[frozenset[str], ApiAccess] = field(default_factory=dict)
    _cache: dict[frozenset[str], tuple[str, float]] = field(default_factory=dict)

    def for_roles(self, *roles: str) -> str:
        """A token of a daemon holding exactly ``roles`` (a new daemon per set of roles, kept for the session)."""
        key = frozenset(roles)
        cached = self._cache.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        daemon = self._daemons.get(key)
        if daemon is None:
            app = self.admin.add_app(self.access.tenant_id, display_name=f"test-daemon-{'-'.join(sorted(roles))}")
            secret = self.admin.add_secret(self.access.tenant_id, app["appId"], display_name="test daemon")
            for role in roles:
                self.admin.assign_role(self.access.tenant_id, self.access.api_app_id, app["appId"], role)
            daemon = self._daemons[key] = ApiAccess(**{**vars(self.access), "daemon_client_id": app["appId"],
                                                       "daemon_client_secret": secret["secretText"],
                                                       "daemon_principal_id": app["servicePrincipalId"]})
        token = daemon_token(daemon)
        self._cache[key] = (token, time.monotonic() + 1800)
        return token

    def person(self, upn: str, *roles: str) -> dict[str, str]:
        """The token response of a person holding ``roles`` who signs in through the authorization code flow."""
        try:
            user = self.admin.add_user(self.access.tenant_id, upn, upn.split("@")[0])
        except Exception:
            user = {"id": upn}
        for role in roles:
            self.admin.assign_role(self.access.tenant_id, self.access.api_app_id, user["id"], role)
        return dict(user_token(self.access, login_hint=upn))

    def auth(self, *roles: str) -> Bearer:
        return Bearer(self, roles or (ADMIN,))


class Bearer(httpx.Auth):
    """httpx auth that sends a daemon's token (renewed before it expires)."""

    def __init__(self, tokens: Tokens, roles: Iterable[str]) -> None:
        self.tokens = tokens
        self.roles = tuple(roles)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.setdefault("Authorization", f"Bearer {self.tokens.for_roles(*self.roles)}")
        yield request
