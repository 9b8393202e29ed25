"""Why a decision is what it is: every statement that matched, where it is attached and how it arrives.

Explanations are computed by the readable level-by-level functions of `topics`, not by the compiled
matchers, so they double as a cross-check of the hot path (the tests compare the two).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from thingward.broker.base import ACTIONS
from thingward.policy._compile import thing_value
from thingward.policy.document import Effect, Statement
from thingward.policy.topics import (
    GROUP_NAME,
    client_id_problem,
    covers,
    intersects,
    matches,
    topic_filter_problem,
    topic_name_problem,
)
from thingward.policy.world import Attachment, ThingFacts

__all__ = ["Decision", "Explanation", "MatchedStatement", "describe_statement", "target_problem"]

Decision = Literal["allow", "deny"]


def target_problem(action: str, topic: str) -> str | None:
    """Why `topic` cannot be the object of `action`, or None if it can."""
    if action == "subscribe":
        problem = topic_filter_problem(topic)
        return None if problem is None else f"the topic filter {topic!r} is not valid: {problem}"
    if action == "connect":
        problem = client_id_problem(topic)
        return None if problem is None else f"the client id {topic!r} cannot be used: {problem}"
    problem = topic_name_problem(topic)
    return None if problem is None else f"the topic {topic!r} is not a valid topic name: {problem}"


@dataclass(frozen=True)
class MatchedStatement(Mapping[str, Any]):
    """One statement resource that matched. Readable as attributes or as a mapping (`m["policy"]`)."""

    policy: str
    sid: str | None
    index: int
    effect: Effect
    resource: str
    resolved: str
    attached_to: str
    via: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "sid": self.sid if self.sid is not None else self.index,
            "index": self.index,
            "effect": self.effect,
            "resource": self.resource,
            "resolved": self.resolved,
            "attached_to": self.attached_to,
            "via": list(self.via),
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True)
class Explanation:
    """A decision with the reason in one sentence and every statement that matched."""

    thing: str
    action: str
    topic: str
    decision: Decision
    reason: str
    statements: tuple[MatchedStatement, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def to_dict(self) -> dict[str, Any]:
        return {
            "thing": self.thing,
            "action": self.action,
            "topic": self.topic,
            "decision": self.decision,
            "reason": self.reason,
            "statements": [statement.to_dict() for statement in self.statements],
        }


def describe_statement(policy: str, sid: str | None, index: int, attached_to: str) -> str:
    """`statement 'sid' of policy 'p' attached to group 'g'` (or `statement #2 ...` without a sid)."""
    name = f"'{sid}'" if sid is not None else f"#{index}"
    kind, _, target = attached_to.partition(":")
    return f"statement {name} of policy '{policy}' attached to {kind} '{target}'"


def attachment_lookup(facts: ThingFacts, attachment: Attachment) -> Callable[[str], str | None]:
    group = attachment.group_name

    def get(key: str) -> str | None:
        return group if key == GROUP_NAME else thing_value(facts, key)

    return get


def statement_matches(
    statement: Statement,
    lookup: Callable[[str], str | None],
    action: str,
    target: list[str],
) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(resource, resolved levels) for each resource of `statement` that matches `target` for `action`."""
    deny = statement.effect == "deny"
    for resource, pattern in zip(statement.resources, statement.patterns, strict=True):
        resolved = pattern.resolve(lookup, broaden=deny)
        if resolved is None:
            continue
        if action == "subscribe":
            hit = intersects(resolved, target) if deny else covers(resolved, target)
        else:
            hit = matches(resolved, target)
        if hit:
            yield resource, resolved


def explain_decision(
    facts: ThingFacts | None, attachments: tuple[Attachment, ...], thing: str, action: str, topic: str
) -> Explanation:
    """The decision for `thing` (None facts: unknown or disabled) with its reasons."""

    def deny(reason: str, matched: tuple[MatchedStatement, ...] = ()) -> Explanation:
        return Explanation(thing, action, topic, "deny", reason, matched)

    if facts is None:
        return deny("unknown or disabled thing")
    if action not in ACTIONS:
        return deny(f"unknown action {action!r}")
    problem = target_problem(action, topic)
    if problem is not None:
        return deny(problem)
    target = topic.split("/")
    matched: list[MatchedStatement] = []
    for attachment in attachments:
        lookup = attachment_lookup(facts, attachment)
        for index, statement in enumerate(attachment.document.statements):
            if action not in statement.actions:
                continue
            for resource, resolved in statement_matches(statement, lookup, action, target):
                matched.append(
                    MatchedStatement(
                        policy=attachment.policy,
                        sid=statement.sid,
                        index=index,
                        effect=statement.effect,
                        resource=resource,
                        resolved="/".join(resolved),
                        attached_to=attachment.attached_to,
                        via=attachment.via,
                    )
                )
    found = tuple(matched)
    for effect in ("deny", "allow"):
        for m in found:
            if m.effect == effect:
                described = describe_statement(m.policy, m.sid, m.index, m.attached_to)
                if effect == "deny":
                    return deny(f"denied by {described}", found)
                return Explanation(thing, action, topic, "allow", f"allowed by {described}", found)
    return deny("no statement allows it (default deny)", found)
