"""The device-facing HTTPS listener: a port of its own where every connection shows a device certificate.

Why a separate port and not the public one: the public port serves browsers, which must not be asked for
a client certificate; here the handshake REQUIRES one from the platform CA, with the CRL checked (the
broker's own `ServerTls`: the same context, the same re-check of every connection, resumed or not, against
the current CRL and validity period). uvicorn does not put the peer certificate in the ASGI scope, so the
connection's protocol (uvicorn's h11 protocol with our request deadline) identifies the peer as the
connection is made, closes it if the certificate gives no identity, and otherwise wraps the app for this
connection only, so each request's scope carries `DEVICE_SCOPE_KEY`: the identity taken from the verified
certificate of that very connection, never from anything the client sends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from thingward.app.https import DeadlineH11Protocol, https_server
from thingward.broker._tls import IdentityRefusedError, PeerIdentity, ServerTls
from thingward.broker.base import Action, BrokerTls
from thingward.policy.engine import PolicyEngine
from thingward.registry.audit_log import latest_event_id
from thingward.registry.db import Database
from thingward.registry.policies import load_policy_world

__all__ = ["DEVICE_SCOPE_KEY", "DeviceIdentity", "DeviceListener", "RegistryAuthorizer"]

logger = logging.getLogger(__name__)

DEVICE_SCOPE_KEY = "thingward.device"


@dataclass(frozen=True)
class DeviceIdentity:
    thing: str
    serial: str  # the certificate's serial, hex, as the registry stores it


class _WithIdentity:
    """The app as one connection sees it: every request's scope names the connection's device."""

    def __init__(self, app: ASGIApp, identity: DeviceIdentity) -> None:
        self.app = app
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, DEVICE_SCOPE_KEY: self.identity}, receive, send)


def _protocol(server_tls: ServerTls) -> type[DeadlineH11Protocol]:
    class DeviceH11Protocol(DeadlineH11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            try:
                peer: PeerIdentity = server_tls.identify_peer(transport.get_extra_info("ssl_object"))
            except IdentityRefusedError as e:
                logger.info("device listener: connection from %s refused: %s", self.client, e.reason)
                transport.close()
                return
            self.app = _WithIdentity(self.app, DeviceIdentity(peer.thing, peer.serial))

    return DeviceH11Protocol


class DeviceListener:
    """uvicorn on its own port with the device TLS context; `reload_crl` after a revocation."""

    def __init__(self, app: ASGIApp, host: str, port: int, tls: BrokerTls) -> None:
        self.tls = ServerTls(tls)
        # uvicorn would build a context that asks for no client certificate; ours requires one and checks
        # the CRL.
        self.server = https_server(
            app,
            host,
            port,
            tls.cert_file,
            tls.key_file,
            protocol=_protocol(self.tls),
            tls_context=self.tls.listening_context,
        )

    def reload_crl(self) -> None:
        self.tls.reload_crl()

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the device listener is not listening")

    async def serve(self) -> None:
        await self.server.serve()

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True


class RegistryAuthorizer:
    """The policy decision for a listener without a running server's engine: the registry's policies,
    reloaded when the audit log (the change feed) moved."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._seen: Any = object()
        self._engine = PolicyEngine()

    def authorize(self, thing: str, action: Action, topic: str) -> bool:
        with self._lock:
            with self._db.read() as session:
                newest = latest_event_id(session)
                if newest != self._seen:
                    self._engine.replace_world(load_policy_world(session))
                    self._seen = newest
            return self._engine.authorize(thing, action, topic)
