"""``shared.records.restore`` builds the same record as the class's ``__init__``: equal, hashed, shown and frozen
alike, its fields in the same order; and it refuses what ``__init__`` refuses."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.records import (
    Actor,
    Authorization,
    ConnectionRecord,
    HealthState,
    Notification,
    RotationState,
    restore,
)

AT = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
CASES: list[tuple[type[Any], dict[str, Any]]] = [
    (RotationState, {}),
    (RotationState, {"enabled": True, "interval_days": 30, "next_at": AT, "failures": 2, "revoke_original": True}),
    (HealthState, {"status": "healthy", "checked_at": AT}),
    (Actor, {"id": "i", "name": "n", "type": "user"}),
    (Authorization, {"oid": "o", "upn": None, "tenant_id": "t"}),
    (ConnectionRecord, {"app": "a", "id": "1", "name": "n", "method": "client-secret", "tenant_id": "t",
                        "client_id": None, "created_at": AT, "updated_at": AT, "secret_name": "s",
                        "secret_version": "v", "etag": "W/\"x\"", "health": HealthState(status="expired")}),
    (Notification, {"event": "e", "app": "a", "connection_id": "c", "name": "n", "status": "s", "message": None,
                    "at": AT, "id": "fixed"}),
]


@pytest.mark.parametrize(("cls", "values"), CASES)
def test_a_restored_record_is_the_record_its_class_builds(cls: type[Any], values: dict[str, Any]) -> None:
    built, restored = cls(**values), restore(cls, dict(values))
    assert type(restored) is cls
    assert restored == built and hash(restored) == hash(built) and repr(restored) == repr(built)
    assert list(vars(restored).items()) == list(vars(built).items())  # the same fields, in the same order
    assert dataclasses.asdict(restored) == dataclasses.asdict(built)
    assert pickle.loads(pickle.dumps(restored)) == built
    with pytest.raises(dataclasses.FrozenInstanceError):
        restored.extra = 1
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(restored, name, None)


def test_defaults_made_by_a_factory_are_made_for_each_record() -> None:
    values = {"app": "a", "id": "1", "name": "n", "method": "m", "tenant_id": "t", "client_id": None,
              "created_at": AT, "updated_at": AT, "secret_name": "s", "secret_version": "v"}
    first, second = restore(ConnectionRecord, dict(values)), restore(ConnectionRecord, dict(values))
    assert first.rotation == RotationState() and first.health == HealthState() and first == ConnectionRecord(**values)
    assert first.rotation is not second.rotation  # made anew, as __init__ makes it
    ids = {restore(Notification, {"event": "e", "app": "a", "connection_id": "c", "name": "n", "status": "s",
                                  "message": None, "at": AT}).id for _ in range(3)}
    assert len(ids) == 3  # Notification's id comes from its factory, anew each time


def test_it_refuses_what_init_refuses() -> None:
    with pytest.raises(TypeError):
        restore(Actor, {"id": "i", "name": "n"})  # a required field missing
    with pytest.raises(TypeError):
        restore(Actor, {"id": "i", "name": "n", "type": "user", "secret": "x"})  # a field the class has not
    with pytest.raises(TypeError):
        restore(int, {})  # not a dataclass
