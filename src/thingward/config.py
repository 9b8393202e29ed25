"""Settings from `thingward.toml` in the data dir, overridden by environment variables.

An environment variable `THINGWARD_<SECTION>__<KEY>` overrides `[section] key` (for example
`THINGWARD_MQTT__PORT=8884`). The database URL is `[database] url`, else SQLite in the data dir; the
environment overrides it with `THINGWARD_DATABASE__URL` (the general rule) or `THINGWARD_DATABASE_URL`
(the common spelling; it wins when both are set).
"""

from __future__ import annotations

import dataclasses
import ipaddress
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
    # The device listener (camera snapshot uploads): HTTPS that requires a device certificate.
    device_port: int = 8444


BROKERS = ("embedded", "mosquitto")


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
    # The data plane: "embedded" (in-process, for a laptop and small fleets) or "mosquitto" (a Mosquitto
    # process thingward configures and supervises; docs/brokers.md).
    broker: str = "embedded"
    mosquitto_executable: str = "mosquitto"

    def __post_init__(self) -> None:
        if self.broker not in BROKERS:
            raise ConfigError(f"[mqtt] broker is {self.broker!r}: use one of {', '.join(BROKERS)}")


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
class AuditSettings:
    # The running server audits the fleet and stores the run every N minutes (0: never); the first run
    # starts with the server. Daily by default, like a cloud audit schedule.
    interval_minutes: float = 1440.0
    # Stored runs kept; older ones are deleted when a new one is saved.
    keep_runs: int = 400
    # What the scheduled audit counts as expiring (certificates) and stale (devices), in days.
    expiry_days: int = 30
    stale_days: int = 30
    # A device reporting access-point (onboarding) mode for longer than this is a finding.
    onboarding_max_minutes: int = 15

    def __post_init__(self) -> None:
        if self.interval_minutes < 0:
            raise ConfigError(f"[audit] interval_minutes is {self.interval_minutes}: use 0 (off) or a positive number")
        for name in ("keep_runs", "expiry_days", "stale_days", "onboarding_max_minutes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[audit] {name} is {getattr(self, name)}: it must be at least 1")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""


@dataclass(frozen=True)
class AccountsSettings:
    # "invite": only people with an invitation may sign up; "open": anyone may.
    signup: str = "invite"
    # The product's name: a password built around it is refused, and mails and TOTP apps show it.
    product_name: str = "thingward"
    password_min_length: int = 12
    # NIST SP 800-63B asks for at least 64; the cap only bounds the work of hashing a hostile input.
    password_max_length: int = 256
    # zxcvbn's score (0-4) a password must reach.
    password_min_strength: int = 3
    # Composition rules, off by default (NIST advises against them; some teams must have them).
    password_require_upper: bool = False
    password_require_lower: bool = False
    password_require_digit: bool = False
    password_require_symbol: bool = False
    # argon2id costs (OWASP's first choice: 19 MiB, 2 passes, 1 lane); a stored hash made with other
    # costs is rehashed at the next sign-in. bench/accounts.py prints what they cost on this machine.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    argon2_parallelism: int = 1
    require_2fa_admins: bool = True
    require_2fa_everyone: bool = False
    session_idle_seconds: int = 1800
    session_lifetime_seconds: int = 43200
    # Failed sign-ins for one account before it is locked, and for how long.
    lockout_failures: int = 10
    lockout_seconds: int = 900
    reset_token_ttl_seconds: int = 3600
    signin_code_ttl_seconds: int = 600
    invite_ttl_seconds: int = 604800
    api_token_max_days: int = 365
    # The address the app is reached at, for links in mails.
    public_url: str = "https://127.0.0.1:8443"


@dataclass(frozen=True)
class SmtpSettings:
    # Empty: no mail server; what needs a mail (reset, sign-in codes) is refused with a message that says so.
    host: str = ""
    port: int = 587
    # "starttls" (default), "tls" (implicit TLS, port 465), or "none" (only for a relay on this host).
    security: str = "starttls"
    username: str = ""
    # The name of an environment variable holding the password; the password itself never sits in the file.
    password_env: str = ""
    from_address: str = "thingward@localhost"
    timeout_seconds: int = 10


HOOKS_MIN_SECRET_LENGTH = 24


@dataclass(frozen=True)
class HooksSettings:
    """Authentication and authorization hooks for clustered brokers (EMQX, VerneMQ, RabbitMQ)."""

    # The name of an environment variable holding the secret brokers must send. Empty (the default): the
    # hooks are off. There is no default secret; the secret itself never sits in the file.
    secret_env: str = ""
    # Source addresses the hooks answer, even with the right secret (CIDR); loopback only by default.
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Decisions cached (least recently used first out) and for how long; any registry change empties the cache.
    cache_size: int = 65536
    cache_ttl_seconds: float = 30.0
    # Past this many seconds without a successful look at the registry, every hook answer is deny.
    max_staleness_seconds: float = 30.0
    # The RabbitMQ virtual host and topic exchange the MQTT plugin uses (its mqtt.vhost and mqtt.exchange).
    rabbitmq_vhost: str = "/"
    rabbitmq_exchange: str = "amq.topic"

    def __post_init__(self) -> None:
        for network in self.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as e:
                raise ConfigError(f"[hooks] allowed_networks: {network!r} is not an address or CIDR network") from e
        if self.cache_size < 1:
            raise ConfigError(f"[hooks] cache_size is {self.cache_size}: it must be at least 1")
        for name in ("cache_ttl_seconds", "max_staleness_seconds"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"[hooks] {name} is {getattr(self, name)}: use a number of seconds from 0 to 3600")

    def secret(self) -> str | None:
        """The shared secret from the environment; None when the hooks are off. A weak secret is an error."""
        if not self.secret_env:
            return None
        value = os.environ.get(self.secret_env, "")
        if not value:
            raise ConfigError(
                f"[hooks] secret_env names {self.secret_env}, which is not set: set it to a random secret "
                "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') or empty secret_env to turn hooks off"
            )
        if len(value) < HOOKS_MIN_SECRET_LENGTH or not all(c.isalnum() or c in "-_" for c in value):
            raise ConfigError(
                f"the hooks secret in {self.secret_env} must be at least {HOOKS_MIN_SECRET_LENGTH} characters of "
                "letters, digits, '-' and '_' (it travels in URLs): use secrets.token_urlsafe(32)"
            )
        return value


@dataclass(frozen=True)
class OnboardingSettings:
    # How long a claim token the app gets for a new device stays valid (single use either way).
    claim_ttl_seconds: int = 300
    # The thing group every claimed device joins (the product's default policies hang off it).
    default_thing_group: str = "default"

    def __post_init__(self) -> None:
        if not 60 <= self.claim_ttl_seconds <= 3600:
            raise ConfigError(f"[onboarding] claim_ttl_seconds is {self.claim_ttl_seconds}: use 60 to 3600")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    server: ServerSettings = field(default_factory=ServerSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    pki: PkiSettings = field(default_factory=PkiSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    accounts: AccountsSettings = field(default_factory=AccountsSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    onboarding: OnboardingSettings = field(default_factory=OnboardingSettings)

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
    "audit": AuditSettings,
    "accounts": AccountsSettings,
    "smtp": SmtpSettings,
    "hooks": HooksSettings,
    "onboarding": OnboardingSettings,
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
    if isinstance(expected, float):
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[{section}] {key} must be a number, got {value!r}") from e
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
device_port = 8444                # device uploads: HTTPS with a device certificate required

[mqtt]
port = 8883
# plaintext_port = 1883   # off by default; turning it on is logged as a warning at every start
max_payload_bytes = 262144
max_connects_per_minute = 30
max_publish_per_second = 1000
max_connections = 10000
broker = "embedded"               # or "mosquitto": a managed Mosquitto process (docs/brokers.md)

[pki]
device_certificate_days = 90
enrollment_token_ttl_seconds = 3600
ca_passphrase_env = "{ca_passphrase_env}"

[ingest]
retention_per_thing = 1000

[audit]
# The server runs the fleet audit and stores it every N minutes (0: off); the first run is at start.
interval_minutes = 1440
keep_runs = 400
expiry_days = 30
stale_days = 30
onboarding_max_minutes = 15

[database]
{database}

[accounts]
signup = "invite"                 # or "open"
product_name = "thingward"
password_min_length = 12
password_max_length = 256
password_min_strength = 3         # zxcvbn score 0-4
password_require_upper = false    # composition rules: off by default
password_require_lower = false
password_require_digit = false
password_require_symbol = false
argon2_time_cost = 2               # argon2id costs; stored hashes are rehashed at sign-in when they change
argon2_memory_kib = 19456
argon2_parallelism = 1
require_2fa_admins = true
require_2fa_everyone = false
session_idle_seconds = 1800
session_lifetime_seconds = 43200
lockout_failures = 10
lockout_seconds = 900
reset_token_ttl_seconds = 3600
signin_code_ttl_seconds = 600
invite_ttl_seconds = 604800
api_token_max_days = 365
public_url = "https://127.0.0.1:8443"

[smtp]
# host = "smtp.example.com"       # no mail server by default: password reset and sign-in codes need one
port = 587
security = "starttls"             # starttls, tls, or none (a relay on this host only)
username = ""
password_env = ""                 # the name of an environment variable holding the SMTP password
from_address = "thingward@localhost"
timeout_seconds = 10

[hooks]
# HTTP authn/authz hooks for EMQX, VerneMQ and RabbitMQ (docs/broker-hooks.md). Off until secret_env
# names an environment variable holding a random secret of 24+ characters.
secret_env = ""
allowed_networks = ["127.0.0.0/8", "::1/128"]
cache_size = 65536
cache_ttl_seconds = 30
max_staleness_seconds = 30
rabbitmq_vhost = "/"
rabbitmq_exchange = "amq.topic"

[onboarding]
claim_ttl_seconds = 300           # a claim token for a new device: single use, valid this long
default_thing_group = "default"   # every claimed device joins this thing group
"""
