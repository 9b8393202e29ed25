"""What every broker adapter is given by the core, and what it gives back.

The core hands an adapter an `Authorizer` (the policy decision, pure and fast), TLS material, limits,
and a `MessageSink` for accepted messages. The adapter enforces: it never decides policy itself.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Action = Literal["connect", "publish", "subscribe", "receive"]
ACTIONS: tuple[Action, ...] = ("connect", "publish", "subscribe", "receive")


class Authorizer(Protocol):
    """The policy decision. Must be pure and fast (no I/O): it is called on every message."""

    def authorize(self, thing: str, action: Action, topic: str) -> bool:
        """True only if `thing` may do `action` on `topic` (for connect, `topic` is the client id)."""
        ...


@dataclass(frozen=True)
class BrokerTls:
    cert_file: Path
    key_file: Path
    ca_file: Path
    crl_file: Path


@dataclass(frozen=True)
class BrokerLimits:
    max_payload_bytes: int = 256 * 1024
    max_connects_per_minute: int = 30
    max_publish_per_second: int = 1000
    # Open connections at once, all identities together; past it a new connection is closed at once.
    max_connections: int = 10_000


@dataclass(frozen=True)
class InboundMessage:
    thing: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


MessageSink = Callable[[InboundMessage], None]


@dataclass(frozen=True)
class Denial:
    thing: str
    action: str
    topic: str
    reason: str


@dataclass(frozen=True)
class LiveSession:
    thing: str
    serial: str  # of the certificate the session was admitted with; "" when the broker does not tell
    peer: str
    since: dt.datetime

    def to_dict(self) -> dict[str, str]:
        return {"thing": self.thing, "serial": self.serial, "peer": self.peer, "since": self.since.isoformat()}


@dataclass(frozen=True)
class Takeover:
    at: dt.datetime
    old_peer: str
    new_peer: str

    def to_dict(self) -> dict[str, str]:
        return {"at": self.at.isoformat(), "old_peer": self.old_peer, "new_peer": self.new_peer}


class Publisher(Protocol):
    """A broker the server can publish through (commands, updates): the message is checked like any other."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the platform; raises if the broker refuses or does not acknowledge it."""
        ...


class Broker(Publisher, Protocol):
    """What the server needs of a data plane, whichever broker carries it (embedded, managed Mosquitto).

    The policy engine decides; an adapter enforces its decisions in the broker's own terms and reports
    back who is connected. Every method is called on the server's event loop.
    """

    denials: collections.Counter[tuple[str, str]]
    refused_over_capacity: int

    async def start(self) -> None:
        """Start serving; raises if the broker cannot listen (port taken, TLS material unreadable)."""
        ...

    async def stop(self) -> None:
        """Close every connection and stop; safe to call twice."""
        ...

    @property
    def port(self) -> int:
        """The bound MQTT-over-TLS port."""
        ...

    def reload_crl(self) -> None:
        """Use the CRL file as it is now for every handshake from now on (live sessions: see `disconnect`)."""
        ...

    async def policies_changed(self) -> None:
        """The authorizer's world changed: bring what the broker enforces in line with it (a no-op for a
        broker that asks the authorizer on every action)."""
        ...

    async def disconnect(self, thing: str) -> int:
        """Drop every live connection of `thing` and its persistent session; returns how many were closed."""
        ...

    def drop_retained(self, keep: Callable[[str, str], bool]) -> list[str]:
        """Forget retained messages for which `keep(owner, topic)` is False; returns their topics."""
        ...

    def connected_things(self) -> set[str]:
        """Things with at least one live session."""
        ...

    def live_sessions(self) -> list[LiveSession]:
        """Every live session: which thing, from where, since when."""
        ...

    def takeovers(self) -> dict[str, list[Takeover]]:
        """Recent takeovers (a second connection of one identity closing the first), per thing."""
        ...

    def set_authorizer(self, authorizer: Authorizer) -> None:
        """Decide with `authorizer` from now on."""
        ...
