"""Parse Bicep (pycep-parser, the parser checkov uses) and YAML text; run by the .venv-infra interpreter.

pycep-parser and PyYAML live in .venv-infra (see scripts/infra-check.sh), not in the test venv, so
the tests send the texts here and get the parse trees back as JSON:

    stdin:  {"<name>.bicep": "<text>", "<name>.yaml": "<text>", ...}
    stdout: {"<name>": {"ok": <tree>} | {"error": "<message>"}, ...}

pycep-parser 0.5.1 predates Bicep's `extension <alias>` statement (it imports a Bicep extension such as
microsoftGraphV1). Each such line is turned into a comment before parsing, so line numbers hold, and its
alias is kept in the tree as "extensions": [...] for the rules to check. Nothing else is rewritten.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

EXTENSION_STATEMENT = re.compile(r"^extension[ \t]+(\S+)[ \t]*$", re.MULTILINE)


def without_extension_statements(text: str) -> tuple[str, list[str]]:
    """The text with each `extension <alias>` line commented out, and the aliases in order."""
    aliases = EXTENSION_STATEMENT.findall(text)
    return EXTENSION_STATEMENT.sub(lambda match: "// " + match.group(0), text), aliases


def main() -> int:
    import yaml  # type: ignore[import-untyped]  # .venv-infra only
    from pycep import BicepParser  # type: ignore[import-not-found]  # .venv-infra only

    texts: dict[str, str] = json.load(sys.stdin)
    parser = BicepParser()
    out: dict[str, dict[str, Any]] = {}
    for name, text in texts.items():
        try:
            if name.endswith((".yaml", ".yml")):
                tree = yaml.safe_load(text)
            else:
                bicep, aliases = without_extension_statements(text)
                tree = parser.parse(text=bicep)
                if aliases:
                    tree["extensions"] = aliases
            out[name] = {"ok": tree}
        except Exception as exc:  # a parse error is a result, reported per text
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    json.dump(out, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
