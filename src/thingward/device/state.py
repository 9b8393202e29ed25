"""What the device agent tells the platform about itself: firmware, listening ports, onboarding state.

Published on the device's own `things/NAME/state` topic (the default policy allows it); the platform keeps
the latest report and the fleet audit judges it against the device model's allowed ports and the firmware
advisories.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]


def state_topic(name: str) -> str:
    return f"things/{name}/state"


@dataclass(frozen=True)
class ListeningPorts:
    tcp: tuple[int, ...]
    udp: tuple[int, ...]


def listening_ports() -> ListeningPorts:
    """The TCP ports in LISTEN and the bound UDP ports of this host, from the kernel's socket tables.

    Ports bound only to loopback are left out: nothing on the network can reach them.
    """
    tcp: set[int] = set()
    udp: set[int] = set()
    for conn in psutil.net_connections(kind="inet"):
        if not conn.laddr:
            continue
        address, port = conn.laddr.ip, conn.laddr.port
        if address.startswith("127.") or address == "::1":
            continue
        if conn.type == 1 and conn.status == psutil.CONN_LISTEN:  # SOCK_STREAM
            tcp.add(port)
        elif conn.type == 2 and not conn.raddr:  # SOCK_DGRAM, not connected
            udp.add(port)
    return ListeningPorts(tuple(sorted(tcp)), tuple(sorted(udp)))


@dataclass(frozen=True)
class DeviceState:
    model: str
    firmware_version: str
    ports: ListeningPorts = field(default_factory=lambda: ListeningPorts((), ()))
    onboarding_state: str = "provisioned"  # unprovisioned | ap | provisioned
    onboarding_since: dt.datetime | None = None

    def to_payload(self) -> bytes:
        return json.dumps(
            {
                "firmware": {"model": self.model, "version": self.firmware_version},
                "ports": {"tcp": list(self.ports.tcp), "udp": list(self.ports.udp)},
                "onboarding": {
                    "state": self.onboarding_state,
                    "since": self.onboarding_since.isoformat() if self.onboarding_since else None,
                },
            },
            separators=(",", ":"),
        ).encode()
