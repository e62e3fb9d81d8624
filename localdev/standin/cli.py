"""``python -m localdev.standin [--port 8443] [--ca-dir .localdev] [--tenant GUID]... [--verbose]``: run the
stand-in in the foreground (also ``python -m localdev standin``), printing its URL and CA file, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from localdev.standin.server import StandIn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localdev.standin", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--ca-dir", type=Path, default=None, help="folder for the CA, reused across restarts")
    parser.add_argument("--tenant", action="append", default=[], help="create this tenant (GUID) at start")
    parser.add_argument("--verbose", action="store_true", help="log request lines to stderr")
    args = parser.parse_args(argv)
    standin = StandIn(port=args.port, ca_dir=args.ca_dir, verbose=args.verbose).start()
    for tenant in args.tenant:
        standin.admin.add_tenant(tenant)
    print(f"stand-in listening on {standin.url}", flush=True)
    print(f"CA certificate: {standin.ca_path}", flush=True)
    print(f"admin: {standin.url}/_admin/  (Ctrl-C to stop)", flush=True)
    try:
        standin.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
