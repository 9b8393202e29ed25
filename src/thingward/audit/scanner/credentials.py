"""The default-credential list: a data file shipped with the scanner, which users extend with their own."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from thingward.errors import InvalidInputError

MAX_PAIRS = 10_000


@dataclass(frozen=True)
class Credential:
    username: str
    password: str


def parse_credentials(text: str, origin: str) -> list[Credential]:
    """`username:password` per line (the first colon splits; the password may be empty); # starts a comment."""
    pairs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        username, sep, password = line.partition(":")
        if not sep or not username:
            raise InvalidInputError(f"{origin}, line {number}: expected 'username:password', got {line!r}")
        pairs.append(Credential(username, password))
    return pairs


def shipped_credentials() -> list[Credential]:
    text = resources.files("thingward.audit.scanner").joinpath("credentials.txt").read_text(encoding="utf-8")
    return parse_credentials(text, "the shipped credentials.txt")


def load_credentials(extra: Path | None = None) -> tuple[Credential, ...]:
    """The user's pairs (if any) first, then the shipped list; each pair once, in that order."""
    pairs: list[Credential] = []
    if extra is not None:
        try:
            text = extra.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidInputError(f"cannot read the credentials file {extra}: {e}") from None
        pairs.extend(parse_credentials(text, str(extra)))
    pairs.extend(shipped_credentials())
    unique = tuple(dict.fromkeys(pairs))
    if len(unique) > MAX_PAIRS:
        raise InvalidInputError(f"more than {MAX_PAIRS} credential pairs: shorten the list")
    return unique
