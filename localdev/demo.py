"""The demo app of ``python -m localdev up`` and the helpers its printed commands use (no ``jq`` needed).

* :func:`ensure_demo_app` registers (or, with ``--persist``, finds again) the demo tenant and app, with what a
  rotation needs: the Graph permission ``Application.ReadWrite.OwnedBy`` and its service principal owning the
  app; registered in the tenant of the host's managed identity, so that its connections can move to the federated
  method (Entra ID, and the stand-in, refuse an identity of another tenant: AADSTS700236).
  ``{state_dir}/demo-app.json`` says which they are (no secret).
* ``python -m localdev demo-connection [--name N]`` adds a new secret to the demo app and writes a create body
  with it to ``{state_dir}/demo-connection.json`` (0600), printing the file's path: every create gets a secret
  that no rotation has replaced yet, so the printed create command keeps working after the demo is rotated.
* ``python -m localdev json PATH`` prints one field of the JSON document on standard input
  (``appConnection.id``, ``authorizationUrl``), what the printed commands would otherwise need ``jq`` for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localdev.standin.admin import AdminClient, AdminError

ROOT = Path(__file__).resolve().parent.parent
DEMO_APP_FILE = "demo-app.json"
PERSISTED_DEMO_APP_FILE = "persisted-demo-app.json"
DEMO_BODY_FILE = "demo-connection.json"
ROTATION_PERMISSION = "Application.ReadWrite.OwnedBy"


@dataclass(frozen=True)
class DemoApp:
    standin_url: str
    ca_path: str
    tenant_id: str
    client_id: str

    def save(self, state_dir: Path, file: str = DEMO_APP_FILE) -> None:
        (state_dir / file).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, state_dir: Path, file: str = DEMO_APP_FILE) -> DemoApp:
        data = json.loads((state_dir / file).read_text(encoding="utf-8"))
        return cls(**{field: str(data[field]) for field in ("standin_url", "ca_path", "tenant_id", "client_id")})


def ensure_demo_app(admin: AdminClient, standin_url: str, ca_path: str, state_dir: Path,
                    persist: bool = False, tenant_id: str | None = None) -> DemoApp:
    """The demo tenant and app, able to rotate their own secret; with ``persist``, the persisted stand-in's found
    again. A new one is registered in ``tenant_id`` (the managed identity's; a new tenant when None). The running
    one's is in ``demo-app.json`` (the printed commands read it); the persisted one's also in
    ``persisted-demo-app.json``, which a run in memory leaves alone, so that the next persisted run finds it."""
    found: DemoApp | None = None
    for file in (PERSISTED_DEMO_APP_FILE, DEMO_APP_FILE) if persist else ():  # the second: a state dir of before
        try:
            previous = DemoApp.load(state_dir, file)
            admin.get_app(previous.tenant_id, previous.client_id)
            found = DemoApp(standin_url, ca_path, previous.tenant_id, previous.client_id)
            break
        except (OSError, ValueError, KeyError, TypeError, AdminError):
            continue
    if found is None:
        tenant = tenant_id or admin.add_tenant()
        app = admin.add_app(tenant, display_name="demo-app", roles=[ROTATION_PERMISSION])
        found = DemoApp(standin_url, ca_path, tenant, app["appId"])
    admin.grant_roles(found.tenant_id, found.client_id, [ROTATION_PERMISSION])
    details = admin.get_app(found.tenant_id, found.client_id)
    admin.add_owner(found.tenant_id, found.client_id, details["servicePrincipalId"])
    found.save(state_dir)
    if persist:
        found.save(state_dir, PERSISTED_DEMO_APP_FILE)
    return found


def write_demo_body(admin: AdminClient, demo: DemoApp, state_dir: Path, name: str) -> Path:
    """Add a new secret to the demo app; write a create body with it (0600) and return the file's path."""
    secret = admin.add_secret(demo.tenant_id, demo.client_id, display_name=f"demo secret for {name}")
    body = {
        "name": name,
        "method": "client-secret",
        "credentials": {"tenantId": demo.tenant_id, "clientId": demo.client_id, "clientSecret": secret["secretText"]},
        # Rotation on (every 30 days at 04:00 UTC), so `POST .../rotate` works on it at once.
        "isAutoRotationEnabled": True,
        "rotation": {"rotationInterval": 30, "rotateAt": "04:00"},
    }
    path = state_dir / DEMO_BODY_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(body, out, indent=2)
    os.replace(temporary, path)
    return path


def demo_connection_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localdev demo-connection",
        description="Write a create body for the demo app with a new secret; print the file's path.",
    )
    parser.add_argument("--name", default="demo-key-vault", help="the connection's name (default demo-key-vault)")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".localdev",
                        help="the state dir of `python -m localdev up` (default .localdev)")
    args = parser.parse_args(argv)
    try:
        demo = DemoApp.load(args.state_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"no demo app ({exc}): start the local environment first (python -m localdev up)", file=sys.stderr)
        return 1
    admin = AdminClient(demo.standin_url, demo.ca_path)
    try:
        print(write_demo_body(admin, demo, args.state_dir, args.name))
    except Exception as exc:  # the stand-in gone (httpx's errors) or answering an error
        print(f"no demo secret: {type(exc).__name__}: {exc} (is `python -m localdev up` running?)", file=sys.stderr)
        return 1
    finally:
        admin.close()
    return 0


def json_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localdev json", description="Print one field (a.b.0.c) of the JSON document on stdin."
    )
    parser.add_argument("path", help="dot-separated keys and list indexes, e.g. appConnection.id")
    args = parser.parse_args(argv)
    text = sys.stdin.read()
    try:
        value: Any = json.loads(text)
    except ValueError:
        print(f"not JSON: {text[:300]!r}", file=sys.stderr)
        return 1
    for key in args.path.split("."):
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            print(f"no {args.path!r} in {json.dumps(value)[:300]}", file=sys.stderr)
            return 1
    print(value if isinstance(value, str) else json.dumps(value))
    return 0
