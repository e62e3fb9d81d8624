"""``python -m localdev host|standin|up|token``: run the service locally without Azure Functions Core Tools.

- ``host``    serve the function app (reads local.settings.json; the environment wins)
- ``standin`` run the Entra ID / Microsoft Graph / Key Vault stand-in alone
- ``up``      start Azurite and the stand-in, register the service's API, a demo tenant and app, and serve the
              function app
- ``token``   print an access token for the API of the running ``up``:
              ``python -m localdev token --role AppConnections.Admin [--role ...] [--user] [--app APP]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _up(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev up", description=__doc__)
    parser.add_argument("--port", type=int, default=7071, help="port of the function host (default 7071)")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".localdev", help="where the local CA is kept")
    args = parser.parse_args(argv)

    from localdev.environment import LocalEnvironment
    from localdev.host import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    site_url = os.environ.get("SITE_URL") or f"http://localhost:{args.port}"
    # uvicorn re-raises the signal that stopped it once it has shut down; turning SIGTERM into SystemExit
    # lets the environment below stop Azurite and the stand-in instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with LocalEnvironment(args.state_dir, site_url=site_url, with_api=True) as env:
        assert env.standin is not None
        assert env.azurite is not None
        assert env.api is not None
        assert env.federation is not None
        federation = env.federation
        env.apply()  # with AUTH_TENANT_ID and AUTH_AUDIENCE: every route wants a token for the API
        os.environ.setdefault("SITE_URL", f"http://localhost:{args.port}")
        admin = env.standin.admin
        tenant = admin.add_tenant()
        demo = admin.add_app(tenant, display_name="demo-app")
        secret = admin.add_secret(tenant, demo["appId"], display_name="demo secret")
        body_file = args.state_dir / "demo-connection.json"
        body_file.write_text(
            json.dumps(
                {
                    "name": "demo-key-vault",
                    "method": "client-secret",
                    "credentials": {
                        "tenantId": tenant,
                        "clientId": demo["appId"],
                        "clientSecret": secret["secretText"],
                    },
                },
                indent=2,
            )
        )
        body_file.chmod(0o600)
        base = f"http://localhost:{args.port}"
        api = env.api
        token_command = "python -m localdev token"
        if args.state_dir.resolve() != (ROOT / ".localdev").resolve():
            token_command += f" --state-dir {args.state_dir}"
        bearer = '-H "Authorization: Bearer $TOKEN"'
        print(
            "\n".join(
                [
                    "",
                    f"Azurite (Table Storage): {env.azurite.endpoint}",
                    f"Entra ID / Graph / Key Vault stand-in: {env.standin.url} (CA: {env.standin.ca_path})",
                    f"Demo tenant: {tenant}",
                    f"Demo app (client id): {demo['appId']}",
                    f"Its secret is in {body_file} (not printed).",
                    "",
                    f"The service's API: AUTH_TENANT_ID={api.tenant_id} AUTH_AUDIENCE={api.api_app_id} "
                    f"({api.identifier_uri})",
                    f"Demo administrator: {api.user_principal_name}; demo daemon (client id): "
                    f"{api.daemon_client_id}; both hold AppConnections.Admin ({env.api_access_path}, 0600).",
                    "Every request needs an access token for the API; get one (a daemon's; --user for the",
                    "administrator's, --role for other roles, --app azure-key-vault to limit them to one app):",
                    f"  TOKEN=$({token_command} --role AppConnections.Admin)",
                    "",
                    "Create a connection:",
                    f"  curl -s -X POST {base}/api/v1/app-connections/azure-key-vault {bearer} \\",
                    f"       -H 'content-type: application/json' --data @{body_file}",
                    "List connections:",
                    f"  curl -s {bearer} {base}/api/v1/app-connections/azure-key-vault",
                    "The host's user-assigned managed identity (the federated method; IDENTITY_ENDPOINT is the",
                    f"stand-in's): client id {federation.client_id}; an application trusts it with a federated",
                    f"identity credential: issuer {federation.issuer}, subject {federation.principal_id},",
                    "audience api://AzureADTokenExchange.",
                    "Create an OAuth connection (the stand-in consents as a test user; open the URL in a browser",
                    f"that trusts {env.standin.ca_path}, or follow it with curl --cacert):",
                    f"  curl -s {bearer} -H 'Accept: application/json' '{base}/api/v1/app-connections/"
                    "azure-key-vault/oauth/authorize?name=demo-oauth'",
                    "",
                ]
            ),
            flush=True,
        )
        from shared.azure.clients import close_clients

        serve(port=args.port, app_dir=ROOT, on_shutdown=[close_clients])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "host":
        from localdev.host import main as host_main
        from shared.azure.clients import close_clients

        return host_main(rest, on_shutdown=[close_clients])
    if command == "standin":
        from localdev.standin.cli import main as standin_main

        return standin_main(rest)
    if command == "up":
        return _up(rest)
    if command == "token":
        from localdev.api_token import main as token_main

        return token_main(rest)
    print(f"unknown command {command!r}; use host, standin, up or token", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
