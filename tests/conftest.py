"""Shared test plumbing: a log capture for the secret scan, installed before anything logs."""

import logging

import pytest


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
