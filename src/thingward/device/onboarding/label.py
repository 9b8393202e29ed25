"""The code printed on a device's label (and in its QR code): the device id and its proof of possession.

`TW1:<device id>:<PoP>`, the PoP being 80 random bits in base32 (16 characters, no padding). Whoever
holds the label can set the device up; nobody else can, however close to the device they stand.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

from thingward.errors import InvalidInputError
from thingward.names import validate_name

LABEL_PREFIX = "TW1"
POP_BYTES = 10  # 80 bits: offline guessing from one recorded handshake is out of reach (docs/onboarding.md)
_POP_CHARS = 16


@dataclass(frozen=True)
class DeviceLabel:
    device_id: str
    pop: bytes

    def code(self) -> str:
        return f"{LABEL_PREFIX}:{self.device_id}:{base64.b32encode(self.pop).decode().rstrip('=')}"

    def __repr__(self) -> str:  # the PoP is a secret: never in a log line or a traceback
        return f"DeviceLabel(device_id={self.device_id!r}, pop=<{len(self.pop)} bytes>)"


def new_label(device_id: str) -> DeviceLabel:
    """A new label for a device being made: its id and a fresh random PoP."""
    return DeviceLabel(validate_name(device_id, "device id"), secrets.token_bytes(POP_BYTES))


def parse_label(code: str) -> DeviceLabel:
    """The label code as typed or scanned; spaces and case in the PoP are forgiven, nothing else is."""
    parts = code.strip().split(":")
    if len(parts) != 3 or parts[0].upper() != LABEL_PREFIX:
        raise InvalidInputError(
            "not a thingward device label: expected 'TW1:<device id>:<code>' as printed on the device"
        )
    device_id = validate_name(parts[1], "device id")
    pop_text = parts[2].replace(" ", "").replace("-", "").upper()
    if len(pop_text) != _POP_CHARS:
        raise InvalidInputError(
            f"the label's code has {len(pop_text)} characters, not {_POP_CHARS}: check it against the label"
        )
    try:
        pop = base64.b32decode(pop_text)
    except ValueError as e:
        raise InvalidInputError("the label's code holds characters that are not on a label (A-Z, 2-7)") from e
    return DeviceLabel(device_id, pop)
