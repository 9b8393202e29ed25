"""A data dir from an older thingward: refused with what to do, then upgraded by `thingward db upgrade`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from alembic import command
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.pki.ca import public_key_sha256
from thingward.pki.keystore import build_csr_with_key
from thingward.platform import Platform
from thingward.registry import things
from thingward.registry.audit_log import Actor, list_events
from thingward.registry.db import alembic_config, head_revision
from thingward.registry.models import Certificate

pytestmark = pytest.mark.both_databases


def test_an_old_schema_is_refused_until_upgraded(tmp_path: Path, database_url: str | None) -> None:
    runner = CliRunner()
    data = str(tmp_path / "d")
    database = ["--database-url", database_url] if database_url else []
    assert runner.invoke(app, ["init", "--data-dir", data, *database]).exit_code == 0
    platform = Platform.open(data)
    key = ec.generate_private_key(ec.SECP256R1())
    with platform.db.session() as session:
        things.add_thing(session, Actor("test", "pytest"), "cam1")
        token = things.create_enrollment_token(session, Actor("test", "pytest"), "cam1", dt.timedelta(hours=1)).token
    platform.enroll(token, build_csr_with_key(key, "cam1"), "test")
    cfg = alembic_config()
    with platform.db.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0002")  # as an earlier thingward left it, with a device enrolled
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
            # Migration 0007 filled in the key hash of the certificate enrolled before it.
            [certificate] = session.execute(select(Certificate)).scalars().all()
            assert certificate.public_key_sha256 == public_key_sha256(key.public_key())
            events = [e for e in list_events(session) if e.action == "platform.upgrade_schema"]
        assert len(events) == 1 and json.loads(events[0].detail) == {"from": "0002", "to": head_revision()}
    finally:
        platform.close()
