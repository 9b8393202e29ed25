"""The journey on PostgreSQL: `thingward init --database-url` and `thingward serve` as real processes.

A device enrolls through the real HTTPS API, publishes over mutual TLS, and its messages land in the
PostgreSQL database; a revocation made by another CLI process reaches the server through the audit-log
watcher and drops the live session. The password travels in $PGPASSWORD, never in the config file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.postgres import DATABASE, PostgresServer
from thingward.device.client import Device, DeviceConnectError
from thingward.device.enroll import enroll

THINGWARD = [sys.executable, "-m", "thingward.cli.main"]


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


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        process.kill()
        raise AssertionError(f"serve printed no endpoints: {process.stderr.read()}")  # type: ignore[union-attr]
    return box[0]


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def served(postgres: PostgresServer, tmp_path: Path) -> Iterator[Served]:
    schema = postgres.create_schema()
    env = {**os.environ, **postgres.client_env()}
    env.pop("THINGWARD_DATABASE_URL", None)
    data_dir = tmp_path / "data"
    process: subprocess.Popen[str] | None = None
    try:
        _cli(env, data_dir, "init", "--database-url", postgres.url(schema, with_password=False))
        process = subprocess.Popen(
            [*THINGWARD, "serve", "--data-dir", str(data_dir), "--mqtt-port", "0", "--http-port", "0", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        endpoints = json.loads(_read_line(process, 30))
        host, port = endpoints["mqtt"].removeprefix("mqtts://").rsplit(":", 1)
        yield Served(data_dir, env, host, int(port), endpoints["api"], Path(endpoints["ca_certificate"]), schema)
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
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
        assert _wait_for(lambda: len(_stored_in_postgres(postgres, served.schema, "cam1")) == 2, 10)
        assert _stored_in_postgres(postgres, served.schema, "cam1") == [
            "things/cam1/telemetry",
            "things/cam1/events/motion",
        ]
        # A revocation from another process reaches the server through the audit log in PostgreSQL.
        revoked = _cli(served.env, served.data_dir, "device", "revoke", "cam1")
        assert len(revoked["revoked_serials"]) == 1
        assert _wait_for(lambda: not device.connected, 3), "live session not dropped after revocation"
    finally:
        device.close()
    again = Device.from_dir(identity.certificate.parent, "cam1", host=served.mqtt_host, port=served.mqtt_port)
    with pytest.raises(DeviceConnectError):
        again.connect(timeout=5)
    verified = _cli(served.env, served.data_dir, "log", "verify")
    assert verified["intact"] is True, verified
