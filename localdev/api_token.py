"""``python -m localdev token``: an Entra ID access token for the API of the running local environment.

``python -m localdev up`` registers the service's API on the stand-in (:meth:`LocalEnvironment.register_api`)
and writes what this command needs to ``{state dir}/api-auth.json`` (mode 0600: it holds the demo daemon's
client secret; a local development tool): the stand-in's URL and CA, the tenant, the API's appId, the demo
daemon's client id and secret, the demo administrator's userPrincipalName.

    python -m localdev token --role AppConnections.Admin            # a daemon's token (client credentials)
    python -m localdev token --role Reader --role Auditor --user    # a person's (authorization code + PKCE)
    python -m localdev token --role Writer --app azure-key-vault    # AppConnections.Writer.azure-key-vault

Each ``--role`` is an app role of the API (``AppConnections.`` is added when missing; ``--app`` limits every
role to one app: ``AppConnections.<Role>.<app>``). The principal's role assignments on the API become exactly
the roles asked for (the demo daemon's, or the demo administrator's with ``--user``), so the token carries
exactly those; without ``--role`` they are left as they are (``up`` gives both AppConnections.Admin). Tokens
issued before keep their roles until they expire. The token alone goes to stdout:
``TOKEN=$(python -m localdev token --role AppConnections.Admin)``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import ssl
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AUTH_FILE = "api-auth.json"
ROLE_PREFIX = "AppConnections."
ROLES = ("Reader", "Writer", "Rotator", "Auditor", "Admin")
ADMIN_ROLE = ROLE_PREFIX + "Admin"
DEMO_ADMIN_UPN = "admin@contoso.example"
# The demo daemon doubles as the client a person signs in to for --user; nothing listens at this address: the
# command reads the code from the authorize endpoint's redirect.
TOKEN_REDIRECT_URI = "http://localhost/localdev/token-callback"


def api_roles(apps: Iterable[str]) -> list[str]:
    """The API's app roles: ``AppConnections.<Role>`` and ``AppConnections.<Role>.<app>`` for each app."""
    base = [ROLE_PREFIX + role for role in ROLES]
    return base + [f"{role}.{app}" for app in apps for role in base]


def role_names(roles: Iterable[str], app: str | None = None) -> list[str]:
    """``Admin`` -> ``AppConnections.Admin``; with ``app``: ``AppConnections.Admin.<app>``. Order kept, no repeats."""
    names = []
    for role in roles:
        name = role.strip().removeprefix(ROLE_PREFIX)
        if not name:
            raise ValueError(f"not a role: {role!r}")
        names.append(ROLE_PREFIX + name + (f".{app}" if app else ""))
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class ApiAccess:
    """What ``python -m localdev token`` needs to get tokens for the local environment's API."""

    standin_url: str
    ca_path: str
    tenant_id: str
    api_app_id: str
    identifier_uri: str
    daemon_client_id: str
    daemon_client_secret: str
    daemon_principal_id: str  # the daemon's service principal id: its tokens' oid
    user_principal_name: str
    user_id: str
    redirect_uri: str = TOKEN_REDIRECT_URI

    @property
    def scope(self) -> str:
        return f"{self.identifier_uri}/.default"

    def save(self, path: Path) -> None:
        """Write it readable by the owner only (0600 from the start), replacing any earlier file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".api-auth-", dir=path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(self), handle, indent=2)
            os.chmod(temp, 0o600)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ApiAccess:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON object")
        return cls(**{str(k): str(v) for k, v in data.items()})


class TokenError(Exception):
    """Why no token could be had (the message is for the person at the terminal)."""


def _describe(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:300]}"
    if isinstance(body, dict) and "error" in body:
        return f"{response.status_code} {body.get('error')}: {body.get('error_description', '')}".strip()
    return f"{response.status_code} {json.dumps(body)[:300]}"


def set_roles(access: ApiAccess, principal_id: str, roles: Sequence[str]) -> None:
    """Make ``roles`` exactly the principal's app roles on the API (through the stand-in's admin API)."""
    from localdev.standin.admin import AdminClient, AdminError

    admin = AdminClient(access.standin_url, access.ca_path)
    try:
        api = admin.get_api(access.tenant_id, access.api_app_id)
        defined = set(api["appRoles"])
        unknown = [role for role in roles if role not in defined]
        if unknown:
            raise TokenError(f"the API defines no app role {', '.join(unknown)}; it has: {', '.join(api['appRoles'])}")
        held = {a["role"] for a in api["assignments"] if a["principalId"] == principal_id.lower()}
        for role in roles:
            if role not in held:
                admin.assign_role(access.tenant_id, access.api_app_id, principal_id, role)
        for role in sorted(held - set(roles)):
            admin.unassign_role(access.tenant_id, access.api_app_id, principal_id, role)
    except AdminError as exc:
        raise TokenError(f"the stand-in refused a role assignment: {exc}") from exc
    finally:
        admin.close()


def _http(access: ApiAccess) -> Any:
    import httpx

    verify = ssl.create_default_context(cafile=access.ca_path)
    return httpx.Client(base_url=access.standin_url, verify=verify, timeout=30, follow_redirects=False)


def daemon_token(access: ApiAccess) -> str:
    """The client credentials grant for the demo daemon, scope ``api://{appId}/.default``."""
    form = {
        "grant_type": "client_credentials",
        "client_id": access.daemon_client_id,
        "client_secret": access.daemon_client_secret,
        "scope": access.scope,
    }
    with _http(access) as http:
        response = http.post(f"/{access.tenant_id}/oauth2/v2.0/token", data=form)
    if response.status_code != 200:
        raise TokenError(f"the token endpoint refused the daemon: {_describe(response)}")
    return str(response.json()["access_token"])


def user_token(access: ApiAccess, login_hint: str | None = None) -> dict[str, Any]:
    """The authorization-code grant with PKCE (S256), the user signed in by ``login_hint`` (default: the demo
    administrator), the demo daemon as the confidential client. Returns the token response (``access_token``,
    ``id_token``, ``refresh_token``...)."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    scope = f"openid profile offline_access {access.scope}"
    state = secrets.token_urlsafe(16)
    params = {
        "client_id": access.daemon_client_id,
        "response_type": "code",
        "response_mode": "query",
        "redirect_uri": access.redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": login_hint or access.user_principal_name,
    }
    with _http(access) as http:
        answer = http.get(f"/{access.tenant_id}/oauth2/v2.0/authorize", params=params)
        location = answer.headers.get("location", "")
        if answer.status_code != 302 or not location.startswith(access.redirect_uri):
            raise TokenError(f"the authorize endpoint did not sign the user in: {answer.status_code} "
                             f"{answer.text[:300]}")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if "code" not in query or query.get("state") != state:
            raise TokenError(f"the authorize endpoint answered {query.get('error')}: {query.get('error_description')}")
        form = {
            "grant_type": "authorization_code",
            "client_id": access.daemon_client_id,
            "client_secret": access.daemon_client_secret,
            "code": query["code"],
            "redirect_uri": access.redirect_uri,
            "code_verifier": verifier,
            "scope": scope,
        }
        response = http.post(f"/{access.tenant_id}/oauth2/v2.0/token", data=form)
    if response.status_code != 200:
        raise TokenError(f"the token endpoint refused the code: {_describe(response)}")
    body: dict[str, Any] = response.json()
    return body


def get_token(access: ApiAccess, roles: Sequence[str] | None = None, user: bool = False) -> str:
    """An access token for the API, for the demo administrator (``user``) or the demo daemon; when ``roles``
    is given (full role names), the principal's assignments become exactly those first."""
    if roles is not None:
        set_roles(access, access.user_id if user else access.daemon_principal_id, roles)
    if user:
        return str(user_token(access)["access_token"])
    return daemon_token(access)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localdev token", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", action="append", default=None, metavar="ROLE",
                        help="an app role the token must carry (repeatable), e.g. AppConnections.Admin or Reader")
    parser.add_argument("--app", default=None, help="limit the roles to one app: AppConnections.<Role>.<app>")
    parser.add_argument("--user", action="store_true",
                        help="a person's token (the demo administrator, authorization code + PKCE) "
                             "instead of a daemon's")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".localdev",
                        help="the state dir of `python -m localdev up` (default .localdev)")
    parser.add_argument("--claims", action="store_true", help="also print the token's claims to stderr")
    args = parser.parse_args(argv)
    path = args.state_dir / AUTH_FILE
    if not path.is_file():
        print(f"no {path}: start the local environment first (python -m localdev up)", file=sys.stderr)
        return 1
    try:
        roles = None if args.role is None else role_names(args.role, args.app)
    except ValueError as exc:
        parser.error(str(exc))
    if args.app and roles is None:
        parser.error("--app needs at least one --role")
    try:
        access = ApiAccess.load(path)
        token = get_token(access, roles, user=args.user)
    except TokenError as exc:
        print(f"no token: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a file not written by `up`, or the stand-in gone (OSError, httpx's errors)
        print(f"no token: {type(exc).__name__}: {exc} (is `python -m localdev up` running?)", file=sys.stderr)
        return 1
    if args.claims:
        print(json.dumps(_claims(token), indent=2), file=sys.stderr)
    print(token)
    return 0
