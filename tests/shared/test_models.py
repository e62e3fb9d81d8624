"""Request models: field errors point at the field and never echo what was sent."""

import pytest

from shared.apps import Method
from shared.errors import InvalidRequest
from shared.models import CreateConnectionIn, parse_credentials, parse_method, parse_model

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0f3c1a2b-1111-4222-8333-444455556666"


def pointers(error: InvalidRequest) -> dict[str, str]:
    return {e.pointer: e.detail for e in error.errors}


def test_a_valid_create_body_parses():
    body = {"name": "prod-vault", "method": "client-secret", "credentials": {}}
    assert parse_model(CreateConnectionIn, body).name == "prod-vault"


@pytest.mark.parametrize("name", ["", "Prod", "has space", "under_score", "x" * 65, "é"])
def test_names_outside_the_slug_pattern_are_refused(name):
    with pytest.raises(InvalidRequest) as caught:
        parse_model(CreateConnectionIn, {"name": name, "method": "client-secret", "credentials": {}})
    assert "/name" in pointers(caught.value)


def test_a_name_the_paths_cannot_read_by_is_refused():
    """(Review F.) ``GET .../azure-client-secrets/connection-name/clients`` is the clients route (the host prefers
    its literal segments), so a connection named ``clients`` could never be read by name."""
    with pytest.raises(InvalidRequest) as caught:
        parse_model(CreateConnectionIn, {"name": "clients", "method": "client-secret", "credentials": {}})
    assert "another route" in pointers(caught.value)["/name"]
    assert parse_model(CreateConnectionIn, {"name": "clients-2", "method": "client-secret",
                                            "credentials": {}}).name == "clients-2"


def test_unknown_and_missing_fields_are_named():
    with pytest.raises(InvalidRequest) as caught:
        parse_model(CreateConnectionIn, {"method": "client-secret", "credentials": {}, "colour": "red"})
    assert pointers(caught.value) == {"/name": "is required", "/colour": "is not a known field"}


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidRequest):
        parse_model(CreateConnectionIn, ["name"])


def test_types_are_strict():
    with pytest.raises(InvalidRequest) as caught:
        parse_model(CreateConnectionIn, {"name": 5, "method": "client-secret", "credentials": {}})
    assert pointers(caught.value)["/name"] == "must be a string"


def test_client_secret_credentials_need_guids_and_never_echo_the_secret():
    secret = "super-secret-value-that-must-not-leak"
    with pytest.raises(InvalidRequest) as caught:
        parse_credentials(
            Method.CLIENT_SECRET,
            {"tenantId": "not-a-guid", "clientId": CLIENT, "clientSecret": secret, "clientSecretKeyId": secret},
        )
    found = pointers(caught.value)
    assert set(found) == {"/credentials/tenantId", "/credentials/clientSecretKeyId"}
    assert secret not in str(caught.value.to_problem())


def test_guids_are_normalised_to_lowercase():
    parsed = parse_credentials(
        Method.CLIENT_SECRET, {"tenantId": TENANT.upper(), "clientId": CLIENT, "clientSecret": "s"}
    )
    assert parsed.tenantId == TENANT


def test_control_characters_in_a_secret_are_refused():
    with pytest.raises(InvalidRequest) as caught:
        parse_credentials(Method.CLIENT_SECRET, {"tenantId": TENANT, "clientId": CLIENT, "clientSecret": "a\x00b"})
    assert pointers(caught.value) == {"/credentials/clientSecret": "must not contain control characters"}


@pytest.mark.parametrize("description", ["a\x00b", "a\x1bb", "a\x7fb", "invoice \u202egnp.exe", "a\u2066b\u2069"])
def test_control_and_bidirectional_override_characters_in_a_description_are_refused(description):
    body = {"name": "n", "description": description, "method": "client-secret", "credentials": {}}
    with pytest.raises(InvalidRequest) as caught:
        parse_model(CreateConnectionIn, body)
    assert pointers(caught.value) == {"/description": "must not contain control characters"}


@pytest.mark.parametrize("description", ["line one\nline two\ttab", "zero\u200bwidth",
                                         "family \U0001f468\u200d\U0001f469", "\u05e9\u05dc\u05d5\u05dd marked \u200f"])
def test_text_with_newlines_joiners_and_other_scripts_is_a_description(description):
    body = {"name": "n", "description": description, "method": "client-secret", "credentials": {}}
    assert parse_model(CreateConnectionIn, body).description == description


def test_certificate_credentials_need_both_pems():
    with pytest.raises(InvalidRequest) as caught:
        parse_credentials(Method.CERTIFICATE, {"tenantId": TENANT, "clientId": CLIENT, "certificateBody": "x"})
    assert pointers(caught.value) == {"/credentials/privateKey": "is required"}


def test_oauth_has_no_credentials_in_a_request():
    with pytest.raises(InvalidRequest) as caught:
        parse_credentials(Method.OAUTH, {})
    assert "/method" in pointers(caught.value)


@pytest.mark.parametrize("raw", ["password", "CLIENT-SECRET", ""])
def test_unknown_methods_list_the_allowed_ones(raw):
    with pytest.raises(InvalidRequest) as caught:
        parse_method((Method.CLIENT_SECRET, Method.CERTIFICATE), raw)
    assert pointers(caught.value) == {"/method": "must be one of: client-secret, certificate"}


@pytest.mark.parametrize("field", ["name", "tenantId"])
def test_a_value_with_a_trailing_newline_is_refused(field):
    """``re.match`` with ``$`` also takes a value followed by a newline; the field rules match the whole value."""
    from shared.fields import guid, name

    rule = name if field == "name" else guid
    valid = "prod-vault" if field == "name" else "00000000-0000-0000-0000-000000000000"
    assert rule(valid) == valid
    with pytest.raises(ValueError):
        rule(valid + "\n")


def test_every_field_error_of_a_rotation_schedule_comes_back_at_once():
    """(Review K.) The interval's error came first, then the time of day's once that was fixed, then the zone's."""
    from shared.errors import InvalidRequest
    from shared.models import UpdateConnectionIn, parse_model

    with pytest.raises(InvalidRequest) as refused:
        parse_model(UpdateConnectionIn, {"rotation": {"timeZone": "Mars/Base", "rotateAt": "25:61",
                                                      "rotationInterval": -1}})
    assert [e.pointer for e in refused.value.errors] == [
        "/rotation/rotationInterval", "/rotation/rotateAt", "/rotation/timeZone"]
    assert "Mars" not in str(refused.value.errors)  # no value echoed


def test_a_whole_number_written_with_a_fraction_is_an_integer() -> None:
    """(Review FB 7.) JSON Schema 2020-12, which the document uses, counts ``30.0`` as an integer: so does the
    service. A fraction, a string or a boolean is still not one."""
    from shared.models import RotationIn

    rotation = parse_model(RotationIn, {"rotationInterval": 30.0, "rotateAtUtc": {"hours": 1.0, "minutes": 0.0}})
    assert rotation.rotationInterval == 30 and type(rotation.rotationInterval) is int
    assert rotation.rotateAtUtc is not None and (rotation.rotateAtUtc.hours, rotation.rotateAtUtc.minutes) == (1, 0)
    for wrong in (30.5, "30", True):
        with pytest.raises(InvalidRequest) as caught:
            parse_model(RotationIn, {"rotationInterval": wrong})
        assert pointers(caught.value) == {"/rotationInterval": "must be an integer"}
    with pytest.raises(InvalidRequest) as caught:
        parse_model(RotationIn, {"rotationInterval": 366.0})
    assert pointers(caught.value) == {"/rotationInterval": "must be at most 365"}


def test_the_document_says_a_patch_name_is_a_string_when_given() -> None:
    """(Review FB 8.) The update refuses ``"name": null`` (a connection needs a name); the schema allowed it."""
    import jsonschema_rs

    from shared.models import UpdateConnectionIn

    schema = UpdateConnectionIn.model_json_schema()
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid({}) and validator.is_valid({"name": "prod"})
    assert not validator.is_valid({"name": None})
    assert "name" not in schema.get("required", [])


def test_the_credentials_of_a_create_or_a_change_are_never_in_a_repr() -> None:
    """(Review of secret hygiene, 5.) The typed credential models hid them; the request models did not."""
    from shared.models import CreateConnectionIn, UpdateConnectionIn

    secret = "Rp8Q~" + "s" * 30
    created = CreateConnectionIn.model_validate({"name": "n", "method": "client-secret",
                                                 "credentials": {"clientSecret": secret}})
    changed = UpdateConnectionIn.model_validate({"credentials": {"privateKey": secret}})
    for model in (created, changed):
        assert secret not in repr(model) and secret not in str(model)
    assert created.credentials == {"clientSecret": secret}
