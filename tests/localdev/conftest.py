"""The stand-in of the tests of ``localdev.standin``: one per test module, trusted by the SDKs while it runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localdev.standin import StandIn


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    server = StandIn().start()
    patch = pytest.MonkeyPatch()
    patch.setenv("SSL_CERT_FILE", str(server.ca_path))
    patch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_path))
    try:
        yield server
    finally:
        patch.undo()
        server.stop()
