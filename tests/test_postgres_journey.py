"""The journey on PostgreSQL: `thingward init --database-url` and `thingward serve` as real processes.

A device enrolls through the real HTTPS API, publishes over mutual TLS, and its messages land in the
PostgreSQL database; a revocation made by another CLI process reaches the server through the audit-log
watcher and drops the live session. The password travels in $PGPASSWORD, never in the config file.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.postgres import DATABASE, PostgresServer
from lab.served import THINGWARD, serving, wait_for
from thingward.device.client import Device, DeviceConnectError
from thingward.device.enroll import enroll


@dataclass
class Served:
    data_dir: Path
    env: dict[str, str]
    mqtt_host: str
    mqtt_port: int
    api: str
    ca: Path
    schema: str


def _cli(served_env: dict[str, str], data_dir: Path, *args: str) -> dict:
    result = subprocess.run(
        [*THINGWARD, *args, "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=served_env,
    )
    assert result.returncode == 0, f"thingward {' '.join(args)} failed: {result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def served(postgres: PostgresServer, tmp_path: Path) -> Iterator[Served]:
    schema = postgres.create_schema()
    env = {**os.environ, **postgres.client_env()}
    env.pop("THINGWARD_DATABASE_URL", None)
    data_dir = tmp_path / "data"
    try:
        _cli(env, data_dir, "init", "--database-url", postgres.url(schema, with_password=False))
        with serving(data_dir, env) as server:
            yield Served(data_dir, env, server.mqtt_host, server.mqtt_port, server.api, server.ca, schema)
    finally:
        postgres.drop_schema(schema)


def _stored_in_postgres(postgres: PostgresServer, schema: str, thing: str) -> list[str]:
    with postgres.admin(DATABASE, schema) as conn:
        rows = conn.execute(
            "SELECT m.topic FROM messages m JOIN things t ON t.id = m.thing_id WHERE t.name = %s ORDER BY m.id",
            (thing,),
        ).fetchall()
    return [str(topic) for (topic,) in rows]


def test_init_and_serve_on_postgresql_enroll_publish_store_revoke(
    served: Served, postgres: PostgresServer, tmp_path: Path
) -> None:
    config = (served.data_dir / "thingward.toml").read_text()
    assert f"search_path%3D{served.schema}" in config and postgres.password not in config
    assert not (served.data_dir / "thingward.db").exists()  # nothing went to SQLite

    token = _cli(served.env, served.data_dir, "device", "add", "cam1")["enrollment_token"]
    identity = enroll(served.api, token, served.ca, tmp_path / "cam1")
    device = Device.from_dir(tmp_path / "cam1", "cam1", host=served.mqtt_host, port=served.mqtt_port)
    device.connect(timeout=10)
    try:
        device.publish_telemetry({"temperature_c": 41.5}).wait_for_publish(5)
        device.publish_event("motion", {"zone": "front door"}).wait_for_publish(5)
        assert wait_for(lambda: len(_stored_in_postgres(postgres, served.schema, "cam1")) == 2, 10)
        assert _stored_in_postgres(postgres, served.schema, "cam1") == [
            "things/cam1/telemetry",
            "things/cam1/events/motion",
        ]
        # A revocation from another process reaches the server through the audit log in PostgreSQL.
        revoked = _cli(served.env, served.data_dir, "device", "revoke", "cam1")
        assert len(revoked["revoked_serials"]) == 1
        assert wait_for(lambda: not device.connected, 3), "live session not dropped after revocation"
    finally:
        device.close()
    again = Device.from_dir(identity.certificate.parent, "cam1", host=served.mqtt_host, port=served.mqtt_port)
    with pytest.raises(DeviceConnectError):
        again.connect(timeout=5)
    verified = _cli(served.env, served.data_dir, "log", "verify")
    assert verified["intact"] is True, verified
