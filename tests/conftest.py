"""Shared fixtures: a real data dir (CA, database, migrations) and a real HTTPS API on a free port.

Tests marked `both_databases` run on SQLite and on a private PostgreSQL server (see tests/lab/postgres.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lab.postgres import PostgresServer, PostgresUnavailable, postgres_server

if TYPE_CHECKING:
    from thingward.platform import Platform

# Shared fixtures living in tests/lab/: the SMTP lab server, its inbox and the clock tests move.
pytest_plugins = ["lab.accounts"]

BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--databases",
        default=",".join(BACKENDS),
        help="comma-separated databases that tests marked both_databases run on [default: sqlite,postgresql]",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_databases") is None:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if "database_backend" in (names.split(",") if isinstance(names, str) else names):
            return  # the test chose its database itself
    chosen = [b.strip() for b in metafunc.config.getoption("--databases").split(",") if b.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown or not chosen:
        raise pytest.UsageError(f"--databases takes {' and/or '.join(BACKENDS)}, got {sorted(unknown) or 'nothing'}")
    metafunc.parametrize("database_backend", chosen, indirect=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole session, started on first use."""
    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {e}")
        pytest.skip(str(e))


@pytest.fixture(autouse=True)
def _database_chosen_by_the_tests_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # A THINGWARD_DATABASE_URL in the shell running pytest would win over every test's own database.
    monkeypatch.delenv("THINGWARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("THINGWARD_DATABASE__URL", raising=False)


@pytest.fixture
def database_backend(request: pytest.FixtureRequest) -> str:
    """sqlite, or postgresql for a test marked both_databases in its PostgreSQL run."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(database_backend: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite (the file in the data dir); on PostgreSQL, an empty schema dropped after the test."""
    if database_backend == "sqlite":
        yield None
        return
    if "postgresql" not in request.config.getoption("--databases"):
        pytest.skip("PostgreSQL not chosen (--databases)")
    server: PostgresServer = request.getfixturevalue("postgres")
    schema = server.create_schema()
    try:
        yield server.url(schema)
    finally:
        server.drop_schema(schema)


@pytest.fixture
def platform(tmp_path: Path, database_url: str | None) -> Iterator[Platform]:
    from thingward.platform import Platform, init_data_dir

    init_data_dir(tmp_path / "data", database_url=database_url)
    opened = Platform.open(tmp_path / "data")
    yield opened
    opened.close()


class ApiServer:
    """The FastAPI app under uvicorn with the platform's server certificate, in a thread, on a free port."""

    def __init__(self, platform: Platform) -> None:
        from thingward.app.api import create_app
        from thingward.app.https import https_server

        self.platform = platform
        self.server = https_server(
            create_app(platform), "127.0.0.1", 0, platform.server_certificate_path, platform.server_key_path
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("API server did not start within 5 s")
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"https://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def api(platform: Platform) -> Iterator[ApiServer]:
    with ApiServer(platform) as server:
        yield server
