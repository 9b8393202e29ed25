"""Length-prefixed frames of the provisioning protocol: a 4-byte big-endian length, then at most
`MAX_FRAME` bytes. Every read has a deadline, so a silent or slow peer cannot hold the service."""

from __future__ import annotations

import asyncio
import json
import struct

from thingward.errors import ThingwardError

MAX_FRAME = 16 * 1024
_LENGTH = struct.Struct(">I")


class FrameError(ThingwardError):
    """A frame that is too long, cut short, not sent in time, or not the JSON it must be."""


async def read_frame(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):  # no extra task: a cancel never orphans an exception
            header = await reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(header)
            if length > MAX_FRAME:
                raise FrameError(f"a frame of {length} bytes is over the {MAX_FRAME} byte limit")
            return await reader.readexactly(length)
    except TimeoutError as e:
        raise FrameError(f"no complete frame within {timeout:g} s") from e
    except asyncio.IncompleteReadError as e:
        raise FrameError("the peer closed the connection in the middle of the exchange") from e


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"a frame of {len(payload)} bytes is over the {MAX_FRAME} byte limit")
    return _LENGTH.pack(len(payload)) + payload


async def write_frame(writer: asyncio.StreamWriter, payload: bytes, timeout: float) -> None:
    writer.write(encode_frame(payload))
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError as e:
        raise FrameError(f"the peer did not take a frame within {timeout:g} s") from e


def dump_message(message: dict[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()


def load_message(payload: bytes) -> dict[str, object]:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError("a frame is not JSON") from e
    if not isinstance(value, dict):
        raise FrameError("a frame is not a JSON object")
    return value
