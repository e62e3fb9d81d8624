"""The JSON a read answers is pinned byte for byte: the public view of connections of every shape, as the list
and get functions serialize it, is the body the service answered before the read path was made cheaper
(``test_views_body.json``, written by that code from these same records). A change of the view's code that
changes one byte of an answer fails here; a deliberate change of the API rewrites the file
(``.venv/bin/python -m tests.shared.test_views_body``) and says so in review."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from shared.records import Actor, Authorization, ConnectionRecord, HealthState, RotationState

GOLDEN = Path(__file__).with_suffix(".json")
T0 = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)


def records() -> list[ConnectionRecord]:
    """Connections of every shape the view answers: with and without rotation, health, OAuth consent,
    optional fields, non-ASCII text, whole seconds and datetimes in another zone."""
    actor = Actor("0d6f0c1e-1111-4222-8333-444455556666", "Zoë O'Neil \"admin\" ✓", "user", "AppConnections.Reader")
    app_actor = Actor("app-id", "ci pipeline", "app")
    paris = timezone(timedelta(hours=1))
    built = []
    for n in range(24):
        at = T0 + timedelta(minutes=n, microseconds=n * 7)
        if n % 6 == 5:
            at = at.replace(microsecond=0)  # whole seconds: no fraction in the answer
        if n % 8 == 7:
            at = at.astimezone(paris)  # another zone: answered in UTC
        record = ConnectionRecord(
            app="azure-key-vault" if n % 3 else "microsoft-graph", id=f"{n + 1:032x}", name=f"conn-{n:02d}",
            method="client-secret", tenant_id=f"00000000-0000-0000-0000-{1000 + n:012d}",
            client_id=f"00000000-0000-0000-0000-{2000 + n:012d}", created_at=at, updated_at=at + timedelta(seconds=1),
            secret_name=f"conn-{n}", secret_version=f"v{n}", created_by=actor,
            updated_by=app_actor if n % 2 else actor, etag=f"W/\"datetime'{n}'\"")
        if n % 3 == 0:
            record = record.evolve(description='Quotes \' and " and ünïcødé ✓ and a\nnew line \u2028 \x7f',
                                   version=n + 2)
        if n % 4 == 1:
            record = record.evolve(
                status="invalid", status_message="AADSTS7000215: Invalid client secret provided.",
                last_validated_at=at + timedelta(hours=1),
                rotation=RotationState(
                    enabled=n % 8 == 1, interval_days=30, rotate_at="03:00", time_zone="Europe/Paris",
                    status="succeeded", message="rotated", last_rotated_at=at, last_attempt_at=at,
                    next_at=at + timedelta(days=30), schedule_key=f"sk{n}", failures=2, key_id=f"key-{n}",
                    managed=True, rotation_id="rot-1", step="created", trigger="manual", started_at=at, attempt=3),
                health=HealthState(status="healthy", checked_at=at, message="ok",
                                   credential_expires_at=at + timedelta(days=90), next_check_at=at))
        if n % 5 == 2:
            record = record.evolve(method="oauth", authorized_by=Authorization(
                "oid-" + str(n), "user@contoso.example", f"00000000-0000-0000-0000-{3000 + n:012d}"))
        if n % 5 == 3:
            record = record.evolve(method="certificate", client_id=None,
                                   health=HealthState(status="expired", message="the certificate expired"))
        if n % 7 == 4:
            record = record.evolve(name=f"o'brien's connection {n}", authorized_by=Authorization("oid", None, None),
                                   created_by=None, updated_by=None)
        if n == 23:
            record = record.evolve(rotation=RotationState(status="disabled"), health=HealthState(status="failing"))
        built.append(record)
    return built


def bodies() -> bytes:
    """The list page's body, then each connection's GET body, one a line."""
    from shared.functions.http import json_response
    from shared.views import to_response

    all_records = records()
    answers = [json_response({"appConnections": [to_response(r) for r in all_records],
                              "continuationToken": "eyJQYXJ0aXRpb25LZXkiOiJhIn0"}).get_body()]
    answers += [json_response({"appConnection": to_response(r)}).get_body() for r in all_records]
    return b"\n".join(answers) + b"\n"


def test_the_answers_of_a_read_are_the_bytes_they_were() -> None:
    expected = GOLDEN.read_bytes().split(b"\n")
    got = bodies().split(b"\n")
    assert len(got) == len(expected) == 26
    for index, (line, pinned) in enumerate(zip(got, expected, strict=True)):
        assert line == pinned, f"answer {index} differs"


if __name__ == "__main__":  # rewrite the pinned answers (a deliberate change of the API)
    sys.stdout.write(f"{len(bodies())} bytes written to {GOLDEN}\n")
    GOLDEN.write_bytes(bodies())
