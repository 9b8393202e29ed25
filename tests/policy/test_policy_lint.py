"""lint_world: each risky pattern is reported, and a clean fleet gives no finding."""

from __future__ import annotations

import json

from thingward.policy import DEFAULT_POLICY, LintFinding, PolicyWorld, lint_world

from ._worlds import allow, deny, policy, thing, world

CLEAN = world(
    things=[thing("cam-1", "cams", zone="garden"), thing("cam-2", "cams", zone="porch")],
    groups={"home": None, "cams": "home"},
    policies={
        "default": DEFAULT_POLICY,
        "zones": policy(
            allow("publish", "zones/${thing.attr.zone}/${thing.name}"),
            allow(["subscribe", "receive"], "groups/${group.name}/broadcast"),
            deny("publish", "things/${thing.name}/admin/#"),
        ),
    },
    group_policies={"home": ["default"], "cams": ["zones"]},
)


def codes(w: PolicyWorld) -> list[str]:
    return [f.code for f in lint_world(w)]


def findings(w: PolicyWorld, code: str) -> list[LintFinding]:
    return [f for f in lint_world(w) if f.code == code]


def with_changes(**changes: object) -> PolicyWorld:
    base = {
        "things": CLEAN.things,
        "groups": CLEAN.groups,
        "policies": CLEAN.policies,
        "group_policies": CLEAN.group_policies,
        "thing_policies": CLEAN.thing_policies,
    }
    for key, value in changes.items():
        if key in ("policies", "group_policies", "thing_policies"):
            merged = dict(base[key])  # type: ignore[call-overload]
            merged.update(value)  # type: ignore[call-overload]
            base[key] = merged
        else:
            base[key] = value
    return PolicyWorld(**base)  # type: ignore[arg-type]


def test_clean_fleet_has_no_findings() -> None:
    assert lint_world(CLEAN) == []


def test_policy_attached_to_single_thing_is_reported() -> None:
    w = with_changes(thing_policies={"cam-1": ("zones",)})
    [finding] = findings(w, "policy-attached-to-thing")
    assert finding.target == "thing:cam-1"
    assert finding.policy == "zones"
    assert finding.severity == "medium"


def test_allow_of_everything_is_critical() -> None:
    w = with_changes(policies={"zones": policy(allow(["publish", "subscribe"], "#"))})
    [finding] = findings(w, "overly-permissive-wildcard")
    assert finding.severity == "critical"
    assert finding.target == "statements[0].resources[0]"


def test_first_level_plus_reaching_other_things_is_high() -> None:
    w = with_changes(policies={"zones": policy(allow("receive", "+/${thing.name}/x"))})
    [finding] = findings(w, "overly-permissive-wildcard")
    assert finding.severity == "high"


def test_first_level_wildcard_in_connect_or_deny_is_not_reported_as_permissive() -> None:
    w = with_changes(policies={"zones": policy(allow("connect", "+"), deny("publish", "#"))})
    assert findings(w, "overly-permissive-wildcard") == []


def test_fixed_shared_topic_granted_to_a_group_is_reported() -> None:
    w = with_changes(policies={"zones": policy(allow("publish", "fleet/telemetry"), allow("receive", "fleet/news"))})
    by_target = {f.target: f for f in findings(w, "allow-outside-thing-namespace")}
    assert by_target["statements[0].resources[0]"].severity == "medium"
    assert by_target["statements[1].resources[0]"].severity == "low"
    assert "cams" in by_target["statements[0].resources[0]"].message


def test_fixed_topic_in_an_unattached_policy_is_only_reported_as_unattached() -> None:
    w = with_changes(policies={"spare": policy(allow("publish", "fleet/telemetry"))})
    assert codes(w) == ["unattached-policy"]


def test_member_without_the_attribute_a_policy_uses_is_reported() -> None:
    w = with_changes(things={"cam-1": thing("cam-1", "cams", zone="garden"), "cam-2": thing("cam-2", "cams")})
    [finding] = findings(w, "missing-thing-attribute")
    assert finding.target == "group:cams"
    assert "cam-2" in finding.message and "cam-1" not in finding.message
    assert "zone" in finding.remediation


def test_member_with_an_unusable_attribute_value_is_reported() -> None:
    w = with_changes(
        things={"cam-1": thing("cam-1", "cams", zone="a/b"), "cam-2": thing("cam-2", "cams", zone="porch")}
    )
    [finding] = findings(w, "missing-thing-attribute")
    assert "cam-1" in finding.message


def test_deny_that_no_allow_can_reach_is_reported_as_useless() -> None:
    w = with_changes(policies={"zones": policy(allow("publish", "zones/${thing.name}"), deny("publish", "fleet/#"))})
    [finding] = findings(w, "useless-deny")
    assert finding.target == "statements[1].resources[0]"
    assert finding.severity == "low"


def test_deny_for_an_action_nobody_is_allowed_is_useless() -> None:
    w = world(
        things=[thing("cam-1", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow("publish", "#"), deny("receive", "things/${thing.name}/x"))},
        group_policies={"cams": ["p"]},
    )
    assert [f.target for f in findings(w, "useless-deny")] == ["statements[1].resources[0]"]


def test_deny_cutting_into_an_inherited_allow_is_useful() -> None:
    # the allow comes from 'default' on the parent group, the deny from 'zones' on the child
    assert findings(CLEAN, "useless-deny") == []


def test_policy_attached_nowhere_is_reported() -> None:
    w = with_changes(policies={"spare": policy(allow("publish", "things/${thing.name}/x"))})
    [finding] = findings(w, "unattached-policy")
    assert finding.policy == "spare"


def test_dangling_references_are_reported() -> None:
    w = world(
        things=[thing("cam-1", "cams", "ghost")],
        groups={"cams": "gone"},
        policies={"default": DEFAULT_POLICY},
        group_policies={"cams": ["default", "missing"]},
    )
    messages = [f.message for f in findings(w, "dangling-reference")]
    assert len(messages) == 3
    assert any("'missing'" in m for m in messages)
    assert any("'gone'" in m for m in messages)
    assert any("'ghost'" in m for m in messages)


def test_findings_are_sorted_by_severity_and_serialisable() -> None:
    w = with_changes(
        policies={"zones": policy(allow("publish", "#")), "spare": DEFAULT_POLICY},
        thing_policies={"cam-1": ("default",)},
    )
    result = lint_world(w)
    severities = [f.severity for f in result]
    assert severities == sorted(severities, key=["critical", "high", "medium", "low"].index)
    assert severities[0] == "critical"
    json.dumps([f.to_dict() for f in result])
