"""Sign-ins waiting for their second step: bounded in tries, time and number."""

from __future__ import annotations

from thingward.app.web.pending import MAX_TRIES, PendingSignIns


def test_a_pending_sign_in_allows_a_few_tries_then_is_gone() -> None:
    pending = PendingSignIns()
    key = pending.add("alice@example.com", "secret words here", "totp")
    assert len(key) >= 43  # 256 bits, URL-safe
    for _ in range(MAX_TRIES):
        assert pending.take_try(key) is not None
    assert pending.take_try(key) is None
    assert pending.peek(key) is None


def test_unknown_expired_and_overflowing_pending_sign_ins_are_refused() -> None:
    assert PendingSignIns().take_try("guessed") is None
    assert PendingSignIns().take_try("") is None
    expired = PendingSignIns(ttl=0.0)
    assert expired.take_try(expired.add("a@example.com", "pw", "email")) is None
    small = PendingSignIns(capacity=2)
    first = small.add("a@example.com", "pw", "email")
    small.add("b@example.com", "pw", "email")
    small.add("c@example.com", "pw", "email")
    assert small.peek(first) is None  # the oldest made room
