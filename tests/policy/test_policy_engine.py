"""Decisions of the policy engine, each test named after the abuse it stops."""

from __future__ import annotations

import threading

import pytest

from thingward.broker.base import ACTIONS, Authorizer
from thingward.errors import InvalidInputError
from thingward.policy import DEFAULT_POLICY, PolicyEngine, PolicyWorld, reference_authorize

from ._worlds import allow, deny, engine, policy, thing, world

FLEET = world(
    things=[thing("cam-a", "cams"), thing("cam-b", "cams"), thing("lock-c", "locks")],
    groups={"cams": None, "locks": None},
    policies={"default": DEFAULT_POLICY},
    group_policies={"cams": ["default"], "locks": ["default"]},
)


def decide(e: PolicyEngine, who: str, action: str, topic: str) -> bool:
    """The engine's decision, checked against the plain reference evaluator and explain on the way."""
    decision = e.authorize(who, action, topic)  # type: ignore[arg-type]
    assert decision == reference_authorize(e.world, who, action, topic)
    assert e.explain(who, action, topic).allowed == decision
    return decision


def test_engine_satisfies_the_broker_authorizer_protocol() -> None:
    authorizer: Authorizer = PolicyEngine(FLEET)
    assert authorizer.authorize("cam-a", "publish", "things/cam-a/telemetry")


def test_thing_uses_its_own_topics_under_default_policy() -> None:
    e = PolicyEngine(FLEET)
    assert decide(e, "cam-a", "connect", "cam-a")
    assert decide(e, "cam-a", "publish", "things/cam-a/telemetry")
    assert decide(e, "cam-a", "publish", "things/cam-a")  # '#' matches the parent level too
    assert decide(e, "cam-a", "subscribe", "things/cam-a/commands/#")
    assert decide(e, "cam-a", "subscribe", "things/cam-a/commands/+/now")
    assert decide(e, "cam-a", "receive", "things/cam-a/commands/reboot")


@pytest.mark.parametrize(
    ("action", "topic"),
    [
        ("publish", "things/cam-b/telemetry"),
        ("publish", "things/cam-b/commands/unlock"),
        ("publish", "things/lock-c/commands/open"),
        ("subscribe", "things/cam-b/#"),
        ("subscribe", "things/+/telemetry"),
        ("subscribe", "things/+/commands/#"),
        ("subscribe", "#"),
        ("subscribe", "+/+/#"),
        ("subscribe", "things/#"),
        ("subscribe", "things/cam-a/#"),  # more than its commands: it would read its own telemetry echo
        ("receive", "things/cam-b/commands/reboot"),
        ("receive", "things/cam-a/telemetry"),
        ("connect", "cam-b"),
        ("connect", "lock-c"),
    ],
)
def test_device_cannot_reach_another_devices_topics_under_default_policy(action: str, topic: str) -> None:
    assert not decide(PolicyEngine(FLEET), "cam-a", action, topic)


def test_default_deny_without_any_policy() -> None:
    e = engine(things=[thing("cam-a", "cams")], groups={"cams": None})
    for action in ACTIONS:
        assert not decide(e, "cam-a", action, "things/cam-a/x" if action != "connect" else "cam-a")


def test_unknown_or_disabled_thing_is_denied_everything() -> None:
    e = PolicyEngine(FLEET)
    for action in ACTIONS:
        assert not decide(e, "ghost", action, "ghost" if action == "connect" else "things/ghost/x")
    explanation = e.explain("ghost", "publish", "things/ghost/x")
    assert explanation.reason == "unknown or disabled thing"


def test_explicit_deny_beats_allow_from_another_group() -> None:
    e = engine(
        things=[thing("cam-a", "cams", "quarantine")],
        groups={"cams": None, "quarantine": None},
        policies={
            "default": DEFAULT_POLICY,
            "q": policy(deny("publish", "things/${thing.name}/#", sid="quarantined")),
        },
        group_policies={"cams": ["default"], "quarantine": ["q"]},
    )
    assert not decide(e, "cam-a", "publish", "things/cam-a/telemetry")
    assert decide(e, "cam-a", "connect", "cam-a")
    explanation = e.explain("cam-a", "publish", "things/cam-a/telemetry")
    assert explanation.reason == "denied by statement 'quarantined' of policy 'q' attached to group 'quarantine'"


def test_deny_in_same_policy_beats_allow_listed_before_it() -> None:
    e = engine(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow("publish", "things/#"), deny("publish", "things/+/firmware"))},
        group_policies={"cams": ["p"]},
    )
    assert decide(e, "cam-a", "publish", "things/cam-a/telemetry")
    assert not decide(e, "cam-a", "publish", "things/cam-a/firmware")


HIERARCHY = world(
    things=[thing("t-site", "site-1"), thing("t-sibling", "site-2"), thing("t-other", "other")],
    groups={"line": None, "region": "line", "site-1": "region", "site-2": "region", "other": None},
    policies={
        "line-p": policy(allow("publish", "lines/${group.name}/${thing.name}", sid="line-wide")),
        "site-1-p": policy(allow("publish", "sites/${group.name}/#", sid="site-only")),
    },
    group_policies={"line": ["line-p"], "site-1": ["site-1-p"]},
)


def test_grandparent_policy_reaches_grandchild_group_member() -> None:
    e = PolicyEngine(HIERARCHY)
    assert decide(e, "t-site", "publish", "lines/line/t-site")
    explanation = e.explain("t-site", "publish", "lines/line/t-site")
    [matched] = explanation.statements
    assert matched["attached_to"] == "group:line"
    assert matched.via == ("site-1", "region", "line")
    assert matched.resolved == "lines/line/t-site"
    assert explanation.reason == "allowed by statement 'line-wide' of policy 'line-p' attached to group 'line'"


def test_sibling_group_policy_does_not_leak_to_the_other_sibling() -> None:
    e = PolicyEngine(HIERARCHY)
    assert decide(e, "t-site", "publish", "sites/site-1/x")
    assert not decide(e, "t-sibling", "publish", "sites/site-1/x")
    assert not decide(e, "t-sibling", "publish", "sites/site-2/x")
    assert not decide(e, "t-other", "publish", "lines/line/t-other")


def test_group_name_is_the_attaching_group_even_when_inherited() -> None:
    e = PolicyEngine(HIERARCHY)
    # ${group.name} is 'line' (where the policy is attached), not the member's own group 'site-1'.
    assert not decide(e, "t-site", "publish", "lines/site-1/t-site")
    assert not decide(e, "t-site", "publish", "lines/region/t-site")


def test_group_name_in_policy_attached_to_thing_grants_nothing() -> None:
    e = engine(
        things=[thing("cam-a")],
        policies={"p": policy(allow("publish", "g/${group.name}"), deny("publish", "h/${group.name}/x"))},
        thing_policies={"cam-a": ["p"]},
    )
    assert not decide(e, "cam-a", "publish", "g/cam-a")
    assert not decide(e, "cam-a", "publish", "g/+")


def test_thing_attributes_scope_topics() -> None:
    e = engine(
        things=[thing("cam-a", "cams", zone="garden"), thing("cam-b", "cams", zone="porch")],
        groups={"cams": None},
        policies={"p": policy(allow(["publish", "subscribe"], "zones/${thing.attr.zone}/${thing.name}-live/#"))},
        group_policies={"cams": ["p"]},
    )
    assert decide(e, "cam-a", "publish", "zones/garden/cam-a-live/clip")
    assert not decide(e, "cam-a", "publish", "zones/porch/cam-a-live/clip")
    assert not decide(e, "cam-b", "publish", "zones/garden/cam-a-live/clip")
    assert decide(e, "cam-b", "subscribe", "zones/porch/cam-b-live/+")
    assert not decide(e, "cam-b", "subscribe", "zones/+/cam-b-live/#")


@pytest.mark.parametrize("hostile", ["+", "#", "a/#", "x/+", "", "$SYS", "a\x00b", "\ud800"])
def test_attribute_value_cannot_inject_wildcards_or_levels(hostile: str) -> None:
    e = engine(
        things=[thing("cam-a", "cams", zone=hostile)],
        groups={"cams": None},
        policies={"p": policy(allow(["publish", "subscribe", "receive"], "zones/${thing.attr.zone}/clips"))},
        group_policies={"cams": ["p"]},
    )
    for action in ("publish", "receive"):
        for topic in ("zones/garden/clips", "zones/a/b/clips", "zones/a/clips", "zones/$SYS/clips", "zones//clips"):
            assert not decide(e, "cam-a", action, topic)
    for topic_filter in ("zones/+/clips", "zones/#", "#", "zones/a/#/clips"):
        assert not decide(e, "cam-a", "subscribe", topic_filter)


def test_attribute_value_that_looks_like_a_variable_is_taken_literally() -> None:
    e = engine(
        things=[thing("cam-a", "cams", zone="z${thing.name}")],
        groups={"cams": None},
        policies={"p": policy(allow("publish", "zones/${thing.attr.zone}"))},
        group_policies={"cams": ["p"]},
    )
    assert not decide(e, "cam-a", "publish", "zones/zcam-a")
    assert decide(e, "cam-a", "publish", "zones/z${thing.name}")


def test_missing_attribute_in_deny_fails_closed_by_denying_the_whole_level() -> None:
    e = engine(
        things=[thing("cam-a", "cams")],  # no 'zone' attribute
        groups={"cams": None},
        policies={
            "p": policy(
                allow("publish", "zones/#"),
                deny("publish", "zones/${thing.attr.zone}/private"),
            )
        },
        group_policies={"cams": ["p"]},
    )
    assert not decide(e, "cam-a", "publish", "zones/garden/private")
    assert not decide(e, "cam-a", "publish", "zones/anything/private")
    assert decide(e, "cam-a", "publish", "zones/garden/public")
    [denying] = [m for m in e.explain("cam-a", "publish", "zones/x/private").statements if m.effect == "deny"]
    assert denying.resolved == "zones/+/private"


def test_hash_does_not_grant_sys_topics() -> None:
    e = engine(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow(["publish", "subscribe", "receive"], "#"), allow("receive", "+/broker/#"))},
        group_policies={"cams": ["p"]},
    )
    assert decide(e, "cam-a", "publish", "anything/else")
    for action in ("publish", "receive"):
        assert not decide(e, "cam-a", action, "$SYS/broker/load")
        assert not decide(e, "cam-a", action, "$SYS")
    assert not decide(e, "cam-a", "subscribe", "$SYS/#")
    assert not decide(e, "cam-a", "subscribe", "$SYS/broker/+")
    assert decide(e, "cam-a", "subscribe", "#")  # matches no '$' topic, so it is covered


def test_literal_sys_resource_grants_sys_topics() -> None:
    e = engine(
        things=[thing("mon", "ops")],
        groups={"ops": None},
        policies={"p": policy(allow(["subscribe", "receive"], "$SYS/#"))},
        group_policies={"ops": ["p"]},
    )
    assert decide(e, "mon", "receive", "$SYS/broker/load")
    assert decide(e, "mon", "subscribe", "$SYS/broker/+")
    assert not decide(e, "mon", "subscribe", "#")


def test_deny_with_first_level_wildcard_does_not_reach_sys_topics() -> None:
    e = engine(
        things=[thing("mon", "ops")],
        groups={"ops": None},
        policies={"p": policy(allow("receive", "$SYS/#", "a/b"), deny("receive", "#"))},
        group_policies={"ops": ["p"]},
    )
    assert decide(e, "mon", "receive", "$SYS/x")
    assert not decide(e, "mon", "receive", "a/b")


@pytest.mark.parametrize(
    "topic",
    ["things/cam-a/+", "things/cam-a/#", "", "things/cam-a/\x00", "things/cam-a/" + "x" * 65536, "things/cam-a/\ud800"],
)
def test_publish_to_malformed_topic_is_denied(topic: str) -> None:
    e = engine(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow(["publish", "receive"], "#"))},
        group_policies={"cams": ["p"]},
    )
    assert not decide(e, "cam-a", "publish", topic)
    assert not decide(e, "cam-a", "receive", topic)


def test_publish_topic_at_the_mqtt_length_limit_is_allowed_and_one_byte_more_is_not() -> None:
    e = engine(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow("publish", "things/${thing.name}/#"))},
        group_policies={"cams": ["p"]},
    )
    head = "things/cam-a/"
    assert decide(e, "cam-a", "publish", head + "x" * (65535 - len(head)))
    assert not decide(e, "cam-a", "publish", head + "x" * (65536 - len(head)))
    # 'é' is two bytes in UTF-8: the limit counts bytes, not characters.
    assert not decide(e, "cam-a", "publish", head + "é" * ((65535 - len(head)) // 2 + 1))


@pytest.mark.parametrize(
    "topic_filter", ["things/cam-a/commands/#/x", "things/cam-a/commands/a+", "", "things/cam-a/commands/\x00"]
)
def test_malformed_subscribe_filter_is_denied(topic_filter: str) -> None:
    e = PolicyEngine(FLEET)
    assert not decide(e, "cam-a", "subscribe", topic_filter)


def test_subscribe_filter_overlapping_a_deny_is_refused_even_if_an_allow_covers_it() -> None:
    e = engine(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow("subscribe", "things/${thing.name}/#"), deny("subscribe", "things/+/secrets/#"))},
        group_policies={"cams": ["p"]},
    )
    assert decide(e, "cam-a", "subscribe", "things/cam-a/telemetry/#")
    assert not decide(e, "cam-a", "subscribe", "things/cam-a/#")  # would receive secrets
    assert not decide(e, "cam-a", "subscribe", "things/cam-a/+/keys")  # '+' can be 'secrets'
    assert not decide(e, "cam-a", "subscribe", "things/cam-a/secrets")


def test_subscribe_needs_one_resource_that_covers_the_whole_filter() -> None:
    e = engine(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"p": policy(allow("subscribe", "a/x", "a/y"))},
        group_policies={"cams": ["p"]},
    )
    assert decide(e, "cam-a", "subscribe", "a/x")
    assert not decide(e, "cam-a", "subscribe", "a/+")


def test_connect_with_another_things_client_id_is_refused() -> None:
    e = PolicyEngine(FLEET)
    assert decide(e, "cam-a", "connect", "cam-a")
    for client_id in ("cam-b", "cam-a/x", "", "+", "#", "cam-a\x00", "CAM-A"):
        assert not decide(e, "cam-a", "connect", client_id)


def test_unknown_action_is_denied() -> None:
    e = PolicyEngine(FLEET)
    assert not e.authorize("cam-a", "admin", "things/cam-a/x")  # type: ignore[arg-type]
    assert e.explain("cam-a", "admin", "x").decision == "deny"


def test_policy_attached_to_thing_applies_to_that_thing_only() -> None:
    e = engine(
        things=[thing("cam-a", "cams"), thing("cam-b", "cams")],
        groups={"cams": None},
        policies={"extra": policy(allow("publish", "debug/${thing.name}"))},
        thing_policies={"cam-a": ["extra"]},
    )
    assert decide(e, "cam-a", "publish", "debug/cam-a")
    assert not decide(e, "cam-b", "publish", "debug/cam-b")
    assert e.explain("cam-a", "publish", "debug/cam-a").statements[0].attached_to == "thing:cam-a"


def test_dangling_references_fail_closed() -> None:
    e = engine(
        things=[thing("cam-a", "ghost-group", "cams")],
        groups={"cams": "ghost-parent"},
        policies={"p": policy(allow("publish", "a"))},
        group_policies={"ghost-group": ["p"], "ghost-parent": ["p"], "cams": ["missing-policy"]},
    )
    assert not decide(e, "cam-a", "publish", "a")


def test_group_cycle_does_not_hang_or_grant_more() -> None:
    e = engine(
        things=[thing("cam-a", "a")],
        groups={"a": "b", "b": "a"},
        policies={"p": policy(allow("publish", "x/${group.name}"))},
        group_policies={"b": ["p"]},
    )
    assert decide(e, "cam-a", "publish", "x/b")
    assert not decide(e, "cam-a", "publish", "x/a")


def test_deep_group_chain_is_inherited() -> None:
    groups: dict[str, str | None] = {f"g{i}": (f"g{i - 1}" if i else None) for i in range(50)}
    e = engine(
        things=[thing("cam-a", "g49")],
        groups=groups,
        policies={"p": policy(allow("publish", "root/${group.name}"))},
        group_policies={"g0": ["p"]},
    )
    assert decide(e, "cam-a", "publish", "root/g0")
    assert len(e.explain("cam-a", "publish", "root/g0").statements[0].via) == 50


def test_replace_world_revokes_cached_grants() -> None:
    e = PolicyEngine(FLEET)
    assert e.authorize("cam-a", "publish", "things/cam-a/x")
    assert e.cached_things == 1
    e.replace_world(world(things=[thing("cam-a", "cams")], groups={"cams": None}))
    assert e.cached_things == 0
    assert not e.authorize("cam-a", "publish", "things/cam-a/x")


def test_disabling_a_thing_takes_effect_at_once() -> None:
    e = PolicyEngine(FLEET)
    assert e.authorize("cam-b", "publish", "things/cam-b/x")
    disabled = world(
        things=[thing("cam-a", "cams")],
        groups={"cams": None},
        policies={"default": DEFAULT_POLICY},
        group_policies={"cams": ["default"]},
    )
    e.replace_world(disabled)
    assert not e.authorize("cam-b", "publish", "things/cam-b/x")
    assert e.authorize("cam-a", "publish", "things/cam-a/x")


def test_invalidate_drops_only_that_things_matcher() -> None:
    e = PolicyEngine(FLEET)
    e.authorize("cam-a", "publish", "things/cam-a/x")
    e.authorize("cam-b", "publish", "things/cam-b/x")
    e.invalidate("cam-a")
    e.invalidate("never-seen")
    assert e.cached_things == 1
    assert e.authorize("cam-a", "publish", "things/cam-a/x")


def test_cache_is_bounded_so_many_identities_cannot_exhaust_memory() -> None:
    things = [thing(f"t{i}", "all") for i in range(50)]
    e = PolicyEngine(
        world(things=things, groups={"all": None}, policies={"d": DEFAULT_POLICY}, group_policies={"all": ["d"]}),
        cache_size=8,
    )
    for i in range(50):
        assert e.authorize(f"t{i}", "publish", f"things/t{i}/x")
        assert not e.authorize(f"t{i}", "publish", f"things/t{(i + 1) % 50}/x")
    assert e.cached_things == 8
    assert not e.authorize("ghost", "publish", "things/ghost/x")
    assert e.cached_things == 8  # unknown names are not cached


def test_busy_thing_keeps_its_matcher_when_an_idle_one_is_evicted() -> None:
    things = [thing(name, "all") for name in ("busy", "idle", "new")]
    e = PolicyEngine(
        world(things=things, groups={"all": None}, policies={"d": DEFAULT_POLICY}, group_policies={"all": ["d"]}),
        cache_size=2,
    )
    e.authorize("busy", "connect", "busy")
    e.authorize("idle", "connect", "idle")
    e.authorize("busy", "connect", "busy")  # used again: survives the next eviction
    e.authorize("new", "connect", "new")
    assert set(e._state.cache) == {"busy", "new"}
    assert e.authorize("idle", "connect", "idle")  # rebuilt on demand


def test_world_refuses_facts_filed_under_another_name() -> None:
    with pytest.raises(InvalidInputError, match="filed under the key"):
        PolicyWorld(things={"cam-a": thing("cam-b")})


def test_things_sharing_documents_share_one_compiled_matcher_but_not_grants() -> None:
    things = [thing(f"t{i}", f"site-{i % 3}", zone=f"z{i % 2}") for i in range(12)]
    w = world(
        things=things,
        groups={"site-0": None, "site-1": None, "site-2": None},
        policies={
            f"site-{i}-p": policy(allow("publish", "s/${group.name}/${thing.attr.zone}/${thing.name}"))
            for i in range(3)
        },
        group_policies={f"site-{i}": [f"site-{i}-p"] for i in range(3)},
    )
    e = PolicyEngine(w)
    for i in range(12):
        for j in range(12):
            topic = f"s/site-{j % 3}/z{j % 2}/t{j}"
            assert decide(e, f"t{i}", "publish", topic) == (i == j)
    assert e.compiled_templates == 1


def test_world_replaced_from_another_thread_while_deciding() -> None:
    e = PolicyEngine(FLEET)
    revoked = world(things=[thing("cam-a", "cams")], groups={"cams": None})
    stop = threading.Event()
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for _ in range(200):
                e.replace_world(revoked)
                e.replace_world(FLEET)
                e.invalidate("cam-a")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    worker = threading.Thread(target=flip)
    worker.start()
    while not stop.is_set():
        assert not e.authorize("cam-a", "publish", "things/cam-b/x")
        e.authorize("cam-a", "publish", "things/cam-a/x")
    worker.join(timeout=30)
    assert not errors
    e.replace_world(revoked)
    assert not e.authorize("cam-a", "publish", "things/cam-a/x")
