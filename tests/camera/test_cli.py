"""`thingward camera simulate`: its help, and one-line errors (the journey test runs it for real)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.platform import init_data_dir

runner = CliRunner()


def test_help_says_what_the_camera_does() -> None:
    result = runner.invoke(app, ["camera", "simulate", "--help"])
    assert result.exit_code == 0
    for words in ("--device-api", "--interval", "--count", "--json", "motion event"):
        assert words in result.stdout


def test_a_bad_broker_address_is_one_line_of_error(tmp_path: Path) -> None:
    init_data_dir(tmp_path / "d")
    result = runner.invoke(
        app, ["camera", "simulate", "cam1", "--data-dir", str(tmp_path / "d"), "--mqtt", "nope", "--json"]
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": "--mqtt must be HOST:PORT, not 'nope'"}


def test_no_running_server_is_an_error_that_says_so(tmp_path: Path) -> None:
    init_data_dir(tmp_path / "d")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(
        app,
        [
            "camera",
            "simulate",
            "cam1",
            "--data-dir",
            str(tmp_path / "d"),
            "--api",
            f"https://127.0.0.1:{port}",
            "--json",
        ],
    )
    assert result.exit_code == 1
    assert "error" in json.loads(result.stdout.strip().splitlines()[-1])
