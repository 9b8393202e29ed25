"""The core every door calls: a data dir's settings, database and CA, and the operations across them.

The CLI, the REST API and the server hold a `Platform`; none of them holds logic of its own.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from thingward.config import (
    CONFIG_FILE,
    Settings,
    default_database_url,
    load_settings,
    render_default_config,
    resolve_data_dir,
)
from thingward.errors import ConfigError, EnrollmentRefusedError, PkiError
from thingward.pki import ca as ca_mod
from thingward.pki.files import write_atomic, write_secret
from thingward.policy.document import DEFAULT_POLICY
from thingward.registry import certificates, policies, things
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.db import (
    Database,
    check_schema,
    database_error,
    display_url,
    head_revision,
    make_engine,
    parse_database_url,
    schema_revision,
    upgrade_database,
)

logger = logging.getLogger(__name__)

DEFAULT_POLICY_NAME = "default-device"
AUDIT_KEY_FILE = "audit.key"


def _load_audit_key(data_dir: Path) -> bytes:
    path = data_dir / AUDIT_KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{path} is missing: the audit log cannot be written or verified without it") from e
    if len(key) < 32:
        raise ConfigError(f"{path} holds {len(key)} bytes; an audit key has 32")
    return key


def _create_private_file(path: Path) -> None:
    """Create an empty file that only the owner can read, before anything (SQLite) opens it."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(name=f"cli:{user}", source=f"host:{socket.gethostname()}")


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    ca_certificate: Path
    config_file: Path
    database_url: str


def _ca_passphrase(env_name: str) -> bytes | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise PkiError(f"the CA key passphrase is read from ${env_name}, which is not set or empty")
    return value.encode()


def _refuse_unusable_database(url: str) -> None:
    """Before anything is written: the database must be reachable and hold no tables yet.

    A registry left from another data dir was chained with another audit key; joining it would make its
    history unverifiable, so init refuses instead.
    """
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).exists()):
        return
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
    except OperationalError as e:
        raise ConfigError(f"cannot use the database {display_url(parsed)}: {database_error(e)}") from None
    finally:
        engine.dispose()
    if tables:
        raise ConfigError(
            f"the database {display_url(parsed)} is not empty (it has {', '.join(sorted(tables)[:5])}...): "
            "init needs an empty database, or a thingward registry is there already"
        )


def init_data_dir(
    data_dir: str | Path | None,
    hostnames: tuple[str, ...] = (),
    ca_passphrase_env: str = "",
    database_url: str | None = None,
) -> InitResult:
    """Create a data dir: CA, server certificate, database, config, the default group and policy.

    `database_url` (PostgreSQL, say) is written into the config; without it the database is the one the
    environment names (`THINGWARD_DATABASE_URL`), else SQLite in the data dir.
    """
    root = resolve_data_dir(data_dir)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not empty; refusing to overwrite a data dir")
    passphrase = _ca_passphrase(ca_passphrase_env)
    from_environment = load_settings(root).database_url  # the data dir has no config yet: env or default
    if database_url:
        database_url = parse_database_url(database_url).render_as_string(hide_password=False)
        if from_environment != default_database_url(root) and from_environment != database_url:
            raise ConfigError(
                "the environment names another database (THINGWARD_DATABASE_URL or THINGWARD_DATABASE__URL), "
                "and it would win over --database-url at every start: unset it, or leave out --database-url"
            )
    _refuse_unusable_database(database_url or from_environment)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    # The config may hold a database URL with a password: owner-only, like the keys.
    write_secret(root / CONFIG_FILE, render_default_config(hostnames, ca_passphrase_env, database_url or "").encode())
    write_secret(root / AUDIT_KEY_FILE, secrets.token_bytes(32))
    settings = load_settings(root)
    pki_dir = settings.pki_dir
    authority = ca_mod.create_ca(pki_dir, f"thingward root CA {socket.gethostname()}", passphrase)
    key, cert = ca_mod.issue_server_certificate(authority, hostnames)
    write_secret(pki_dir / ca_mod.SERVER_KEY_FILE, ca_mod.private_key_pem(key))
    write_atomic(pki_dir / ca_mod.SERVER_CERT_FILE, ca_mod.certificate_pem(cert))
    write_atomic(pki_dir / ca_mod.CRL_FILE, ca_mod.crl_pem(ca_mod.build_crl(authority, [])))
    if settings.database_url == default_database_url(root):
        _create_private_file(root / "thingward.db")
    db = Database(settings.database_url, _load_audit_key(root))
    try:
        upgrade_database(db.engine)
        actor = cli_actor()
        with db.session() as session:
            record_event(session, actor, "platform.init", f"data_dir:{root}", {"hostnames": list(hostnames)})
            things.add_group(session, actor, things.DEFAULT_GROUP, description="every device unless told otherwise")
            policies.add_policy(session, actor, DEFAULT_POLICY_NAME, DEFAULT_POLICY.to_json())
            policies.attach_policy(session, actor, DEFAULT_POLICY_NAME, group=things.DEFAULT_GROUP)
    finally:
        db.dispose()
    return InitResult(
        data_dir=root,
        ca_certificate=pki_dir / ca_mod.CA_CERT_FILE,
        config_file=root / CONFIG_FILE,
        database_url=display_url(settings.database_url),
    )


class Platform:
    """An initialised data dir, opened."""

    def __init__(self, settings: Settings, check_schema_version: bool = True) -> None:
        if not (settings.pki_dir / ca_mod.CA_CERT_FILE).exists():
            raise ConfigError(
                f"{settings.data_dir} is not a thingward data dir: run 'thingward init --data-dir {settings.data_dir}'"
            )
        self.settings = settings
        self.db = Database(settings.database_url, _load_audit_key(settings.data_dir))
        if check_schema_version:
            try:
                check_schema(self.db.engine)
            except BaseException:
                self.db.dispose()
                raise

    @classmethod
    def open(cls, data_dir: str | Path | None = None, check_schema_version: bool = True) -> Platform:
        """Open a data dir; its registry schema must be this thingward's (see `thingward db upgrade`)."""
        return cls(load_settings(data_dir), check_schema_version)

    def upgrade_schema(self) -> tuple[str | None, str]:
        """Migrate the registry to this thingward's schema; an audit event says from which revision."""
        before = schema_revision(self.db.engine)
        upgrade_database(self.db.engine)
        after = head_revision()
        if before != after:
            with self.db.session() as session:
                record_event(session, cli_actor(), "platform.upgrade_schema", "registry", {"from": before, "to": after})
        return before, after

    def close(self) -> None:
        self.db.dispose()

    @cached_property
    def ca(self) -> ca_mod.CertificateAuthority:
        return ca_mod.load_ca(self.settings.pki_dir, _ca_passphrase(self.settings.pki.ca_passphrase_env))

    def ca_certificate_not_after(self) -> dt.datetime:
        """When the CA certificate expires; needs no passphrase (the certificate is public)."""
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.ca_certificate_path.read_bytes()).not_valid_after_utc

    @property
    def ca_certificate_path(self) -> Path:
        return self.settings.pki_dir / ca_mod.CA_CERT_FILE

    @property
    def server_certificate_path(self) -> Path:
        return self.settings.pki_dir / ca_mod.SERVER_CERT_FILE

    @property
    def server_key_path(self) -> Path:
        return self.settings.pki_dir / ca_mod.SERVER_KEY_FILE

    @property
    def crl_path(self) -> Path:
        return self.settings.pki_dir / ca_mod.CRL_FILE

    def write_crl(self) -> Path:
        """Rebuild the CRL from the registry and replace the file atomically."""
        with self.db.read() as session:
            revoked = certificates.revoked_serials(session)
        write_atomic(self.crl_path, ca_mod.crl_pem(ca_mod.build_crl(self.ca, revoked)))
        return self.crl_path

    def enroll(self, token: str, csr_pem: bytes | str, source: str) -> certificates.Enrollment:
        validity = dt.timedelta(days=self.settings.pki.device_certificate_days)
        try:
            with self.db.session() as session:
                return certificates.enroll_device(session, self.ca, token, csr_pem, validity, source)
        except EnrollmentRefusedError as e:
            # The refusal's transaction was rolled back; record it in one of its own.
            with self.db.session() as session:
                record_event(session, Actor("anonymous", source), "enroll.refused", "enrollment", {"reason": e.reason})
            raise

    def revoke(self, actor: Actor, name: str, reason: str = "unspecified") -> list[str]:
        with self.db.session() as session:
            serials = certificates.revoke_thing_certificates(session, actor, name, reason)
        self.write_crl()
        return serials

    def set_disabled(self, actor: Actor, name: str, disabled: bool) -> list[str]:
        with self.db.session() as session:
            serials = certificates.set_thing_disabled(session, actor, name, disabled)
        if serials:
            self.write_crl()
        return serials
