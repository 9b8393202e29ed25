"""Settings: defaults, the file, environment overrides, and clear errors for what cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest

from thingward.config import load_settings
from thingward.errors import ConfigError


def test_defaults_keep_plaintext_off(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.mqtt.plaintext_port is None
    assert settings.mqtt.port == 8883
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'thingward.db'}"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thingward.toml").write_text("[mqtt]\nport = 9000\n")
    assert load_settings(tmp_path).mqtt.port == 9000
    monkeypatch.setenv("THINGWARD_MQTT__PORT", "9001")
    assert load_settings(tmp_path).mqtt.port == 9001


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINGWARD_DATA_DIR", str(tmp_path / "x"))
    assert load_settings(None).data_dir == (tmp_path / "x").resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nprot = 1\n", r"unknown setting\(s\) in \[mqtt\]: prot"),
        ("[brokr]\n", r"unknown section\(s\): brokr"),
        ("[mqtt\n", "not valid TOML"),
        ('[mqtt]\nport = "many"\n', "must be an integer"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "thingward.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path)


def test_unknown_environment_setting_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINGWARD_MQTT__PROT", "1")
    with pytest.raises(ConfigError, match="names no setting"):
        load_settings(tmp_path)


def test_database_url_from_file_then_either_environment_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THINGWARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("THINGWARD_DATABASE__URL", raising=False)
    (tmp_path / "thingward.toml").write_text('[database]\nurl = "postgresql://a@db/file"\n')
    assert load_settings(tmp_path).database_url == "postgresql://a@db/file"
    monkeypatch.setenv("THINGWARD_DATABASE__URL", "postgresql://a@db/section")
    assert load_settings(tmp_path).database_url == "postgresql://a@db/section"
    monkeypatch.setenv("THINGWARD_DATABASE_URL", "postgresql://a@db/alias")  # the spelling wins
    assert load_settings(tmp_path).database_url == "postgresql://a@db/alias"
