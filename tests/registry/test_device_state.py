"""Device state reports (parsed strictly, latest kept, bad ones dropped without losing the last good one),
device model profiles and firmware advisories."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from thingward.broker.base import InboundMessage
from thingward.errors import ConflictError, InvalidInputError
from thingward.ingest.store import classify, store_messages
from thingward.platform import Platform
from thingward.registry import device_state, things
from thingward.registry.audit_log import Actor, list_events

pytestmark = pytest.mark.both_databases

ACTOR = Actor("test", "pytest")
GOOD = {
    "firmware": {"model": "cam-x", "version": "1.2.0"},
    "ports": {"tcp": [443, 23, 443], "udp": [5353]},
    "onboarding": {"state": "provisioned", "since": "2026-11-24T10:00:00Z"},
}


def test_a_good_report_parses_with_sorted_unique_ports() -> None:
    report = device_state.parse_state_report(json.dumps(GOOD).encode())
    assert (report.model, report.firmware_version) == ("cam-x", "1.2.0")
    assert report.tcp_ports == (23, 443) and report.udp_ports == (5353,)
    assert report.onboarding_since == dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"not json", "report"),
        (json.dumps({**GOOD, "ports": {"tcp": [70000]}}).encode(), "ports.tcp.0"),
        (json.dumps({**GOOD, "ports": {"tcp": ["23"]}}).encode(), "ports.tcp.0"),
        (json.dumps({**GOOD, "extra": 1}).encode(), "extra"),
        (json.dumps({**GOOD, "onboarding": {"state": "sleeping"}}).encode(), "onboarding.state"),
        (json.dumps({**GOOD, "onboarding": {"state": "ap", "since": "2026-11-24T10:00:00"}}).encode(), "time zone"),
        (json.dumps({"ports": {"tcp": list(range(1, 1100))}}).encode(), "ports.tcp"),
        (b"{" + b" " * 20000 + b"}", "16384-byte limit"),
    ],
)
def test_bad_reports_say_what_is_wrong(payload: bytes, says: str) -> None:
    with pytest.raises(InvalidInputError, match="state report") as caught:
        device_state.parse_state_report(payload)
    assert says in str(caught.value)


def _state(thing: str, body: dict | bytes) -> object:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify(InboundMessage(thing=thing, topic=f"things/{thing}/state", payload=payload, qos=1, retain=False))


def test_the_latest_good_report_is_kept_and_a_bad_one_loses_nothing(platform: Platform) -> None:
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
    newer = {**GOOD, "firmware": {"model": "cam-x", "version": "1.3.0"}}
    with platform.db.session() as session:
        assert store_messages(session, [_state("cam1", GOOD), _state("cam1", newer)], 100) == 0
    with platform.db.session() as session:
        store_messages(session, [_state("cam1", b'{"ports": {"tcp": [0]}}')], 100)
    with platform.db.read() as session:
        latest = device_state.latest_report(session, "cam1")
        assert latest is not None and latest.report.firmware_version == "1.3.0"
        assert things.get_thing(session, "cam1").last_seen_at is not None
        # Reports are frequent device traffic, not operator changes: they stay out of the audit log.
        assert not [e for e in list_events(session) if "state" in e.action]


def test_the_registry_model_attribute_overrides_the_reported_model(platform: Platform) -> None:
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
        things.set_attribute(session, ACTOR, "cam1", "model", "cam-pro")
    with platform.db.session() as session:
        store_messages(session, [_state("cam1", GOOD)], 100)
    with platform.db.read() as session:
        latest = device_state.latest_report(session, "cam1")
    assert latest is not None and (latest.model, latest.report.model) == ("cam-pro", "cam-x")


def test_models_and_advisories_are_recorded_and_validated(platform: Platform) -> None:
    with platform.db.session() as session:
        device_state.set_model(session, ACTOR, "cam-x", [8883, 443], [5353], "outdoor camera")
        device_state.add_advisory(session, ACTOR, "CVE-2026-0001", "cam-x", "<1.3.0", "critical", "RCE")
    with platform.db.session() as session, pytest.raises(ConflictError):
        device_state.add_advisory(session, ACTOR, "CVE-2026-0001", "cam-x", "<1.4.0", "high")
    for bad, says in [
        ({"affected": "before 1.3"}, "write a range"),
        ({"affected": ""}, "range is empty"),
        ({"severity": "urgent"}, "severity"),
        ({"advisory_id": "CVE 2026/1"}, "advisory id"),
    ]:
        args = {"advisory_id": "ADV-2", "model": "cam-x", "affected": "<2.0", "severity": "high", **bad}
        with platform.db.session() as session, pytest.raises(InvalidInputError, match=says):
            device_state.add_advisory(session, ACTOR, **args)
    with platform.db.session() as session, pytest.raises(InvalidInputError, match="port 0"):
        device_state.set_model(session, ACTOR, "cam-y", [0], [])
    with platform.db.read() as session:
        assert device_state.get_model(session, "cam-x").allowed_tcp_ports == (443, 8883)
        assert [a.advisory_id for a in device_state.list_advisories(session)] == ["CVE-2026-0001"]
        actions = [e.action for e in list_events(session)]
    assert "model.set" in actions and "advisory.add" in actions


def test_affected_devices_compare_versions_numerically(platform: Platform) -> None:
    with platform.db.session() as session:
        for name in ("cam1", "cam2", "cam3", "cam4"):
            things.add_thing(session, ACTOR, name)
        advisory = device_state.add_advisory(session, ACTOR, "ADV-9", "cam-x", ">=1.2,<1.10.0", "high")
    with platform.db.session() as session:
        store_messages(
            session,
            [
                _state("cam1", {"firmware": {"model": "cam-x", "version": "1.9.3"}}),
                _state("cam2", {"firmware": {"model": "cam-x", "version": "1.10.0"}}),
                _state("cam3", {"firmware": {"model": "other", "version": "0.1"}}),
                _state("cam4", {"firmware": {"model": "cam-x", "version": "1.1.5"}}),  # below the range
            ],
            100,
        )
    with platform.db.read() as session:
        affected = device_state.affected_devices(advisory, device_state.latest_reports(session))
    assert [d.to_dict() for d in affected] == [{"thing": "cam1", "model": "cam-x", "version": "1.9.3"}]


def test_the_first_reported_model_is_pinned_against_later_claims(platform: Platform) -> None:
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
    claims_gateway = {**GOOD, "firmware": {"model": "gateway", "version": "1.2.0"}}
    with platform.db.session() as session:
        store_messages(session, [_state("cam1", GOOD)], 100)
    with platform.db.session() as session:
        store_messages(session, [_state("cam1", claims_gateway)], 100)
    with platform.db.read() as session:
        latest = device_state.latest_report(session, "cam1")
    assert latest is not None and (latest.model, latest.report.model) == ("cam-x", "gateway")
