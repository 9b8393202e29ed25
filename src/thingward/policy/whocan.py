"""Who may do an action on a topic: every thing, with the statements that grant it.

For a fleet of 100k things this cannot evaluate every thing. It works per group set (things with
the same groups have the same attachments) and first checks each resource with its thing variables
made '+' (any resolution matches less than that), which rules out most resources for the whole set
at once. A resource that survives and holds a level made only of one `${thing.*}` variable, facing a
literal level of the topic, can only grant the things whose value equals that level: those are
found through an index. Everything left is evaluated exactly, once per distinct combination of the
values that matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thingward.broker.base import ACTIONS
from thingward.policy._compile import thing_value
from thingward.policy._state import GroupSetKey, WorldState
from thingward.policy.explain import attachment_lookup, target_problem
from thingward.policy.topics import (
    GROUP_NAME,
    THING_ATTR_PREFIX,
    THING_NAME,
    TopicPattern,
    Variable,
    Wildcard,
    covers,
    intersects,
    is_substitutable,
    matches,
)
from thingward.policy.world import Attachment, ThingFacts

__all__ = ["Grant", "ThingGrants", "WhoCan", "who_can"]


@dataclass(frozen=True)
class Grant:
    """A statement that grants the action to a thing."""

    policy: str
    sid: str | None
    index: int
    attached_to: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "sid": self.sid if self.sid is not None else self.index,
            "index": self.index,
            "attached_to": self.attached_to,
        }


@dataclass(frozen=True)
class ThingGrants:
    thing: str
    grants: tuple[Grant, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"thing": self.thing, "statements": [grant.to_dict() for grant in self.grants]}


@dataclass(frozen=True)
class WhoCan:
    """Every thing allowed to do `action` on `topic` (sorted by name), and the groups the grants come through."""

    action: str
    topic: str
    things: tuple[ThingGrants, ...]
    groups: tuple[str, ...]
    # Why nobody can, when the question itself is malformed (for example a topic name with '+').
    problem: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.thing for entry in self.things)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "topic": self.topic,
            "count": len(self.things),
            "things": [entry.to_dict() for entry in self.things],
            "groups": list(self.groups),
            "problem": self.problem,
        }


@dataclass(frozen=True)
class _Resource:
    attachment: Attachment
    index: int
    effect: str
    pattern: TopicPattern
    thing_vars: tuple[str, ...]
    # (variable key, required value) when the resource can only match things with that value.
    narrowing: tuple[str, str] | None


def _hit(action: str, effect: str, resolved: tuple[str, ...], target: list[str]) -> bool:
    if action != "subscribe":
        return matches(resolved, target)
    return intersects(resolved, target) if effect == "deny" else covers(resolved, target)


def _narrowing(pattern: TopicPattern, target: list[str], action: str) -> tuple[bool, tuple[str, str] | None]:
    """For an allow: (whether it can match at all, the (variable, value) every match needs, if any)."""
    narrowing: tuple[str, str] | None = None
    for position, level in enumerate(pattern.levels):
        if isinstance(level, Wildcard):
            break
        if not any(isinstance(seg, Variable) for seg in level):
            continue
        facing = target[position] if position < len(target) else None
        if facing is None or facing in ("+", "#"):
            # A level holding a variable resolves to literal text: it cannot cover a wildcard.
            if action == "subscribe":
                return False, None
            break
        single = level[0] if len(level) == 1 else None
        if narrowing is None and isinstance(single, Variable) and single.key != GROUP_NAME:
            narrowing = (single.key, facing)
    return True, narrowing


def _relevant_resources(attachment: Attachment, action: str, target: list[str]) -> list[_Resource]:
    """The attachment's resources that can match for some thing (checked with thing variables as '+')."""
    group = attachment.group_name

    def only_group(key: str) -> str | None:
        return group if key == GROUP_NAME else None

    out: list[_Resource] = []
    for index, statement in enumerate(attachment.document.statements):
        if action not in statement.actions:
            continue
        for pattern in statement.patterns:
            if (
                statement.effect == "allow"
                and GROUP_NAME in pattern.variables
                and (group is None or not is_substitutable(group))
            ):
                continue  # an allow with an unresolvable variable grants nothing
            if not _hit(action, statement.effect, pattern.broadened(only_group), target):
                continue
            thing_vars = tuple(sorted(k for k in pattern.variables if k != GROUP_NAME))
            narrowing = None
            if statement.effect == "allow":
                possible, narrowing = _narrowing(pattern, target, action)
                if not possible:
                    continue
            out.append(_Resource(attachment, index, statement.effect, pattern, thing_vars, narrowing))
    return out


def who_can(state: WorldState, action: str, topic: str) -> WhoCan:
    """Every thing of the world in `state` that may do `action` on `topic`."""
    if action not in ACTIONS:
        return WhoCan(action, topic, (), (), f"unknown action {action!r}")
    problem = target_problem(action, topic)
    if problem is not None:
        return WhoCan(action, topic, (), (), problem)
    target = topic.split("/")
    world = state.world
    per_attachment: dict[tuple[str, str, str], list[_Resource]] = {}
    members = state.members_by_group_set()

    full: list[tuple[GroupSetKey, list[_Resource]]] = []
    narrow_sets: dict[GroupSetKey, list[_Resource]] = {}
    lookups: set[tuple[str, str]] = set()
    for key, names in members.items():
        info = state.group_set_info(world.things[names[0]])
        resources: list[_Resource] = []
        for attachment in info.attachments:
            akey = (attachment.policy, attachment.kind, attachment.target)
            found = per_attachment.get(akey)
            if found is None:
                found = _relevant_resources(attachment, action, target)
                per_attachment[akey] = found
            resources.extend(found)
        allows = [r for r in resources if r.effect == "allow"]
        if not allows:
            continue
        if all(r.narrowing is not None for r in allows):
            narrow_sets[key] = resources
            lookups.update(r.narrowing for r in allows if r.narrowing is not None)
        else:
            full.append((key, resources))

    candidates: list[tuple[str, list[_Resource]]] = []
    for _key, resources in full:
        candidates.extend((name, resources) for name in members[_key])
    seen: set[str] = set()
    for var, value in sorted(lookups):
        if not is_substitutable(value):
            continue
        if var == THING_NAME:
            holders: list[str] = [value] if value in world.things else []
        else:
            holders = state.things_with_attribute(var[len(THING_ATTR_PREFIX) :]).get(value, [])
        for name in holders:
            if name in seen:
                continue
            seen.add(name)
            resources_for = narrow_sets.get(state.group_set_key(world.things[name]))
            if resources_for is not None:
                candidates.append((name, resources_for))

    memo: dict[tuple[int, tuple[str | None, ...]], tuple[Grant, ...] | None] = {}
    results: list[ThingGrants] = []
    groups: set[str] = set()
    for name, resources in candidates:
        facts = world.things[name]
        relevant_vars = sorted({var for r in resources for var in r.thing_vars})
        memo_key = (id(resources), tuple(thing_value(facts, var) for var in relevant_vars))
        if memo_key in memo:
            grants = memo[memo_key]
        else:
            grants = _evaluate(resources, facts, action, target)
            memo[memo_key] = grants
        if grants:
            results.append(ThingGrants(name, grants))
            groups.update(g.attached_to.partition(":")[2] for g in grants if g.attached_to.startswith("group:"))
    results.sort(key=lambda entry: entry.thing)
    return WhoCan(action, topic, tuple(results), tuple(sorted(groups)))


def _evaluate(
    resources: list[_Resource],
    facts: ThingFacts,
    action: str,
    target: list[str],
) -> tuple[Grant, ...] | None:
    """The granting statements if allowed, None if denied or not granted."""
    grants: dict[Grant, None] = {}
    for resource in resources:
        deny = resource.effect == "deny"
        resolved = resource.pattern.resolve(attachment_lookup(facts, resource.attachment), broaden=deny)
        if resolved is None or not _hit(action, resource.effect, resolved, target):
            continue
        if deny:
            return None
        statement = resource.attachment.document.statements[resource.index]
        grants[Grant(resource.attachment.policy, statement.sid, resource.index, resource.attachment.attached_to)] = None
    return tuple(grants) or None
