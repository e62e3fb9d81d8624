"""What is deployed: the files of the deployment package, and the bytecode they ship with.

azd and Core Tools zip the project root without what ``.funcignore`` lists (gitignore syntax). On Flex
Consumption the package is mounted read-only, so Python cannot write ``__pycache__`` there: every cold instance
would compile the app's own modules from source before its first request. The ``prepackage`` hook of
``azure.yaml`` runs ``python -m localdev.package --precompile``, which compiles ``function_app.py`` and ``shared/``
into ``__pycache__`` beside them, and the package carries them.

The bytecode is *checked-hash* (PEP 552): Python uses it only while the source's hash matches, so a file edited
after the hook is compiled again, never run stale, and file times (which zip rounds to two seconds) do not
matter. A ``cpython-311`` file serves only Python 3.11, the version the template deploys (``infra/app/api.bicep``).

    python -m localdev.package --precompile     # the hook
    python -m localdev.package --list           # the files the package holds
"""

from __future__ import annotations

import argparse
import compileall
import fnmatch
import py_compile
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("function_app.py", "shared")
DEPLOYED_PYTHON = (3, 11)  # infra/app/api.bicep's runtime: the only version whose bytecode the package may carry


def ignore_patterns(root: Path = ROOT) -> list[str]:
    """The patterns of ``root/.funcignore``, without blank lines and comments."""
    lines = (root / ".funcignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored_by(path: str, patterns: list[str]) -> list[str]:
    """The patterns that leave ``path`` (relative, with ``/``) out of the package: one with a slash is relative to
    the root, one without matches any segment of the path, as in gitignore."""
    parts = path.split("/")
    hits = []
    for line in patterns:
        if line.startswith("!"):
            raise ValueError(f".funcignore: a negated pattern ({line}) is not understood here")
        anchored = "/" in line.rstrip("/")
        pattern = line.strip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)] if anchored else parts
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            hits.append(line)
    return hits


def packaged_files(root: Path = ROOT) -> Iterator[Path]:
    """The files under ``root`` the deployment package holds (relative paths)."""
    patterns = ignore_patterns(root)
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not ignored_by(relative.as_posix(), patterns):
            yield relative


def precompile(root: Path = ROOT) -> bool:
    """Compile the app's own modules under ``root`` into checked-hash bytecode beside them; False on a syntax
    error (compileall prints it)."""
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    ok = bool(compileall.compile_file(root / SOURCES[0], quiet=1, force=True, invalidation_mode=mode))
    return bool(compileall.compile_dir(root / SOURCES[1], quiet=1, force=True, invalidation_mode=mode)) and ok


def build(destination: Path, root: Path = ROOT) -> Path:
    """The deployment package of ``root`` unpacked into ``destination``, with its bytecode, as Azure runs it."""
    for relative in packaged_files(root):
        if "__pycache__" in relative.parts:
            continue  # compiled afresh below, never a developer's leftovers
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    if not precompile(destination):
        raise SystemExit("the deployment package does not compile")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--precompile", action="store_true", help="compile function_app.py and shared/")
    action.add_argument("--list", action="store_true", help="print the files the package holds")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(path.as_posix() for path in packaged_files()))
        return 0
    if sys.version_info[:2] != DEPLOYED_PYTHON:  # its bytecode would be of no use there: said, not done silently
        running, deployed = ".".join(map(str, sys.version_info[:2])), ".".join(map(str, DEPLOYED_PYTHON))
        print(f"localdev.package: this is Python {running}, and the Function App runs Python {deployed}, which "
              f"reads only bytecode of its own version: nothing was precompiled. The package works all the same "
              f"(a cold instance compiles the app, more slowly); to ship it compiled, run the hook with Python "
              f"{deployed}: python{deployed} -m localdev.package --precompile", file=sys.stderr)
        return 0
    return 0 if precompile() else 1


if __name__ == "__main__":
    sys.exit(main())
