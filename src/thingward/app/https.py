"""The HTTPS listener: uvicorn with the platform's server certificate, and the limits a public endpoint needs.

Set in code rather than left to defaults or the environment:
- TLS 1.2 as the floor;
- a deadline for each request: a client that does not finish sending its request within
  `REQUEST_DEADLINE` seconds is cut off (uvicorn alone would hold a half-sent request for ever);
- a cap on concurrent connections;
- no proxy headers: `X-Forwarded-For` from anyone, loopback included, is not believed, so it can neither
  dodge the per-address throttle nor choose the source written to the audit log.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_DEADLINE = 15.0
MAX_CONNECTIONS = 1000
KEEP_ALIVE = 5

_CLIENT_FINISHED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline from the start of each request to its last byte."""

    _deadline: asyncio.TimerHandle | None = None

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(REQUEST_DEADLINE, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.conn.their_state not in _CLIENT_FINISHED and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state in _CLIENT_FINISHED:
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)


def https_server(
    app: ASGIApp,
    host: str,
    port: int,
    cert_file: Path,
    key_file: Path,
    *,
    protocol: type[DeadlineH11Protocol] = DeadlineH11Protocol,
    tls_context: ssl.SSLContext | None = None,
) -> uvicorn.Server:
    """uvicorn over TLS with the limits above. `tls_context` replaces the context uvicorn builds (the device
    listener's requires client certificates); `protocol` may extend the deadline protocol."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        http=protocol,
        proxy_headers=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    config.load()
    if config.ssl is None:
        raise RuntimeError("uvicorn built no TLS context; refusing to serve plain HTTP")
    if tls_context is not None:
        config.ssl = tls_context
    # Do not rely on the system's OpenSSL policy for the floor: state it here.
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return uvicorn.Server(config)
