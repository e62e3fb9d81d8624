"""Runs after every other test (tests/conftest.py orders it last): no secret value the end-to-end tests and the
reliability campaign's fuzzing and hostile requests used is in Table Storage or in any log record. Its counts go
to ``.reliability/scan.json`` for ``python -m tests.reliability.report``."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def _table_dump(connection_string: str) -> str:
    from azure.data.tables import TableServiceClient

    dump = []
    with TableServiceClient.from_connection_string(connection_string) as service:
        for table in service.list_tables():
            for entity in service.get_table_client(table.name).list_entities():
                dump.append(json.dumps(dict(entity), default=str))
    return "\n".join(dump)


def test_no_secret_in_tables_or_logs(local_env, api, secrets_used, log_capture):
    # The suite wrote connections before this test (it sorts last); make sure it really did.
    assert len(secrets_used.values) > 10
    tables = _table_dump(local_env.azurite.connection_string)
    assert '"Kind": "connection"' in tables
    logs = "\n".join(log_capture.texts())
    assert logs
    leaked_tables = [s[:6] + "..." for s in secrets_used.values if s in tables]
    leaked_logs = [s[:6] + "..." for s in secrets_used.values if s in logs]
    from tests.reliability.harness import write_figures

    write_figures("scan", {"secretsScanned": len(secrets_used.values), "logRecords": len(log_capture.records),
                           "tableEntities": tables.count("\n") + 1, "secretsInLogsOrTables":
                           len(set(leaked_tables) | set(leaked_logs))})
    assert leaked_tables == []
    assert leaked_logs == []
