"""Parse Bicep (pycep-parser, the parser checkov uses) and YAML text; run by the .venv-infra interpreter.

pycep-parser and PyYAML live in .venv-infra (see scripts/infra-check.sh), not in the test venv, so
the tests send the texts here and get the parse trees back as JSON:

    stdin:  {"<name>.bicep": "<text>", "<name>.yaml": "<text>", ...}
    stdout: {"<name>": {"ok": <tree>} | {"error": "<message>"}, ...}
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> int:
    import yaml  # type: ignore[import-untyped]  # .venv-infra only
    from pycep import BicepParser  # type: ignore[import-not-found]  # .venv-infra only

    texts: dict[str, str] = json.load(sys.stdin)
    parser = BicepParser()
    out: dict[str, dict[str, Any]] = {}
    for name, text in texts.items():
        try:
            tree = yaml.safe_load(text) if name.endswith((".yaml", ".yml")) else parser.parse(text=text)
            out[name] = {"ok": tree}
        except Exception as exc:  # a parse error is a result, reported per text
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
