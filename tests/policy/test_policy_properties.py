"""Property tests: the compiled engine, explain and who_can agree with the plain reference evaluator.

Random worlds (groups with parents, including cycles and dangling parents; things in several groups
with attributes, some hostile; random policies with wildcards, variables and both effects) and random
topics and filters drawn from the same small alphabet, so that matches are frequent.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thingward.broker.base import ACTIONS
from thingward.policy import (
    GroupFacts,
    PolicyEngine,
    PolicyWorld,
    ThingFacts,
    parse_policy_document,
    reference_authorize,
)
from thingward.policy.topics import covers, intersects, matches
from thingward.policy.world import thing_attachments

GROUPS = ["g0", "g1", "g2", "g3"]
THINGS = ["t0", "t1", "t2"]
LITERALS = ["a", "b", "t0", "t1", "g0", "z", "$SYS", ""]
VALUES = ["a", "b", "t1", "z", "+", "#", "a/b", "", "$SYS", "a\x00"]
T = TypeVar("T")
VARIABLES = ["${thing.name}", "${thing.attr.zone}", "${thing.attr.kind}", "${group.name}"]


# Every choice is one draw from a single pre-built strategy: building strategies per draw (sampled_from
# on a fresh list) costs hypothesis more than running the engine does.
_INDEX = st.integers(0, 1 << 16)
Draw = Any  # st.DrawFn or st.DataObject.draw


def pick(draw: Draw, options: Sequence[T]) -> T:
    return options[draw(_INDEX) % len(options)]


def count(draw: Draw, low: int, high: int) -> int:
    return low + draw(_INDEX) % (high - low + 1)


def draw_pattern(draw: Draw) -> str:
    levels: list[str] = []
    for _ in range(count(draw, 1, 4)):
        kind = pick(draw, ["literal", "literal", "plus", "variable", "variable", "mixed"])
        if kind == "literal":
            levels.append(pick(draw, LITERALS))
        elif kind == "plus":
            levels.append("+")
        elif kind == "variable":
            levels.append(pick(draw, VARIABLES))
        else:
            levels.append(pick(draw, ["x", "a"]) + pick(draw, VARIABLES))
    if count(draw, 0, 1):
        levels.append("#")
    return "/".join(levels) or "a"  # the empty string is not a pattern


def draw_statement(draw: Draw) -> dict[str, Any]:
    actions = list(dict.fromkeys(pick(draw, ACTIONS) for _ in range(count(draw, 1, 3))))
    resources = list(dict.fromkeys(draw_pattern(draw) for _ in range(count(draw, 1, 3))))
    return {"effect": pick(draw, ["allow", "allow", "deny"]), "actions": actions, "resources": resources}


@st.composite
def worlds(draw: st.DrawFn) -> PolicyWorld:
    groups = [
        GroupFacts(name, pick(draw, [None, None, "ghost", *GROUPS[:index], *GROUPS[index + 1 :]]))
        for index, name in enumerate(GROUPS)
    ]
    things = []
    for name in THINGS:
        attributes = {key: pick(draw, VALUES[:4] * 3 + VALUES) for key in ("zone", "kind") if count(draw, 0, 4)}
        member_of = tuple(pick(draw, [*GROUPS, "ghost"]) for _ in range(count(draw, 1, 3)))
        things.append(ThingFacts(name, attributes, member_of))
    names = [f"p{i}" for i in range(count(draw, 1, 4))]
    policies = {
        name: parse_policy_document({"statements": [draw_statement(draw) for _ in range(count(draw, 1, 3))]})
        for name in names
    }
    attachable = [*names, "missing"]
    group_policies = {
        g: [pick(draw, attachable) for _ in range(count(draw, g != "ghost", 2))] for g in [*GROUPS, "ghost"]
    }
    thing_policies = {t: [pick(draw, attachable) for _ in range(count(draw, 0, 1))] for t in THINGS}
    return PolicyWorld.from_facts(things, groups, policies, group_policies, thing_policies)


TOPIC_LEVELS = [*LITERALS, *VALUES[:4], "xt0", "az", "ag0", "+", "#"]


def draw_topic(draw: Draw) -> str:
    levels = [pick(draw, TOPIC_LEVELS) for _ in range(count(draw, 1, 5))]
    if count(draw, 0, 9) == 0:
        levels.append(pick(draw, ["a+", "\x00", "é", "\ud800"]))
    return "/".join(levels)


def derived_topic(draw: Draw, world: PolicyWorld, thing: str, action: str) -> str:
    """A topic or filter made from a resource that reaches `thing`, so that it often matches."""
    facts = world.things.get(thing)
    reaching = [
        (attachment.group_name, statement)
        for attachment in (thing_attachments(world, thing, facts.groups) if facts is not None else ())
        for statement in attachment.document.statements
        if action in statement.actions
    ]
    if reaching and count(draw, 0, 4):
        group, statement = pick(draw, reaching)
    else:
        group, statement = None, pick(draw, world.policies[pick(draw, sorted(world.policies))].statements)
    text = pick(draw, statement.resources)
    right = {
        "${thing.name}": thing,
        "${group.name}": group or "g0",
        "${thing.attr.zone}": facts.attributes.get("zone", "z") if facts else "z",
        "${thing.attr.kind}": facts.attributes.get("kind", "a") if facts else "a",
    }
    for variable in VARIABLES:
        while variable in text:
            value = right[variable] if count(draw, 0, 5) else pick(draw, [*GROUPS, *VALUES])
            text = text.replace(variable, value, 1)
    levels: list[str] = []
    for level in text.split("/"):
        keep_wildcard = action == "subscribe" and count(draw, 0, 1) == 1
        if level == "+" and not keep_wildcard:
            level = pick(draw, LITERALS)
        if level == "#" and not keep_wildcard:
            levels.extend(pick(draw, LITERALS) for _ in range(count(draw, 0, 2)))
            continue
        levels.append(level)
    if action == "subscribe" and count(draw, 0, 3) == 0:
        levels.append(pick(draw, ["#", "+"]))
    return "/".join(levels)


def seeded(rnd: random.Random) -> Draw:
    """A `draw` for `pick`/`count` that takes its choices from a seeded Random (much cheaper per choice)."""
    return lambda _strategy: rnd.randint(0, 1 << 16)


def draw_query(draw: Draw, world: PolicyWorld) -> tuple[str, str, str]:
    thing = pick(draw, [*THINGS, "ghost"])
    action = pick(draw, [*ACTIONS, *ACTIONS, "admin"])
    topic = derived_topic(draw, world, thing, action) if count(draw, 0, 3) else draw_topic(draw)
    return thing, action, topic


PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@settings(PROPERTY_SETTINGS, max_examples=600)
@given(world=worlds(), rnd=st.randoms(use_true_random=True))
def test_compiled_engine_agrees_with_reference_evaluator(world: PolicyWorld, rnd: random.Random) -> None:
    engine = PolicyEngine(world, cache_size=2)  # tiny cache: exercise eviction and rebuild too
    for _ in range(25):
        thing, action, topic = draw_query(seeded(rnd), world)
        expected = reference_authorize(world, thing, action, topic)
        assert engine.authorize(thing, action, topic) == expected, (thing, action, topic)  # type: ignore[arg-type]
        assert engine.explain(thing, action, topic).allowed == expected, (thing, action, topic)


@PROPERTY_SETTINGS
@given(world=worlds(), rnd=st.randoms(use_true_random=True))
def test_who_can_lists_exactly_the_authorized_things(world: PolicyWorld, rnd: random.Random) -> None:
    engine = PolicyEngine(world)
    for _ in range(6):
        _thing, action, topic = draw_query(seeded(rnd), world)
        expected = {t for t in THINGS if reference_authorize(world, t, action, topic)}
        assert set(engine.who_can(action, topic).names) == expected, (action, topic)


concrete_levels = st.lists(st.sampled_from(["a", "b", "$S", ""]), min_size=1, max_size=4)
pattern_levels = st.lists(st.sampled_from(["a", "b", "$S", "", "+"]), min_size=1, max_size=4).flatmap(
    lambda levels: st.sampled_from([levels, [*levels, "#"], ["#"]])
)


@settings(max_examples=300, deadline=None)
@given(pattern=pattern_levels, topic_filter=pattern_levels, probes=st.lists(concrete_levels, max_size=30))
def test_covers_and_intersects_agree_with_matching_on_sample_topics(
    pattern: list[str], topic_filter: list[str], probes: list[list[str]]
) -> None:
    # If the filter is covered, no sampled topic matches the filter without matching the pattern;
    # a topic matched by both proves they intersect.
    for topic in probes:
        both = matches(pattern, topic) and matches(topic_filter, topic)
        if both:
            assert intersects(pattern, topic_filter)
        if covers(pattern, topic_filter) and matches(topic_filter, topic):
            assert matches(pattern, topic)
