"""Settings from `thingward.toml` in the data dir, overridden by environment variables.

An environment variable `THINGWARD_<SECTION>__<KEY>` overrides `[section] key` (for example
`THINGWARD_MQTT__PORT=8884`). The database URL is `[database] url`, else SQLite in the data dir; the
environment overrides it with `THINGWARD_DATABASE__URL` (the general rule) or `THINGWARD_DATABASE_URL`
(the common spelling; it wins when both are set).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thingward.errors import ConfigError

DATA_DIR_ENV = "THINGWARD_DATA_DIR"
DATABASE_URL_ENV = "THINGWARD_DATABASE_URL"
DEFAULT_DATA_DIR = "thingward-data"
CONFIG_FILE = "thingward.toml"


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    http_port: int = 8443
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class MqttSettings:
    port: int = 8883
    # A plaintext listener is refused unless asked for; when set, every start logs a warning.
    plaintext_port: int | None = None
    max_payload_bytes: int = 256 * 1024
    # Connection attempts one identity may make in a sliding minute before it is refused.
    max_connects_per_minute: int = 30
    # Messages per second one identity may publish (a token bucket of this size, refilled per second).
    max_publish_per_second: int = 1000
    # Open MQTT connections at once, all devices together.
    max_connections: int = 10_000


@dataclass(frozen=True)
class PkiSettings:
    device_certificate_days: int = 90
    enrollment_token_ttl_seconds: int = 3600
    # The name of an environment variable holding the CA key passphrase; empty means not encrypted.
    ca_passphrase_env: str = ""


@dataclass(frozen=True)
class IngestSettings:
    # Messages kept per thing; older ones are deleted as new ones arrive.
    retention_per_thing: int = 1000


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    server: ServerSettings = field(default_factory=ServerSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    pki: PkiSettings = field(default_factory=PkiSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def database_url(self) -> str:
        env = os.environ.get(DATABASE_URL_ENV)
        if env:
            return env
        if self.database.url:
            return self.database.url
        return default_database_url(self.data_dir)


def default_database_url(data_dir: Path) -> str:
    """SQLite in the data dir: the database when nothing else is configured."""
    return f"sqlite:///{data_dir / 'thingward.db'}"


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "mqtt": MqttSettings,
    "pki": PkiSettings,
    "ingest": IngestSettings,
    "database": DatabaseSettings,
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data dir named on the command line, else `$THINGWARD_DATA_DIR`, else `./thingward-data`."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def _coerce(section: str, key: str, value: Any, expected: Any) -> Any:
    if isinstance(expected, bool):
        if isinstance(value, str):
            return value.lower() in {"1", "true", "yes", "on"}
        return bool(value)
    if isinstance(expected, int) or (expected is None and key.endswith("_port")):
        try:
            return int(value) if value not in ("", None) else None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[{section}] {key} must be an integer, got {value!r}") from e
    if isinstance(expected, tuple):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return tuple(value)
    return value


def _build_section(name: str, raw: dict[str, Any]) -> Any:
    cls = _SECTIONS[name]
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{name}]: {', '.join(sorted(unknown))}")
    values = dict(raw)
    prefix = f"THINGWARD_{name.upper()}__"
    for env_key, env_value in os.environ.items():
        if env_key.startswith(prefix):
            key = env_key[len(prefix) :].lower()
            if key not in known:
                raise ConfigError(f"{env_key} names no setting of [{name}]")
            values[key] = env_value
    coerced = {k: _coerce(name, k, v, getattr(defaults, k)) for k, v in values.items()}
    return cls(**coerced)


def load_settings(data_dir: str | Path | None = None) -> Settings:
    """Read the settings of a data dir. A missing config file means all defaults."""
    root = resolve_data_dir(data_dir)
    raw: dict[str, Any] = {}
    path = root / CONFIG_FILE
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s): {', '.join(sorted(unknown))}")
    sections = {name: _build_section(name, raw.get(name, {})) for name in _SECTIONS}
    return Settings(data_dir=root, **sections)


def render_default_config(hostnames: tuple[str, ...], ca_passphrase_env: str, database_url: str = "") -> str:
    """The `thingward.toml` that `init` writes: every setting with its default, so it is discoverable."""
    hosts = ", ".join(f'"{h}"' for h in hostnames)
    if database_url:
        # A JSON string is a valid TOML basic string: the URL is quoted and escaped, whatever it holds.
        database = f"url = {json.dumps(database_url)}"
    else:
        database = (
            '# url = "postgresql://thingward@localhost/thingward"   # default: SQLite in the data dir; '
            "a password is best left to PGPASSWORD or ~/.pgpass"
        )
    return f"""# thingward configuration. Environment variables THINGWARD_<SECTION>__<KEY> override these.

[server]
host = "127.0.0.1"
http_port = 8443
hostnames = [{hosts}]

[mqtt]
port = 8883
# plaintext_port = 1883   # off by default; turning it on is logged as a warning at every start
max_payload_bytes = 262144
max_connects_per_minute = 30
max_publish_per_second = 1000
max_connections = 10000

[pki]
device_certificate_days = 90
enrollment_token_ttl_seconds = 3600
ca_passphrase_env = "{ca_passphrase_env}"

[ingest]
retention_per_thing = 1000

[database]
{database}
"""
