"""Shared fixtures: a real data dir (CA, SQLite file, migrations) and a real HTTPS API on a free port."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from thingward.platform import Platform


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    from thingward.platform import Platform, init_data_dir

    init_data_dir(tmp_path / "data")
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
