"""Shared test plumbing: a log capture for the secret scan, installed before anything logs; the local
environment fixtures; the secret scan ordered after every other test of the run."""

import logging

import pytest

pytest_plugins = ["tests.local_environment"]

LAST = "tests/e2e/test_zz_secret_scan.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secret scan looks at the logs and tables of everything before it (end-to-end and reliability
    campaign alike), so it runs last whatever the order of collection."""
    items.sort(key=lambda item: item.nodeid.startswith(LAST))


class CaptureAll(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for record in self.records:
            try:
                out.append(record.getMessage())
            except Exception:  # a record whose arguments do not format still has its parts
                out.append(f"{record.msg} {record.args}")
            if record.exc_info:
                out.append(logging.Formatter().formatException(record.exc_info))
        return out


LOG_CAPTURE = CaptureAll()
logging.getLogger().addHandler(LOG_CAPTURE)
logging.getLogger().setLevel(logging.DEBUG)


@pytest.fixture(scope="session")
def log_capture() -> CaptureAll:
    return LOG_CAPTURE
