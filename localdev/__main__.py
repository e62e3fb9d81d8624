"""``python -m localdev host|standin|up|token``: run the service locally without Azure Functions Core Tools.

- ``host``    serve the function app (reads local.settings.json; the environment wins)
- ``standin`` run the Entra ID / Microsoft Graph / Key Vault stand-in alone
- ``up``      start Azurite and the stand-in, register the service's API, a demo tenant and app, and serve the
              function app
- ``token``   print an access token for the API of the running ``up``:
              ``python -m localdev token --role AppConnections.Admin [--role ...] [--user] [--app APP]``
- ``demo-connection``  add a new secret to ``up``'s demo app, write a create body with it, print its path
- ``json PATH``  print one field of the JSON on stdin (``appConnection.id``), so no ``jq`` is needed

``up --persist`` keeps Azurite's tables and the stand-in's directory and vault in ``.localdev/`` across restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localdev.environment import LocalEnvironment

ROOT = Path(__file__).resolve().parent.parent


def _up(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev up", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7071, help="port of the function host (default 7071)")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".localdev",
                        help="where the local CA, the access files and (with --persist) the data are kept")
    parser.add_argument("--persist", action="store_true",
                        help="keep the data across restarts: Azurite's tables in STATE_DIR/azurite, the stand-in's "
                             "directory and vault in STATE_DIR/standin-state.json (default: in memory)")
    args = parser.parse_args(argv)

    from localdev.demo import ensure_demo_app, write_demo_body
    from localdev.environment import LocalEnvironment
    from localdev.host import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    site_url = os.environ.get("SITE_URL") or f"http://localhost:{args.port}"
    # uvicorn re-raises the signal that stopped it once it has shut down; turning SIGTERM into SystemExit
    # lets the environment below stop Azurite and the stand-in instead of leaving them running (Ctrl+C's
    # KeyboardInterrupt does the same, and main() turns it into exit code 130 without a traceback).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Started in the background by a script (``up &``), SIGINT comes ignored, and uvicorn would restore that after
    # its shutdown: ``kill -INT`` stopped the service but exited 0, silently. Ctrl+C and SIGINT mean the same here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    state_dir: Path = args.state_dir
    busy = _busy(args.port, state_dir)
    if busy is not None:
        print(f"localdev up: {busy}", file=sys.stderr)
        return 2
    with LocalEnvironment(state_dir, site_url=site_url, with_api=True, persist=args.persist) as env:
        assert env.standin is not None
        assert env.azurite is not None
        assert env.api is not None
        assert env.federation is not None
        env.apply()  # with AUTH_TENANT_ID and AUTH_AUDIENCE: every route wants a token for the API
        os.environ.setdefault("SITE_URL", f"http://localhost:{args.port}")
        admin = env.standin.admin
        admin.set_account_picker(True)  # the console's sign-in page offers the demo people
        demo = ensure_demo_app(admin, env.standin.url, str(env.standin.ca_path), state_dir, args.persist,
                               env.federation.tenant_id)  # the identity's tenant: the demo app can federate
        body_file = write_demo_body(admin, demo, state_dir, "demo-key-vault")
        for line in _instructions(env, demo.tenant_id, demo.client_id, body_file, args.port, state_dir,
                                  args.persist):
            print(line)
        sys.stdout.flush()
        from shared.azure.clients import close_clients

        serve(port=args.port, app_dir=ROOT, on_shutdown=[close_clients], routes_level=logging.DEBUG)
    return 0


_LOCKS: list[object] = []  # the state folder's lock, held while `up` runs


def _busy(port: int, state_dir: Path) -> str | None:
    """Why ``up`` cannot start (checked before anything starts or is written), or None: another ``up`` holds the
    state folder (it would rewrite the demo's files under the running one), or the port is taken."""
    import errno
    import fcntl
    import socket

    state_dir.mkdir(parents=True, exist_ok=True)
    lock = open(state_dir / ".up.lock", "w")  # noqa: SIM115  # held (and open) for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return (f"another `localdev up` is running with the state folder {state_dir}; stop it first (Ctrl+C in its "
                "shell), or give this one --state-dir and --port of its own.")
    _LOCKS.append(lock)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the host binds (uvicorn sets SO_REUSEADDR): a connection of the last run still closing (a browser's,
        # in FIN-WAIT for up to a minute after Ctrl+C) does not hold the port; a listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"port {port} is in use (another service, or another `localdev up`): give --port."
            raise
    return None


def _instructions(env: LocalEnvironment, tenant: str, client_id: str, body_file: Path, port: int,
                  state_dir: Path, persist: bool) -> list[str]:
    """What ``up`` prints: where everything is and commands that work as printed, before and after a rotation
    (each create asks ``demo-connection`` for a new secret of the demo app), with no tool beyond curl."""
    from localdev.environment import DEMO_USERS

    assert env.standin is not None
    assert env.azurite is not None
    assert env.api is not None
    assert env.federation is not None
    federation = env.federation
    python = sys.executable
    with contextlib.suppress(ValueError):
        python = str(Path(sys.executable).relative_to(ROOT))  # .venv/bin/python, run from the project folder
    helper = f"{python} -m localdev"
    options = "" if state_dir.resolve() == (ROOT / ".localdev").resolve() else f" --state-dir {state_dir}"
    base = f"http://localhost:{port}/api/v1/app-connections/azure-key-vault"
    bearer = '-H "Authorization: Bearer $TOKEN"'
    api = env.api
    return [
        "",
        f"Azurite (Table Storage): {env.azurite.endpoint}"
        + (f" (kept in {env.azurite.location})" if persist else " (in memory: --persist keeps it)"),
        f"Entra ID / Graph / Key Vault stand-in: {env.standin.url} (CA: {env.standin.ca_path})"
        + (f" (kept in {env.standin_state_path})" if persist else ""),
        f"Demo tenant: {tenant}",
        f"Demo app (client id): {client_id}, with Application.ReadWrite.OwnedBy and owner of itself, so the",
        f"service can rotate its secret. A create body with a new secret of it: {body_file} (0600, not printed).",
        "",
        f"The service's API: AUTH_TENANT_ID={api.tenant_id} AUTH_AUDIENCE={api.api_app_id} ({api.identifier_uri})",
        f"Demo administrator: {api.user_principal_name}; demo daemon (client id): {api.daemon_client_id}; both hold "
        f"AppConnections.Admin ({env.api_access_path}, 0600).",
        "In another shell, from the project folder: every request needs an access token for the API (a daemon's;",
        "--user for the administrator's, --role for other roles, --app azure-key-vault to limit them to one app):",
        f"  TOKEN=$({helper} token{options} --role AppConnections.Admin)",
        "Create the demo connection (demo-connection adds a new secret to the demo app each time it runs):",
        f"  curl -s -X POST {base} {bearer} -H 'content-type: application/json' \\",
        f"       --data @\"$({helper} demo-connection{options} --name demo-key-vault)\"",
        "Rotate its secret now, then list connections:",
        f"  ID=$(curl -s {bearer} {base}/connection-name/demo-key-vault | {helper} json appConnection.id)",
        f"  curl -s -X POST {bearer} {base}/$ID/rotate",
        f"  curl -s {bearer} {base}",
        "The host's user-assigned managed identity (the federated method; IDENTITY_ENDPOINT is the stand-in's):",
        f"client id {federation.client_id}; an application trusts it with a federated identity credential: issuer",
        f"{federation.issuer}, subject {federation.principal_id}, audience api://AzureADTokenExchange.",
        f"Create an OAuth connection (the stand-in signs {api.user_principal_name} in and consents):",
        f"  URL=$(curl -s {bearer} -H 'Accept: application/json' '{base}/oauth/authorize?name=demo-oauth' \\",
        f"       | {helper} json authorizationUrl)",
        f"  curl -sL --cacert {env.standin.ca_path} \"$URL&login_hint={api.user_principal_name}\"",
        "",
        f"The console: http://localhost:{port}/organization/app-connections (sign in at "
        f"http://localhost:{port}/auth/login; the sign-in page is the stand-in's, on TLS with its local CA:",
        f"let the browser trust {env.standin.ca_path}, or accept its warning once).",
        "Demo sign-in (the stand-in's account picker): "
        + "; ".join([f"{api.user_principal_name} (AppConnections.Admin)"]
                    + [f"{upn} ({', '.join(r.removeprefix('AppConnections.') for r in roles)})"
                       for upn, (_, roles) in DEMO_USERS.items()]),
        f"  or skip the picker: http://localhost:{port}/auth/login?loginHint=reader@contoso.example",
        "Ctrl+C stops Azurite, the stand-in and the host.",
        "",
    ]


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
    if command == "demo-connection":
        from localdev.demo import demo_connection_main

        return demo_connection_main(rest)
    if command == "json":
        from localdev.demo import json_main

        return json_main(rest)
    print(f"unknown command {command!r}; use host, standin, up, token, demo-connection or json", file=sys.stderr)
    return 2


def _run(argv: Sequence[str] | None = None) -> int:
    """:func:`main`, with Ctrl+C ending it quietly (exit code 130) once everything it started has stopped."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # another Ctrl+C while exiting: nothing left to stop
        print("stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(_run())
