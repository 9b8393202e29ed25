"""What every broker adapter is given by the core, and what it gives back.

The core hands an adapter an `Authorizer` (the policy decision, pure and fast), TLS material, limits,
and a `MessageSink` for accepted messages. The adapter enforces: it never decides policy itself.
"""

from __future__ import annotations

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
