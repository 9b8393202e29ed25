"""`thingward scan` through typer's runner against loopback listeners: the JSON shape, the table, the
--fail-on gate and the refusals."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from thingward.cli.main import app

runner = CliRunner()


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts and says nothing (an unknown service)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_json_shape_of_a_loopback_scan(listener: int) -> None:
    result = runner.invoke(
        app, ["scan", "127.0.0.1", "--ports", str(listener), "--no-udp", "--probe-timeout", "0.5", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "version",
        "started_at",
        "duration_s",
        "targets",
        "ports_scanned",
        "credentials_checked",
        "login_attempts",
        "hosts",
    }
    assert report["version"] == 1 and report["targets"] == ["127.0.0.1"] and report["ports_scanned"] == 1
    (host,) = report["hosts"]
    (port,) = host["ports"]
    assert host["address"] == "127.0.0.1"
    assert set(port) == {"port", "protocol", "service", "banner", "notes", "tls", "weak_credentials"}
    assert (port["port"], port["protocol"], port["service"], port["tls"]) == (listener, "tcp", "unknown", None)


def test_fail_on_gates_on_the_worst_finding(listener: int) -> None:
    args = ["scan", "127.0.0.1", "--ports", str(listener), "--no-udp", "--probe-timeout", "0.5", "--json"]
    assert runner.invoke(app, [*args, "--fail-on", "low"]).exit_code == 1  # an open port is a low finding
    assert runner.invoke(app, [*args, "--fail-on", "high"]).exit_code == 0
    bad = runner.invoke(app, [*args, "--fail-on", "severe"])
    assert bad.exit_code == 1 and "unknown severity 'severe'" in json.loads(bad.stdout)["error"]


def test_table_output_names_the_port_and_the_finding(listener: int) -> None:
    result = runner.invoke(app, ["scan", "127.0.0.1", "--ports", str(listener), "--no-udp", "--probe-timeout", "0.5"])
    assert result.exit_code == 0, result.stderr
    assert f"{listener}/tcp" in result.stdout and "NETWORK_OPEN_PORTS" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["203.0.113.5"], "outside loopback and the private ranges"),
        (["127.0.0.1", "--ports", "0-10"], "not a range within 1-65535"),
        (["224.0.0.1", "--allow-public"], "multicast"),
    ],
)
def test_refusals_are_one_clear_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["scan", *args, "--json"])
    assert result.exit_code == 1
    assert message in json.loads(result.stdout)["error"]
