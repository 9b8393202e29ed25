"""The facts the policy engine decides from: things, groups, policies and where policies are attached.

The registry builds a `PolicyWorld` from storage; the engine never reads storage itself. A world is
immutable; to change facts, build a new world and hand it to `PolicyEngine.replace_world`.
Disabled things are left out: a thing that is not in `things` is denied everything.

References that do not resolve fail closed: a membership in a group that is not in `groups`
brings no policy, a parent that is not in `groups` ends the chain of ancestors, and an attachment
naming a policy that is not in `policies` grants and denies nothing (`lint_world` reports each).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

from thingward.errors import InvalidInputError
from thingward.policy.document import PolicyDocument

__all__ = ["Attachment", "GroupFacts", "PolicyWorld", "ThingFacts", "group_chain", "thing_attachments"]


K = TypeVar("K")
V = TypeVar("V")


def _frozen_mapping(value: Mapping[K, V]) -> Mapping[K, V]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class ThingFacts:
    """What the policy engine knows about one enabled thing."""

    name: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"a thing name must be a non-empty string, not {self.name!r}")
        attributes = _frozen_mapping(self.attributes)
        for key, value in attributes.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidInputError(f"thing {self.name!r}: attribute {key!r} must map a string to a string")
        groups = tuple(self.groups)
        if not all(isinstance(group, str) for group in groups):
            raise InvalidInputError(f"thing {self.name!r}: group names must be strings")
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "groups", groups)


@dataclass(frozen=True)
class GroupFacts:
    """A group and its parent (None for a top-level group)."""

    name: str
    parent: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"a group name must be a non-empty string, not {self.name!r}")
        if self.parent is not None and not isinstance(self.parent, str):
            raise InvalidInputError(f"group {self.name!r}: the parent must be a group name or None")


@dataclass(frozen=True)
class PolicyWorld:
    """Everything a decision depends on, as immutable mappings keyed by name."""

    things: Mapping[str, ThingFacts] = field(default_factory=dict)
    groups: Mapping[str, GroupFacts] = field(default_factory=dict)
    policies: Mapping[str, PolicyDocument] = field(default_factory=dict)
    group_policies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    thing_policies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, mapping in (("thing", self.things), ("group", self.groups)):
            for key, facts in mapping.items():
                if key != facts.name:
                    raise InvalidInputError(f"{kind} {facts.name!r} is filed under the key {key!r}")
        for name, document in self.policies.items():
            if not isinstance(document, PolicyDocument):
                raise InvalidInputError(f"policy {name!r} is not a PolicyDocument")
        object.__setattr__(self, "things", _frozen_mapping(self.things))
        object.__setattr__(self, "groups", _frozen_mapping(self.groups))
        object.__setattr__(self, "policies", _frozen_mapping(self.policies))
        object.__setattr__(
            self, "group_policies", MappingProxyType({k: tuple(v) for k, v in self.group_policies.items()})
        )
        object.__setattr__(
            self, "thing_policies", MappingProxyType({k: tuple(v) for k, v in self.thing_policies.items()})
        )

    @classmethod
    def from_facts(
        cls,
        things: Iterable[ThingFacts] = (),
        groups: Iterable[GroupFacts] = (),
        policies: Mapping[str, PolicyDocument] | None = None,
        group_policies: Mapping[str, Iterable[str]] | None = None,
        thing_policies: Mapping[str, Iterable[str]] | None = None,
    ) -> PolicyWorld:
        """Build a world from lists of facts (keys are taken from the names)."""
        return cls(
            things={t.name: t for t in things},
            groups={g.name: g for g in groups},
            policies=dict(policies or {}),
            group_policies={k: tuple(v) for k, v in (group_policies or {}).items()},
            thing_policies={k: tuple(v) for k, v in (thing_policies or {}).items()},
        )


@dataclass(frozen=True)
class Attachment:
    """One policy as it reaches one thing: where it is attached, and the group path that brings it."""

    policy: str
    document: PolicyDocument
    kind: Literal["group", "thing"]
    target: str
    # Group chain from the thing's own group to the attaching group; empty for a thing attachment.
    via: tuple[str, ...]

    @property
    def attached_to(self) -> str:
        return f"{self.kind}:{self.target}"

    @property
    def group_name(self) -> str | None:
        """The value of `${group.name}` for this attachment (None when attached to a thing)."""
        return self.target if self.kind == "group" else None


def group_chain(world: PolicyWorld, group: str) -> tuple[str, ...]:
    """`group` and its ancestors, nearest first; empty if `group` is unknown. Stops at a cycle."""
    chain: list[str] = []
    current: str | None = group
    while current is not None and current in world.groups and current not in chain:
        chain.append(current)
        current = world.groups[current].parent
    return tuple(chain)


def thing_attachments(
    world: PolicyWorld,
    thing: str,
    groups: Iterable[str],
    chains: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[Attachment, ...]:
    """Every (policy, attachment point) that applies to `thing`, each once, in a stable order.

    Thing attachments come first, then groups in sorted order, each followed by its ancestors.
    An attachment reached by several paths keeps the first path as its `via`.
    """
    out: list[Attachment] = []
    seen: set[tuple[str, str, str]] = set()
    for policy in world.thing_policies.get(thing, ()):
        document = world.policies.get(policy)
        key = (policy, "thing", thing)
        if document is not None and key not in seen:
            seen.add(key)
            out.append(Attachment(policy, document, "thing", thing, ()))
    for group in sorted(set(groups)):
        chain = chains[group] if chains is not None and group in chains else group_chain(world, group)
        for depth, ancestor in enumerate(chain):
            for policy in world.group_policies.get(ancestor, ()):
                document = world.policies.get(policy)
                key = (policy, "group", ancestor)
                if document is not None and key not in seen:
                    seen.add(key)
                    out.append(Attachment(policy, document, "group", ancestor, chain[: depth + 1]))
    return tuple(out)
