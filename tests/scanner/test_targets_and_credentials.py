"""What may be scanned and with which pairs: refusals before any packet, the shipped credential list."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from thingward.audit.scanner.credentials import Credential, load_credentials, shipped_credentials
from thingward.audit.scanner.targets import MAX_ADDRESSES, TOP_PORTS, parse_ports, parse_targets
from thingward.errors import InvalidInputError

ip = ipaddress.ip_address


@pytest.mark.parametrize("target", ["8.8.8.8", "1.1.1.0/30", "2001:db8::1", "100.64.0.1", "192.0.2.1-3"])
def test_public_targets_are_refused_without_allow_public(target: str) -> None:
    with pytest.raises(InvalidInputError, match=r"outside loopback and the private ranges.*--allow-public"):
        parse_targets([target])


def test_one_public_address_among_private_ones_refuses_the_whole_scan() -> None:
    with pytest.raises(InvalidInputError, match=r"'9\.9\.9\.9'"):
        parse_targets(["192.168.1.10", "9.9.9.9"])


def test_allow_public_lets_a_named_public_address_through() -> None:
    assert parse_targets(["8.8.8.8"], allow_public=True) == (ip("8.8.8.8"),)


@pytest.mark.parametrize("target", ["224.0.0.251", "255.255.255.255", "0.0.0.0", "ff02::1", "::"])
def test_multicast_broadcast_and_unspecified_are_refused_even_with_allow_public(target: str) -> None:
    with pytest.raises(InvalidInputError, match="multicast, broadcast or unspecified"):
        parse_targets([target], allow_public=True)


def test_private_networks_ranges_and_loopback_names_are_expanded_in_order_without_duplicates() -> None:
    assert parse_targets(["10.0.0.0/30", "10.0.0.1", "192.168.1.250-252", "::1", "fd00::7"]) == (
        ip("10.0.0.1"),
        ip("10.0.0.2"),
        ip("192.168.1.250"),
        ip("192.168.1.251"),
        ip("192.168.1.252"),
        ip("::1"),
        ip("fd00::7"),
    )
    assert parse_targets(["localhost"])[0].is_loopback


def test_too_many_addresses_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=str(MAX_ADDRESSES)):
        parse_targets(["10.0.0.0/16"])
    with pytest.raises(InvalidInputError, match="split the scan"):
        parse_targets([f"10.{i}.0.0/20" for i in range(2)])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "empty target"),
        ("10.0.0.9-3", "range end"),
        ("10.0.0.0/33", "not a network"),
        ("no-such-host.invalid", "neither an address"),
    ],
)
def test_bad_targets_say_what_is_wrong(target: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_targets([target])


def test_port_specs() -> None:
    assert parse_ports("all") == tuple(range(1, 65536))
    assert {22, 23, 80, 554, 1883, 8883, 1900} <= set(parse_ports("top")) == set(TOP_PORTS)
    assert parse_ports("8000-8002, 22,22") == (22, 8000, 8001, 8002)
    for bad in ("0", "65536", "a", "90-80", "", "1-"):
        with pytest.raises(InvalidInputError, match="ports"):
            parse_ports(bad)


def test_shipped_list_holds_the_mirai_pairs_first_in_mirai_order() -> None:
    pairs = shipped_credentials()
    assert pairs[:4] == [
        Credential("root", "xc3511"),
        Credential("root", "vizxv"),
        Credential("root", "admin"),
        Credential("admin", "admin"),
    ]
    for user, password in [("root", ""), ("support", "support"), ("ubnt", "ubnt"), ("root", "7ujMko0vizxv")]:
        assert Credential(user, password) in pairs
    assert Credential("pi", "raspberry") in pairs  # a vendor default after the Mirai pairs


def test_users_extend_the_list_and_their_pairs_go_first(tmp_path: Path) -> None:
    extra = tmp_path / "mine.txt"
    extra.write_text("# our camera's factory login\nfactory:Cam#2024:x\nroot:xc3511\n")
    pairs = load_credentials(extra)
    assert pairs[0] == Credential("factory", "Cam#2024:x")  # only the first colon splits
    assert pairs[1] == Credential("root", "xc3511")
    assert len(pairs) == len(set(pairs))  # each pair once


def test_a_malformed_credentials_file_names_the_line(tmp_path: Path) -> None:
    extra = tmp_path / "bad.txt"
    extra.write_text("admin:admin\njustaname\n")
    with pytest.raises(InvalidInputError, match=r"bad.txt, line 2: expected 'username:password'"):
        load_credentials(extra)
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_credentials(tmp_path / "missing.txt")
