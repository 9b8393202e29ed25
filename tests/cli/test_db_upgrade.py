"""A data dir from an older thingward: refused with what to do, then upgraded by `thingward db upgrade`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.platform import Platform
from thingward.registry.audit_log import list_events
from thingward.registry.db import alembic_config, head_revision

pytestmark = pytest.mark.both_databases


def test_an_old_schema_is_refused_until_upgraded(tmp_path: Path, database_url: str | None) -> None:
    runner = CliRunner()
    data = str(tmp_path / "d")
    database = ["--database-url", database_url] if database_url else []
    assert runner.invoke(app, ["init", "--data-dir", data, *database]).exit_code == 0
    platform = Platform.open(data)
    cfg = alembic_config()
    with platform.db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0002")  # as an earlier thingward left it
    platform.close()

    refused = runner.invoke(app, ["device", "list", "--data-dir", data, "--json"])
    assert refused.exit_code == 1
    assert "schema is at 0002" in refused.stderr and "thingward db upgrade" in refused.stderr
    status = json.loads(runner.invoke(app, ["db", "status", "--data-dir", data, "--json"]).stdout)
    assert (status["revision"], status["head"], status["current"]) == ("0002", head_revision(), False)

    upgraded = json.loads(runner.invoke(app, ["db", "upgrade", "--data-dir", data, "--json"]).stdout)
    assert upgraded == {"from": "0002", "to": head_revision(), "changed": True}
    again = json.loads(runner.invoke(app, ["db", "upgrade", "--data-dir", data, "--json"]).stdout)
    assert again["changed"] is False
    assert runner.invoke(app, ["device", "list", "--data-dir", data, "--json"]).exit_code == 0
    platform = Platform.open(data)
    try:
        with platform.db.read() as session:
            events = [e for e in list_events(session) if e.action == "platform.upgrade_schema"]
        assert len(events) == 1 and json.loads(events[0].detail) == {"from": "0002", "to": head_revision()}
    finally:
        platform.close()
