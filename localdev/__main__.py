"""``python -m localdev host|standin|up``: run the service locally without Azure Functions Core Tools.

- ``host``    serve the function app (reads local.settings.json; the environment wins)
- ``standin`` run the Entra ID / Microsoft Graph / Key Vault stand-in alone
- ``up``      start Azurite and the stand-in, register a demo tenant and app, and serve the function app
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
    with LocalEnvironment(args.state_dir, site_url=site_url) as env:
        assert env.standin is not None
        assert env.azurite is not None
        env.apply()
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
                    "Create a connection:",
                    f"  curl -s -X POST {base}/api/v1/app-connections/azure-key-vault \\",
                    f"       -H 'content-type: application/json' --data @{body_file}",
                    "List connections:",
                    f"  curl -s {base}/api/v1/app-connections/azure-key-vault",
                    "Create an OAuth connection (the stand-in consents as a test user; open the URL in a browser",
                    f"that trusts {env.standin.ca_path}, or follow it with curl --cacert):",
                    f"  curl -s -H 'Accept: application/json' '{base}/api/v1/app-connections/azure-key-vault/oauth/"
                    "authorize?name=demo-oauth'",
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
    print(f"unknown command {command!r}; use host, standin or up", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
