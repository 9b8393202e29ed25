"""The [audit] settings: defaults, environment overrides (a fraction of a minute too), refused values."""

from __future__ import annotations

from pathlib import Path

import pytest

from thingward.config import load_settings, render_default_config
from thingward.errors import ConfigError


def test_defaults_and_the_written_config_agree(tmp_path: Path) -> None:
    assert load_settings(tmp_path).audit.interval_minutes == 1440
    (tmp_path / "thingward.toml").write_text(render_default_config((), ""))
    settings = load_settings(tmp_path).audit
    assert (settings.interval_minutes, settings.keep_runs, settings.expiry_days) == (1440, 400, 30)


def test_environment_overrides_take_fractions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINGWARD_AUDIT__INTERVAL_MINUTES", "0.5")
    assert load_settings(tmp_path).audit.interval_minutes == 0.5


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("interval_minutes = -1", "interval_minutes"),
        ('interval_minutes = "daily"', "must be a number"),
        ("keep_runs = 0", "keep_runs"),
        ("sometimes = 1", "unknown setting"),
    ],
)
def test_bad_audit_settings_are_refused_with_the_reason(tmp_path: Path, line: str, says: str) -> None:
    (tmp_path / "thingward.toml").write_text(f"[audit]\n{line}\n")
    with pytest.raises(ConfigError, match=says):
        load_settings(tmp_path)
