"""The audit chain's hashed body is built without json.dumps for speed; it must stay byte for byte what
json.dumps gave, or every chain written before would stop verifying."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st

from thingward.registry.audit_log import _event_hash

AT = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def reference(key: bytes, *parts: str) -> str:
    prev_hash, actor, source, action, target, detail = parts
    body = json.dumps([prev_hash, AT.isoformat(), actor, source, action, target, detail], separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


@given(st.lists(st.text(), min_size=6, max_size=6))
def test_the_hash_is_the_one_json_dumps_gave(parts: list[str]) -> None:
    key = b"k" * 32
    prev_hash, actor, source, action, target, detail = parts
    assert _event_hash(key, prev_hash, AT, actor, source, action, target, detail) == reference(key, *parts)


def test_awkward_strings() -> None:
    key = b"k" * 32
    awkward = ['"quoted"', "back\\slash", "ctl\x00\x1f\x7f", "ünïcödé ☃ 𝄞", "\ud800", '{"a":[1,2]}']
    assert _event_hash(key, *awkward[:1], AT, *awkward[1:]) == reference(key, *awkward)
