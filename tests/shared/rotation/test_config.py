"""Rotation settings in a request: the reference's UTC form, or a local time in a named zone."""

import pytest

from shared.errors import InvalidRequest
from shared.models import RotationIn, parse_model
from shared.rotation.config import parse_rotation


def config(body):
    return parse_rotation(parse_model(RotationIn, body, "/rotation"))


def test_reference_form_is_utc():
    parsed = config({"rotationInterval": 30, "rotateAtUtc": {"hours": 3, "minutes": 5}})
    assert (parsed.interval_days, parsed.rotate_at, parsed.time_zone) == (30, "03:05", "UTC")


def test_local_time_form_keeps_its_zone():
    parsed = config({"rotationInterval": 7, "rotateAt": "23:30", "timeZone": "Australia/Sydney"})
    assert (parsed.rotate_at, parsed.time_zone) == ("23:30", "Australia/Sydney")


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"rotationInterval": 0, "rotateAt": "03:00"}, "/rotation/rotationInterval"),
        ({"rotationInterval": 366, "rotateAt": "03:00"}, "/rotation/rotationInterval"),
        ({"rotationInterval": 1}, "/rotation"),
        ({"rotationInterval": 1, "rotateAt": "03:00", "rotateAtUtc": {"hours": 1, "minutes": 0}}, "/rotation"),
        ({"rotationInterval": 1, "rotateAt": "3am"}, "/rotation/rotateAt"),
        ({"rotationInterval": 1, "rotateAt": "03:00", "timeZone": "Nowhere/City"}, "/rotation/timeZone"),
        ({"rotationInterval": 1, "rotateAtUtc": {"hours": 24, "minutes": 0}}, "/rotation/rotateAtUtc/hours"),
        ({"rotationInterval": 1, "rotateAtUtc": {"hours": 1, "minutes": 0}, "timeZone": "Europe/Paris"},
         "/rotation/timeZone"),
    ],
)
def test_bad_rotation_settings_name_the_field(body, pointer):
    with pytest.raises(InvalidRequest) as caught:
        config(body)
    assert pointer in [e.pointer for e in caught.value.errors]
