"""The pure parts of the broker adapter, without sockets: rate limiters, framing, CONNECT parsing."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thingward.broker._framing import FramedReader, MalformedConnectError, parse_connect
from thingward.broker._limits import ConnectRateLimiter, PublishRateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_connect_limiter_refuses_above_the_limit_in_a_sliding_minute() -> None:
    clock = FakeClock()
    limiter = ConnectRateLimiter(3, clock=clock)
    assert [limiter.attempt("a") for _ in range(3)] == [True, True, True]
    assert limiter.attempt("a") is False
    assert limiter.attempt("b") is True
    clock.now += 59.0
    assert limiter.attempt("a") is False  # refused attempts count: a reconnect loop stays refused
    clock.now += 61.0
    assert limiter.attempt("a") is True


def test_connect_limiter_forgets_idle_identities() -> None:
    clock = FakeClock()
    limiter = ConnectRateLimiter(3, clock=clock)
    for i in range(100):
        limiter.attempt(f"t{i}")
    clock.now += 121.0
    limiter.attempt("x")
    assert len(limiter._attempts) == 1


def test_publish_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = PublishRateLimiter(10, clock=clock)
    assert sum(limiter.allow("a") for _ in range(20)) == 10
    clock.now += 0.5
    assert sum(limiter.allow("a") for _ in range(20)) == 5
    assert limiter.allow("b") is True


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConnectRateLimiter(0)
    with pytest.raises(ValueError):
        PublishRateLimiter(0)


def _reader(data: bytes, max_payload: int = 100) -> tuple[FramedReader, list[tuple[str, str | None]], list[bool]]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    violations: list[tuple[str, str | None]] = []
    aborted: list[bool] = []
    reader = FramedReader(
        stream,
        max_payload=max_payload,
        abort=lambda: aborted.append(True),
        on_violation=lambda reason, topic: violations.append((reason, topic)),
    )
    return reader, violations, aborted


def _publish(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([0x30]) + bytes(encoded) + body


def test_framer_serves_whole_packets_and_ends_at_eof() -> None:
    async def run() -> list[bytes]:
        reader, violations, _ = _reader(_publish(b"a/b", b"hi") + _publish(b"a/c", b"yo"))
        out = [await reader.read(1), await reader.read(1), await reader.read(7), await reader.read(1)]
        assert violations == []
        return [*out, await reader.read(1), await reader.read(7), await reader.read(1)]

    assert asyncio.run(run()) == [b"\x30", b"\x07", b"\x00\x03a/bhi", b"\x30", b"\x07", b"\x00\x03a/cyo", b""]


def test_framer_refuses_an_oversize_payload_with_its_topic() -> None:
    async def run() -> tuple[bytes, list[tuple[str, str | None]], list[bool]]:
        reader, violations, aborted = _reader(_publish(b"a/b", b"x" * 101))
        return await reader.read(1), violations, aborted

    data, violations, aborted = asyncio.run(run())
    assert data == b""
    assert violations == [("payload too large", "a/b")]
    assert aborted == [True]


def test_framer_refuses_a_read_past_the_end_of_a_packet() -> None:
    # A parser asking for more bytes than the packet holds would read into the next packet.
    async def run() -> tuple[bytes, list[tuple[str, str | None]]]:
        reader, violations, _ = _reader(_publish(b"a/b", b"hi") * 2)
        await reader.read(2)
        return await reader.read(50), violations

    data, violations = asyncio.run(run())
    assert data == b""
    assert violations == [("malformed packet", None)]


def test_framer_refuses_a_five_byte_remaining_length() -> None:
    async def run() -> list[tuple[str, str | None]]:
        reader, violations, _ = _reader(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
        await reader.read(1)
        return violations

    assert asyncio.run(run()) == [("malformed remaining length", None)]


CONNECT_A = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 30, 0, 1]) + b"a"


def test_parse_connect_reads_the_identity_fields() -> None:
    request = asyncio.run(parse_connect(CONNECT_A))
    assert (request.client_id, request.clean_session, request.keep_alive, request.will_topic) == ("a", True, 30, None)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(bytes([0x10, 14]) + CONNECT_A[2:] + b"X", id="trailing byte"),
        pytest.param(bytes([0x10, 12]) + CONNECT_A[2:-1], id="client id cut short"),
        pytest.param(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x03, 0, 30, 0, 1]) + b"a", id="reserved flag"),
        pytest.param(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x42, 0, 30, 0, 1]) + b"a", id="password only"),
        pytest.param(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x16, 0, 30, 0, 1]) + b"a", id="will missing"),
        pytest.param(bytes([0x30, 2, 0, 0]), id="not a CONNECT"),
    ],
)
def test_parse_connect_refuses_malformed_packets(packet: bytes) -> None:
    with pytest.raises(MalformedConnectError):
        asyncio.run(parse_connect(packet))


class _ChunkedStream(asyncio.StreamReader):
    """A StreamReader fed in the given chunk sizes, one per read, as a slow network would."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        super().__init__()
        self._pending = data
        self._sizes = sizes or [len(data) or 1]

    async def read(self, n: int = -1) -> bytes:
        if not self._pending:
            return b""
        size = self._sizes[0] if len(self._sizes) == 1 else self._sizes.pop(0)
        chunk, self._pending = self._pending[: max(size, 1)], self._pending[max(size, 1) :]
        return chunk


# Valid topic names only: the framer closes the connection on any other (tested in test_quotas.py).
_TOPIC_NAMES = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="+#\x00"), min_size=1, max_size=20
).map(str.encode)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.tuples(_TOPIC_NAMES, st.binary(max_size=300)), max_size=8),
    sizes=st.lists(st.integers(min_value=1, max_value=700), max_size=30),
)
def test_framer_yields_the_same_packets_however_the_network_splits_them(
    messages: list[tuple[bytes, bytes]], sizes: list[int]
) -> None:
    packets = [_publish(topic, payload) for topic, payload in messages]

    async def run() -> list[bytes]:
        violations: list[tuple[str, str | None]] = []
        reader = FramedReader(
            _ChunkedStream(b"".join(packets), sizes),
            max_payload=1000,
            abort=lambda: None,
            on_violation=lambda reason, topic: violations.append((reason, topic)),
        )
        out = []
        while first := await reader.read(1):
            header = bytearray(first)
            while (byte := await reader.read(1))[0] & 0x80:
                header += byte
            header += byte
            length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(header[1:]))
            out.append(bytes(header) + await reader.read(length))
        assert violations == []
        return out

    assert asyncio.run(run()) == packets
