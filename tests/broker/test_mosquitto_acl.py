"""The policy-to-acl_file compiler, pure: what each thing's block says, and what can never get into the file."""

from __future__ import annotations

import pytest

from thingward.audit.mitigate import QUARANTINE_POLICY_DOCUMENT
from thingward.broker.mosquitto_acl import INTERNAL_IDENTITY, compile_acl
from thingward.errors import InvalidInputError
from thingward.names import validate_name
from thingward.policy.document import DEFAULT_POLICY, PolicyDocument, parse_policy_document
from thingward.policy.engine import PolicyEngine
from thingward.policy.world import GroupFacts, PolicyWorld, ThingFacts


def world_of(*things: ThingFacts, extra: dict[str, PolicyDocument] | None = None, **attached: list[str]) -> PolicyWorld:
    policies = {"default-device": DEFAULT_POLICY, "quarantine": QUARANTINE_POLICY_DOCUMENT, **(extra or {})}
    return PolicyWorld.from_facts(
        things=things,
        groups=[GroupFacts("default"), GroupFacts("quarantine"), GroupFacts("doors", parent="default")],
        policies=policies,
        group_policies={"default": ["default-device"], "quarantine": ["quarantine"], **attached},
    )


def blocks(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("user "):
            current = line[5:]
            out[current] = []
        elif line.startswith("topic ") and current is not None:
            out[current].append(line[6:])
        elif line.startswith(("pattern", "user", "topic")):
            pytest.fail(f"unexpected line {line!r}")
    return out


def compiled(world: PolicyWorld) -> dict[str, list[str]]:
    acl = compile_acl(world, PolicyEngine(world))
    assert "pattern" not in acl.text  # never: a pattern would reach every certificate's name
    return blocks(acl.text)


def test_default_policy_gives_each_thing_its_own_topics_only() -> None:
    acl = compiled(world_of(ThingFacts("cam1", groups=("default",)), ThingFacts("cam2", groups=("default",))))
    assert acl["cam1"] == ["write things/cam1/#", "read things/cam1/commands/#"]
    assert acl["cam2"] == ["write things/cam2/#", "read things/cam2/commands/#"]


def test_quarantine_keeps_commands_and_updates_only() -> None:
    acl = compiled(world_of(ThingFacts("qcam", groups=("quarantine",))))
    assert acl["qcam"] == [
        "read things/qcam/commands/#",
        "read things/qcam/update/#",
        "write things/qcam/update/status",
    ]


def test_denies_come_before_every_allow_and_group_variables_resolve() -> None:
    doors = parse_policy_document(
        {
            "statements": [
                {"effect": "allow", "actions": ["publish", "receive"], "resources": ["groups/${group.name}/#"]},
                {"effect": "deny", "actions": ["publish", "receive"], "resources": ["groups/${group.name}/locked/#"]},
            ]
        }
    )
    acl = compiled(world_of(ThingFacts("lock1", groups=("doors",)), extra={"doors": doors}, doors=["doors"]))
    lines = acl["lock1"]
    assert lines[0] == "deny groups/doors/locked/#"
    assert "readwrite groups/doors/#" in lines and "write things/lock1/#" in lines  # inherited from default


def test_a_one_direction_deny_is_written_stricter_and_said() -> None:
    no_reading = parse_policy_document(
        {
            "statements": [
                {"effect": "allow", "actions": ["publish", "receive"], "resources": ["shared/#"]},
                {"effect": "deny", "actions": ["receive"], "resources": ["shared/secret"]},
            ]
        }
    )
    world = world_of(ThingFacts("cam1", groups=("default",)), extra={"p": no_reading}, default=["default-device", "p"])
    acl = compile_acl(world, PolicyEngine(world))
    assert blocks(acl.text)["cam1"][0] == "deny shared/secret"
    assert any("also refuses publish" in note for note in acl.stricter)


def test_deny_with_an_unresolvable_variable_is_broadened() -> None:
    policy = parse_policy_document(
        {
            "statements": [
                {"effect": "allow", "actions": ["publish"], "resources": ["site/#"]},
                {"effect": "deny", "actions": ["publish"], "resources": ["site/${thing.attr.site}/x"]},
            ]
        }
    )
    world = world_of(ThingFacts("cam1", groups=("default",)), extra={"p": policy}, default=["default-device", "p"])
    assert compiled(world)["cam1"][0] == "deny site/+/x"


def test_a_thing_that_may_not_connect_gets_no_block() -> None:
    no_connect = parse_policy_document(
        {"statements": [{"effect": "deny", "actions": ["connect"], "resources": ["${thing.name}"]}]}
    )
    world = world_of(
        ThingFacts("cam1", groups=("default",)), extra={"nc": no_connect}, default=["default-device", "nc"]
    )
    acl = compiled(world)
    assert "cam1" not in acl


def test_a_thing_in_no_group_gets_nothing() -> None:
    assert "loner" not in compiled(world_of(ThingFacts("loner")))


@pytest.mark.parametrize("value", ["x\nuser cam2", "x\rtopic readwrite a", "x\x7fy"])
def test_an_attribute_cannot_inject_acl_lines(value: str) -> None:
    allow = parse_policy_document(
        {"statements": [{"effect": "allow", "actions": ["publish"], "resources": ["site/${thing.attr.site}/#"]}]}
    )
    deny = parse_policy_document(
        {"statements": [{"effect": "deny", "actions": ["publish"], "resources": ["x/${thing.attr.site}"]}]}
    )
    for extra in ({"a": allow}, {"a": allow, "d": deny}):
        world = world_of(
            ThingFacts("cam1", attributes={"site": value}, groups=("default",)),
            extra=extra,
            default=["default-device", *extra],
        )
        acl = compile_acl(world, PolicyEngine(world))
        assert all(line.startswith(("#", "user ", "topic ")) or not line for line in acl.text.splitlines())
        assert "user cam2" not in acl.text and value not in acl.text


def test_the_internal_identity_cannot_be_a_thing_name() -> None:
    with pytest.raises(InvalidInputError):
        validate_name(INTERNAL_IDENTITY)
