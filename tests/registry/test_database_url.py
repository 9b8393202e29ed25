"""Which databases thingward takes, and the clear errors for one it cannot use (nothing is created then)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.errors import ConfigError
from thingward.platform import Platform, init_data_dir
from thingward.registry.db import display_url, parse_database_url


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_urls_mean_the_shipped_psycopg_driver(scheme: str) -> None:
    assert parse_database_url(f"{scheme}://thingward@db.example/thingward").drivername == "postgresql+psycopg"


@pytest.mark.parametrize("url", ["mysql://root@db/x", "postgresql+psycopg2://u@h/d", "oracle://u:p@h/d"])
def test_unsupported_databases_refused_with_what_to_use(url: str) -> None:
    with pytest.raises(ConfigError, match=r"unsupported database .* use sqlite:///PATH or postgresql://"):
        parse_database_url(url)


def test_a_url_that_is_not_one_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="not a URL") as caught:
        parse_database_url("hunter2-not-a-url")
    assert "hunter2" not in str(caught.value)


def test_unreachable_database_refused_before_anything_is_created(tmp_path: Path) -> None:
    url = f"postgresql://thingward:s3cret-pw@127.0.0.1:{_closed_port()}/thingward"
    with pytest.raises(ConfigError, match="cannot use the database") as caught:
        init_data_dir(tmp_path / "data", database_url=url)
    assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)
    assert not (tmp_path / "data").exists()


def test_cli_reports_a_database_gone_down_in_one_line(tmp_path: Path) -> None:
    # A data dir whose database is no longer reachable: a clean error, not a traceback.
    data = tmp_path / "data"
    init_data_dir(data)
    config = data / "thingward.toml"
    dead = f"postgresql://thingward@127.0.0.1:{_closed_port()}/thingward"
    config.write_text(config.read_text().replace("[database]\n", f'[database]\nurl = "{dead}"\n'))
    result = CliRunner().invoke(app, ["device", "list", "--data-dir", str(data), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"].startswith("the database failed: connection failed")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("database_backend", ["postgresql"], indirect=True)
def test_init_refuses_a_database_that_holds_a_registry_already(platform: Platform, tmp_path: Path) -> None:
    # A second data dir (a new audit key) on the first one's database would make its history unverifiable.
    url = platform.db.engine.url.render_as_string(hide_password=False)
    with pytest.raises(ConfigError, match="is not empty"):
        init_data_dir(tmp_path / "second", database_url=url)
    assert not (tmp_path / "second").exists()


def test_display_url_masks_the_password() -> None:
    assert display_url("postgresql://u:pw@h/d") == "postgresql+psycopg://u:***@h/d"
