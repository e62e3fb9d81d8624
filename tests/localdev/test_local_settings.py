"""local.settings.json: file values fill the environment in, the environment wins."""

import json
from pathlib import Path

import pytest

from localdev.local_settings import LocalSettingsError, load_local_settings, read_local_settings


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_file_values_fill_in_and_environment_wins(tmp_path: Path) -> None:
    path = write(tmp_path, {"IsEncrypted": False, "Values": {"A": "from-file", "B": "from-file"}})
    environ = {"A": "from-env"}
    applied = load_local_settings(path, environ)
    assert environ == {"A": "from-env", "B": "from-file"}
    assert applied == {"B": "from-file"}


def test_empty_environment_value_still_wins(tmp_path: Path) -> None:
    environ = {"A": ""}
    load_local_settings(write(tmp_path, {"Values": {"A": "x"}}), environ)
    assert environ == {"A": ""}


def test_missing_file_sets_nothing(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert load_local_settings(tmp_path / "local.settings.json", environ) == {}
    assert environ == {}


def test_non_string_values_become_strings(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    load_local_settings(write(tmp_path, {"Values": {"N": 5, "T": True, "F": 1.5, "Z": None}}), environ)
    assert environ == {"N": "5", "T": "true", "F": "1.5", "Z": ""}


def test_host_section_is_read(tmp_path: Path) -> None:
    settings = read_local_settings(write(tmp_path, {"Values": {}, "Host": {"LocalHttpPort": 7072}}))
    assert settings.host == {"LocalHttpPort": 7072}


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"Values": {"A": "1"}}).encode())
    environ: dict[str, str] = {}
    load_local_settings(path, environ)
    assert environ == {"A": "1"}


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text('{"Values": {"A": "1",}}', encoding="utf-8")
    with pytest.raises(LocalSettingsError, match=r"local\.settings\.json is not valid JSON") as caught:
        load_local_settings(path, {})
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"IsEncrypted": True, "Values": {"A": "opaque"}}, "is encrypted"),
        ([1, 2], "must hold a JSON object"),
        ({"Values": ["A"]}, "'Values' must be a JSON object"),
        ({"Values": {"A": {"nested": 1}}}, "Values.A must be a string"),
        ({"Values": {}, "Host": "x"}, "'Host' must be a JSON object"),
    ],
)
def test_unusable_files_are_clear_errors(tmp_path: Path, document: object, message: str) -> None:
    environ: dict[str, str] = {}
    with pytest.raises(LocalSettingsError, match=message):
        load_local_settings(write(tmp_path, document), environ)
    assert environ == {}
