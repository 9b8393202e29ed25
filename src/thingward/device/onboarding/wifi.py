"""Joining the home Wi-Fi, behind a small interface: NetworkManager (`nmcli`) on a Linux device, and a
simulated backend for tests, where the "radio" is a veth in a network namespace.

The passphrase never appears in a command line (where any local user could read it in the process
list): nmcli reads it from a 0600 file that is deleted at once.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from thingward.errors import ConfigError, ThingwardError

logger = logging.getLogger(__name__)

JOIN_TIMEOUT = 30  # seconds NetworkManager may take to associate and get an address
MAX_SSID_BYTES = 32  # IEEE 802.11
MIN_PASSPHRASE, MAX_PASSPHRASE = 8, 63  # WPA2/WPA3-Personal passphrase


class WifiJoinError(ThingwardError):
    """The device could not join the network: unknown SSID, wrong passphrase, no address."""


def check_credentials(ssid: str, passphrase: str) -> None:
    """Refuse credentials no access point can take, with what to change."""
    if not ssid or len(ssid.encode()) > MAX_SSID_BYTES:
        raise WifiJoinError(f"the Wi-Fi name (SSID) must be 1 to {MAX_SSID_BYTES} bytes")
    if not MIN_PASSPHRASE <= len(passphrase) <= MAX_PASSPHRASE or not passphrase.isprintable():
        raise WifiJoinError(f"a WPA passphrase is {MIN_PASSPHRASE} to {MAX_PASSPHRASE} printable characters")


class WifiBackend(Protocol):
    def join(self, ssid: str, passphrase: str) -> None:
        """Join the network, or raise WifiJoinError saying why not."""
        ...


@dataclass(frozen=True)
class NmcliWifiBackend:
    """NetworkManager on a Linux device: a connection profile, activated with the PSK from a file."""

    interface: str = "wlan0"
    connection_name: str = "thingward-wifi"
    nmcli: str = "nmcli"

    def commands(self, ssid: str, passwd_file: Path) -> list[list[str]]:
        """The nmcli commands `join` runs (tests check them; they need no radio)."""
        return [
            [self.nmcli, "connection", "delete", "id", self.connection_name],
            [self.nmcli, "connection", "add", "type", "wifi", "ifname", self.interface, "con-name",
             self.connection_name, "ssid", ssid, "wifi-sec.key-mgmt", "wpa-psk", "connection.autoconnect", "yes"],
            [self.nmcli, "--wait", str(JOIN_TIMEOUT), "connection", "up", "id", self.connection_name,
             "passwd-file", str(passwd_file)],
        ]  # fmt: skip

    @staticmethod
    def passwd_file_content(passphrase: str) -> str:
        return f"802-11-wireless-security.psk:{passphrase}\n"

    def join(self, ssid: str, passphrase: str) -> None:
        check_credentials(ssid, passphrase)
        fd, name = tempfile.mkstemp(prefix="thingward-psk-")  # 0600 by construction
        path = Path(name)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.passwd_file_content(passphrase))
            delete, add, up = self.commands(ssid, path)
            subprocess.run(delete, capture_output=True, timeout=JOIN_TIMEOUT, check=False)  # none may exist
            for argv in (add, up):
                result = subprocess.run(argv, capture_output=True, text=True, timeout=JOIN_TIMEOUT + 10, check=False)
                if result.returncode != 0:
                    raise WifiJoinError(f"nmcli could not join {ssid!r}: {result.stderr.strip() or result.stdout}")
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WifiJoinError(f"nmcli could not join {ssid!r}: {e}") from e
        finally:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SimulatedAccessPoint:
    """The home network a simulated device can join: its SSID and passphrase, and what joining gives the
    device (an address on an uplink interface in the device's namespace, and a default route)."""

    ssid: str
    passphrase: str
    interface: str
    address: str  # with its prefix length, e.g. 10.232.7.10/24
    gateway: str = ""

    @classmethod
    def load(cls, path: Path) -> SimulatedAccessPoint:
        try:
            raw = json.loads(path.read_text())
            return cls(**{k: str(raw[k]) for k in ("ssid", "passphrase", "interface", "address")},
                       gateway=str(raw.get("gateway", "")))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{path}: not a simulated access point (ssid, passphrase, interface, address): {e}"
            ) from None

    def __repr__(self) -> str:
        return f"SimulatedAccessPoint(ssid={self.ssid!r}, interface={self.interface!r}, address={self.address!r})"


@dataclass(frozen=True)
class SimulatedWifiBackend:
    """For tests and demos only: "joins" by checking the credentials against a simulated access point's
    config, then brings the uplink up with `ip` in the device's own network namespace."""

    access_point: SimulatedAccessPoint

    def join(self, ssid: str, passphrase: str) -> None:
        check_credentials(ssid, passphrase)
        ap = self.access_point
        if ssid != ap.ssid:
            raise WifiJoinError(f"no Wi-Fi network named {ssid!r} in range")
        if not hmac.compare_digest(passphrase.encode(), ap.passphrase.encode()):
            raise WifiJoinError(f"the passphrase for {ssid!r} was refused by the access point")
        steps = [["ip", "link", "set", ap.interface, "up"], ["ip", "addr", "replace", ap.address, "dev", ap.interface]]
        if ap.gateway:
            steps.append(["ip", "route", "replace", "default", "via", ap.gateway])
        for argv in steps:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            if result.returncode != 0:
                raise WifiJoinError(f"the simulated uplink did not come up ({' '.join(argv)}): {result.stderr.strip()}")
        logger.info("joined simulated Wi-Fi %r on %s as %s", ssid, ap.interface, ap.address)
