"""A private PostgreSQL server for the test session, and an empty database (a schema) for each test that asks.

How a storage test runs on both databases (SQLite and PostgreSQL):
- mark it: `pytestmark = pytest.mark.both_databases` at the top of the module, or the marker on one test;
- use the `platform` fixture (tests/conftest.py), or take `database_url` and pass it on
  (`init_data_dir(path, database_url=database_url)`, `thingward init --database-url URL`); it is None for
  SQLite (the default file in the data dir) and a URL of an empty database (schema) of its own for PostgreSQL.
The test then runs twice, `[sqlite]` and `[postgresql]`; `database_backend` says which one is running.
`pytest --databases sqlite` (or `postgresql`) runs only one of them. Unmarked tests use SQLite only. A test
for PostgreSQL alone: `@pytest.mark.parametrize("database_backend", ["postgresql"], indirect=True)`.
A test that needs the server itself (more schemas, `pg_dump`, a raw connection) takes the session fixture
`postgres`. A new migration is run up, down and up again on both by tests/registry/test_migrations.py.

The server: `initdb` into a temp dir, `postgres` on 127.0.0.1 at a free port with its unix socket in that
dir, a superuser of its own with a random password (scram-sha-256, nothing shared or default), durability
off (fsync) because the data is thrown away. A test's "database" is a fresh schema in one shared database,
named by the URL (`?options=-csearch_path=test_N`) and dropped after the test. PostgreSQL refuses to run
as root, so as root the server runs as the `postgres` system user (Debian's package makes it) and the temp
dir is handed to that user. It is stopped and its dir deleted at the end of the session, also when tests
fail. Without PostgreSQL binaries the PostgreSQL half of the tests is skipped with the reason, except
under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SUPERUSER = "thingward_test"
# One database for the session; each test gets a schema of its own in it (10 ms, where CREATE DATABASE
# takes 0.3-1 s), reached through the URL's search_path.
DATABASE = "thingward_test"
STARTUP_TIMEOUT = 30.0
PG_BINDIR_ENV = "THINGWARD_TEST_PG_BINDIR"
# Only for throwaway test data: nothing here must survive a crash.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "listen_addresses": "127.0.0.1",
}


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here (no binaries, or no user to run it as)."""


def find_bindir() -> Path:
    """The directory of initdb/postgres: $THINGWARD_TEST_PG_BINDIR, Debian's newest version, else the PATH."""
    if os.environ.get(PG_BINDIR_ENV):
        candidates = [Path(os.environ[PG_BINDIR_ENV])]
    else:
        debian = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        on_path = shutil.which("initdb")
        candidates = [*debian, *([Path(on_path).parent] if on_path else [])]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or on the PATH: "
        f"install Debian's 'postgresql' package (scripts/install.sh --test does) or set ${PG_BINDIR_ENV}"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The account the server runs as: None for the current one, `postgres` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as e:
        raise PostgresUnavailable(
            "running as root, and PostgreSQL refuses root: there is no 'postgres' user to run it as "
            "(Debian's 'postgresql' package creates it)"
        ) from e


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    account: pwd.struct_passwd | None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, schema: str, with_password: bool = True) -> str:
        """The URL of a test's schema; without the password, libpq takes it from $PGPASSWORD (`client_env`)."""
        secret = f":{self.password}" if with_password else ""
        return (
            f"postgresql+psycopg://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{DATABASE}"
            f"?options=-csearch_path%3D{schema}"
        )

    def client_env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password}

    def _user_kwargs(self) -> dict[str, object]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def _hand_over(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def initdb(self) -> None:
        self._hand_over(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._hand_over(pwfile)
        try:
            subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth",
                    "scram-sha-256",
                    "--encoding",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                timeout=120,
                cwd=self.root,
                **self._user_kwargs(),  # type: ignore[call-overload]
            )
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"initdb failed: {e.stderr.decode(errors='replace')}") from e
        finally:
            pwfile.unlink()

    def start(self) -> None:
        for _attempt in range(3):  # a free port can be taken between our probe and the server's bind
            self.port = _free_port()
            options = [arg for key, value in SERVER_SETTINGS.items() for arg in ("-c", f"{key}={value}")]
            log = self.log_file.open("ab")
            try:
                self.process = subprocess.Popen(
                    [
                        *(str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)),
                        *("-k", str(self.root), *options),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    start_new_session=True,
                    **self._user_kwargs(),  # type: ignore[call-overload]
                )
            finally:
                log.close()
            if self._wait_ready():
                return
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with self.admin():
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not accept connections within {STARTUP_TIMEOUT} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def admin(self, database: str = "postgres", schema: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
            options=f"-csearch_path={schema}" if schema else None,
        )

    def create_shared_database(self) -> None:
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def create_schema(self) -> str:
        """An empty schema of its own for one test: to thingward (search_path) it is an empty database."""
        name = f"test_{next(self._names)}"
        with self.admin(DATABASE) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return name

    def drop_schema(self, name: str) -> None:
        with self.admin(DATABASE) as conn:
            conn.execute("SET lock_timeout = '5s'")
            try:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            except psycopg.errors.LockNotAvailable:
                # A connection the test left inside a transaction holds a lock: end it, as DROP DATABASE
                # WITH (FORCE) would. Tests run one at a time, so no other test's connection is open.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (DATABASE,),
                )
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def dump(self, schema: str) -> bytes:
        """Everything stored in a test's schema, as `pg_dump` writes it (data and schema)."""
        result = subprocess.run(
            [
                *(str(self.bindir / "pg_dump"), "--host", "127.0.0.1", "--port", str(self.port)),
                *("--username", SUPERUSER, "--no-password", "--schema", schema, DATABASE),
            ],
            env={**os.environ, **self.client_env()},
            check=True,
            capture_output=True,
            timeout=60,
        )
        return result.stdout

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: clients are disconnected
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a private server; stop it and delete its files on the way out, whatever happened."""
    bindir = find_bindir()
    account = _run_as()
    # Not under pytest's tmp dir: that is 0700 and owned by us, and the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="thingward-pg-"))
    server = PostgresServer(bindir=bindir, root=root, account=account)
    try:
        server.initdb()
        server.start()
        server.create_shared_database()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
