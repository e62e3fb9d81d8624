"""The dependency locks are complete, hashed, and in step with what they are made from.

* Every Python lock (``requirements*.txt``, compiled by ``scripts/lock.sh`` from ``requirements*.in``) pins each
  package with ``==`` and at least one ``--hash=sha256:``, and holds exactly the direct pins of its ``.in`` file;
  the dev lock carries the runtime lock's packages at the same versions and hashes.
* The dev lock is the whole set: the venv the tests run in (installed from it with ``--require-hashes``) holds
  its exact versions, and each locked package's own requirements are locked too.
* package.json's versions are package-lock.json's, and every npm package is locked with an integrity hash.
* Install and deploy use the locks: ``--require-hashes`` in the install scripts, requirements.txt shipped to the
  Azure Functions remote build (not in .funcignore).

Out of date? ``bash scripts/lock.sh`` re-locks, ``bash scripts/install.sh`` reinstalls.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {  # .in file -> its lock
    "requirements.in": "requirements.txt",
    "requirements-dev.in": "requirements-dev.txt",
    "requirements-infra.in": "requirements-infra.txt",
    "requirements-lock.in": "requirements-lock.txt",
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([A-Za-z0-9._,-]+)\])?==([^\s;\\]+)")


def locked(lock: str) -> dict[str, tuple[str, frozenset[str]]]:
    """A lock's packages: canonical name -> (version, hashes). Fails on any requirement that is not a hashed pin."""
    return {name: (version, hashes) for name, (version, _, hashes) in pins_with_extras(lock).items()}


def pins_with_extras(lock: str) -> dict[str, tuple[str, frozenset[str], frozenset[str]]]:
    """A lock's packages: canonical name -> (version, extras it is locked with, hashes)."""
    text = (ROOT / lock).read_text().replace("\\\n", " ")
    packages: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{lock}: not a pinned requirement: {line!r}"
        assert ";" not in line, f"{lock}: platform markers are not expected (one platform, Linux CPython 3.11)"
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        assert hashes, f"{lock}: {match[1]} has no --hash"
        assert len(hashes) == line.count("--hash"), f"{lock}: {match[1]} has a hash that is not sha256"
        name = canonicalize_name(match[1])
        assert name not in packages, f"{lock}: {name} twice"
        extras = frozenset(canonicalize_name(extra) for extra in (match[2] or "").split(",") if extra)
        packages[name] = (match[3], extras, hashes)
    assert packages, f"{lock} is empty"
    return packages


def direct_pins(in_file: str) -> dict[str, str]:
    """The ``name==version`` lines of an .in file and the .in files it includes with ``-r``."""
    pins: dict[str, str] = {}
    for line in (ROOT / in_file).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-c "):
            continue
        if line.startswith("-r "):
            pins.update(direct_pins(line[3:].strip()))
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{in_file}: pin {line!r} with =="
        pins[canonicalize_name(requirement.name)] = specifiers[0].version
    return pins


@pytest.mark.parametrize(("in_file", "lock"), sorted(LOCKS.items()))
def test_each_lock_holds_its_in_files_pins_every_package_hashed(in_file, lock):
    packages = locked(lock)
    pins = direct_pins(in_file)
    assert pins
    stale = {name: (version, packages.get(name, ("missing", None))[0]) for name, version in pins.items()
             if packages.get(name, ("missing",))[0] != version}
    assert not stale, f"{lock} is out of date with {in_file} (wanted, locked): {stale}; run bash scripts/lock.sh"
    assert "bash scripts/lock.sh" in (ROOT / lock).read_text(), f"{lock} was not made by scripts/lock.sh"


def test_the_dev_lock_has_the_runtime_lock_at_the_same_versions_and_hashes():
    runtime, dev = locked("requirements.txt"), locked("requirements-dev.txt")
    different = {name: (pin[0], dev.get(name, ("missing",))[0])
                 for name, pin in runtime.items() if dev.get(name) != pin}
    assert not different, f"requirements-dev.txt differs from requirements.txt: {different}; run bash scripts/lock.sh"


def test_the_test_venv_is_exactly_the_dev_lock_and_the_lock_is_closed_under_requirements():
    dev = locked("requirements-dev.txt")
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    wrong = {name: (version, installed[name].version if name in installed else None)
             for name, (version, _) in dev.items() if name not in installed or installed[name].version != version}
    assert not wrong, f"the venv differs from requirements-dev.txt (locked, installed): {wrong}; run install.sh"
    missing: dict[str, list[str]] = {}
    for name in dev:
        for spec in installed[name].requires or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # another platform's, or an extra nobody asked for
            if canonicalize_name(requirement.name) not in dev:
                missing.setdefault(name, []).append(spec)
    assert not missing, f"requirements-dev.txt lacks dependencies of its packages: {missing}"


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-dev.txt"])
def test_a_package_that_another_asks_for_with_extras_is_locked_with_them(lock):
    """pip before 23.3 (Python 3.11's own pip is 23.2.1), in --require-hashes mode, looks a requirement with extras,
    such as kiota-http's ``httpx[http2]``, up in the index instead of taking the lock's plain pin: once a newer
    release is out it refuses the whole install as unpinned (every fresh install did on 2026-12-02, when httpx
    0.29.0 came out). A pin that carries the extras (lock.sh's --no-strip-extras) serves the request."""
    packages = pins_with_extras(lock)
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    unserved: dict[str, list[str]] = {}
    for name, (_, extras, _) in packages.items():
        for spec in installed[name].requires or []:
            requirement = Requirement(spec)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))
            asked = frozenset(canonicalize_name(extra) for extra in requirement.extras)
            target = canonicalize_name(requirement.name)
            if wanted and asked and not asked <= packages.get(target, ("", frozenset(), frozenset()))[1]:
                unserved.setdefault(name, []).append(spec)
    assert not unserved, f"{lock}: requirements with extras that no pin carries: {unserved}; run bash scripts/lock.sh"


def test_package_json_matches_package_lock_and_every_npm_package_is_hashed():
    manifest = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["lockfileVersion"] >= 2
    root = lock["packages"][""]
    for section in ("dependencies", "devDependencies"):
        assert root.get(section, {}) == manifest.get(section, {}), f"package-lock.json's {section} are stale"
        for name, version in manifest.get(section, {}).items():
            assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"package.json: pin {name} exactly, not {version!r}"
            assert lock["packages"][f"node_modules/{name}"]["version"] == version, f"{name} is not locked at {version}"
    unhashed = [path for path, entry in lock["packages"].items()
                if path and not entry.get("link") and not str(entry.get("integrity", "")).startswith("sha512-")]
    assert not unhashed, f"npm packages without an integrity hash: {unhashed[:10]}"


def test_install_and_deploy_use_the_locks():
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert re.search(r"pip install .*--require-hashes -r requirements-dev.txt", install)
    assert "npm ci" in install
    infra = (ROOT / "scripts" / "infra-check.sh").read_text()
    assert re.search(r"pip install .*--require-hashes -r \"\$REQS\"", infra)
    assert 'REQS="$ROOT/requirements-infra.txt"' in infra
    # Azure Functions' remote build installs requirements.txt: it must be deployed, and pip checks its hashes
    # (a requirements file with hashes turns hash-checking on for every package it installs).
    from localdev import package

    assert package.ignored_by("requirements.txt", package.ignore_patterns(ROOT)) == []
    assert "--hash=sha256:" in (ROOT / "requirements.txt").read_text()
