"""What may be scanned: the targets and ports a user names, parsed and checked before any packet is sent.

Only addresses the user names are scanned. Loopback and the private ranges of a home or lab network are
allowed; any other address is refused unless the caller says `allow_public`. Multicast, broadcast and
unspecified addresses are refused always. A scan covers at most `MAX_ADDRESSES` addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from thingward.errors import InvalidInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ADDRESSES = 4096

# Loopback and the ranges a home or lab network uses: RFC 1918, link-local, IPv6 unique-local.
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)

# Ports that IoT devices and their hubs commonly expose (telnet, ssh, web, rtsp, mqtt, upnp, vendor
# consoles, thingward's onboarding window), used by `--ports top`.
_TOP_PORTS = """
21 22 23 25 53 80 81 82 88 110 111 135 139 143 161 443 445 554 587 631
993 995 1080 1723 1883 1900 2000 2323 3000 3306 3389 4567 5000 5001 5060 5222 5353 5357 5432 5555
5683 5733 5800 5900 6000 6379 6668 7547 8000 8001 8008 8009 8080 8081 8083 8086 8088 8123 8443 8554 8883
8884 8888 9000 9001 9100 9443 9999 10000 10554 32400 37777 49152 49153 50000 55443 62078
"""
TOP_PORTS: tuple[int, ...] = tuple(sorted({int(port) for port in _TOP_PORTS.split()}))


def is_local(address: IPAddress) -> bool:
    return any(address in network for network in LOCAL_NETWORKS)


def _refuse_special(address: IPAddress, spec: str) -> None:
    if address.is_multicast or address.is_unspecified or address == ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidInputError(f"target {spec!r}: {address} is a multicast, broadcast or unspecified address")


def _expand(spec: str) -> Iterable[IPAddress]:
    """One target: an address, a network in CIDR form, a last-octet range (10.0.0.5-20), or a host name."""
    try:
        return [ipaddress.ip_address(spec)]
    except ValueError:
        pass
    if "/" in spec:
        try:
            network = ipaddress.ip_network(spec, strict=False)
        except ValueError as e:
            raise InvalidInputError(f"target {spec!r} is not a network: {e}") from None
        if network.num_addresses > MAX_ADDRESSES:
            raise InvalidInputError(f"target {spec!r} has {network.num_addresses} addresses; at most {MAX_ADDRESSES}")
        return list(network.hosts()) or [network.network_address]
    head, sep, last = spec.rpartition("-")
    if sep and last.isdigit():
        try:
            first = ipaddress.IPv4Address(head)
        except ValueError:
            pass
        else:
            end = int(last)
            start = int(str(first).rsplit(".", 1)[1])
            if not start <= end <= 255:
                raise InvalidInputError(f"target {spec!r}: the range end must be between {start} and 255")
            return [first + i for i in range(end - start + 1)]
    try:
        infos = socket.getaddrinfo(spec, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInputError(
            f"target {spec!r} is neither an address, a network (10.0.0.0/24), a range (10.0.0.5-20) "
            f"nor a resolvable host name: {e}"
        ) from None
    return [ipaddress.ip_address(info[4][0]) for info in infos[:1]]


def parse_targets(specs: Iterable[str], allow_public: bool = False) -> tuple[IPAddress, ...]:
    """The addresses to scan, in order, without duplicates; refused before anything is sent."""
    seen: dict[IPAddress, None] = {}
    for raw in specs:
        spec = raw.strip()
        if not spec:
            raise InvalidInputError("an empty target: name an address, a network, a range or a host name")
        for address in _expand(spec):
            _refuse_special(address, spec)
            if not allow_public and not is_local(address):
                raise InvalidInputError(
                    f"target {spec!r} ({address}) is outside loopback and the private ranges; scan only networks "
                    "you own, and say --allow-public if this one is yours"
                )
            seen[address] = None
            if len(seen) > MAX_ADDRESSES:
                raise InvalidInputError(f"more than {MAX_ADDRESSES} addresses to scan: split the scan")
    if not seen:
        raise InvalidInputError("no targets: name at least one address, network or host")
    return tuple(seen)


def parse_ports(spec: str) -> tuple[int, ...]:
    """`top` (common IoT ports), `all` (1-65535), or a list such as `22,80,8000-8100`."""
    spec = spec.strip().lower()
    if spec == "top":
        return TOP_PORTS
    if spec == "all":
        return tuple(range(1, 65536))
    ports: set[int] = set()
    for part in spec.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise InvalidInputError(f"ports {spec!r}: use top, all, or a list such as 22,80,8000-8100") from None
        if not 1 <= first <= last <= 65535:
            raise InvalidInputError(f"ports {spec!r}: {part.strip()!r} is not a range within 1-65535")
        ports.update(range(first, last + 1))
    return tuple(sorted(ports))
