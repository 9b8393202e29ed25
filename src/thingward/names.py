"""Validated names for things, groups and policies: untrusted text becomes a value that cannot be invalid."""

from __future__ import annotations

import re

from thingward.errors import InvalidInputError

_NAME = re.compile(r"[a-z0-9_-]{1,64}")

__all__ = ["thing_name_of_token", "validate_name"]


def validate_name(value: str, kind: str = "thing") -> str:
    """Return `value` if it is a valid name (lowercase letters, digits, '-' and '_', 1 to 64 chars)."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidInputError(f"invalid {kind} name {value!r}: use 1 to 64 lowercase letters, digits, '-' or '_'")
    return value


def thing_name_of_token(token: str) -> str:
    """The thing an enrollment token is for (the part before the dot); the device uses it as its CN."""
    name, sep, _secret = token.partition(".")
    if not sep:
        raise InvalidInputError("not an enrollment token: expected 'NAME.SECRET' as printed by 'thingward device add'")
    return validate_name(name, "thing")
