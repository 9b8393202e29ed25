"""The provisioning session's cryptography, without sockets: the PoP decides, and no frame can be
changed, replayed, reordered or moved to another session or direction."""

from __future__ import annotations

import pytest

from thingward.device.onboarding.label import new_label, parse_label
from thingward.device.onboarding.session import (
    ClientHandshake,
    DeviceHandshake,
    HandshakeError,
    SecureChannel,
    SessionError,
    b64,
)
from thingward.errors import InvalidInputError

INFO = b'{"device_id":"cam-1","model":"cam-x","protocol":"thingward-provisioning","versions":[1]}'


def _pair(client_pop: bytes, device_pop: bytes, client_info: bytes = INFO) -> tuple[SecureChannel, SecureChannel]:
    client, device = ClientHandshake(client_pop, client_info), DeviceHandshake(device_pop, INFO)
    keys = device.respond(client.start_message())
    reply, device_channel = device.verify(client.confirm_message(keys))
    return client.finish(reply), device_channel


def test_same_pop_gives_a_working_channel_both_ways() -> None:
    pop = new_label("cam-1").pop
    app, device = _pair(pop, pop)
    assert device.open(app.seal(b"set wifi")) == b"set wifi"
    assert app.open(device.seal(b"ok")) == b"ok"
    assert device.open(app.seal(b"second")) == b"second"


def test_wrong_pop_fails_key_confirmation_at_the_device() -> None:
    client, device = ClientHandshake(new_label("cam-1").pop, INFO), DeviceHandshake(new_label("cam-1").pop, INFO)
    keys = device.respond(client.start_message())
    with pytest.raises(HandshakeError):
        device.verify(client.confirm_message(keys))


def test_device_without_the_pop_cannot_prove_itself_to_the_app() -> None:
    # An impostor access point: it answers with keys of its own but cannot make the device confirmation.
    pop = new_label("cam-1").pop
    client, impostor = ClientHandshake(pop, INFO), DeviceHandshake(new_label("cam-1").pop, INFO)
    client.confirm_message(impostor.respond(client.start_message()))
    with pytest.raises(HandshakeError):
        client.finish({"type": "confirmed", "device_confirm": b64(bytes(32))})


def test_changed_info_frame_fails_confirmation() -> None:
    # A man in the middle who rewrites the pre-session info (a downgraded version list) breaks the transcript.
    pop = new_label("cam-1").pop
    with pytest.raises(HandshakeError):
        _pair(pop, pop, client_info=INFO.replace(b"[1]", b"[0]"))


def test_tampered_frame_refused() -> None:
    pop = new_label("cam-1").pop
    app, device = _pair(pop, pop)
    frame = bytearray(app.seal(b'{"cmd":"set_wifi","passphrase":"x"}'))
    frame[-1] ^= 0x01
    with pytest.raises(SessionError):
        device.open(bytes(frame))
    frame = bytearray(app.seal(b"status"))
    frame[3] ^= 0x80  # the counter: authenticated as associated data
    with pytest.raises(SessionError):
        device.open(bytes(frame))


def test_replayed_frame_refused() -> None:
    pop = new_label("cam-1").pop
    app, device = _pair(pop, pop)
    frame = app.seal(b"apply")
    assert device.open(frame) == b"apply"
    with pytest.raises(SessionError):
        device.open(frame)


def test_reordered_frames_refused() -> None:
    pop = new_label("cam-1").pop
    app, device = _pair(pop, pop)
    first, second = app.seal(b"one"), app.seal(b"two")
    with pytest.raises(SessionError):
        device.open(second)
    assert device.open(first) == b"one"


def test_frame_reflected_back_or_from_another_session_refused() -> None:
    pop = new_label("cam-1").pop
    app, device = _pair(pop, pop)
    other_app, _other_device = _pair(pop, pop)
    with pytest.raises(SessionError):
        app.open(app.seal(b"to the device"))  # reflected to its sender: the other direction's key
    with pytest.raises(SessionError):
        device.open(other_app.seal(b"from another session"))


def test_low_order_public_key_refused() -> None:
    device = DeviceHandshake(new_label("cam-1").pop, INFO)
    with pytest.raises(HandshakeError):
        device.respond({"type": "start", "version": 1, "client_public": b64(bytes(32)), "client_nonce": b64(bytes(16))})


@pytest.mark.parametrize(
    "start",
    [
        {"type": "start", "version": 2, "client_public": b64(bytes(32)), "client_nonce": b64(bytes(16))},
        {"type": "start", "version": 1, "client_public": b64(bytes(31)), "client_nonce": b64(bytes(16))},
        {"type": "start", "version": 1, "client_public": "not base64!", "client_nonce": b64(bytes(16))},
        {"type": "hello"},
    ],
)
def test_malformed_start_refused(start: dict[str, object]) -> None:
    with pytest.raises(HandshakeError):
        DeviceHandshake(new_label("cam-1").pop, INFO).respond(start)


def test_label_round_trip_and_refusals() -> None:
    label = new_label("cam-7")
    assert parse_label(label.code()) == label
    assert (
        parse_label(" " + label.code().replace("TW1", "tw1").upper().replace("CAM-7", "cam-7") + "\n").pop == label.pop
    )
    assert len(label.pop) * 8 >= 64
    assert label.code().split(":")[2] not in repr(label)
    for bad in ("cam-7", "TW1:cam-7", "TW2:cam-7:AAAAAAAAAAAAAAAA", "TW1:Cam 7:AAAAAAAAAAAAAAAA", "TW1:cam-7:AAAA",
                "TW1:cam-7:AAAAAAAAAAAAAAA1"):  # fmt: skip
        with pytest.raises(InvalidInputError):
            parse_label(bad)
