"""Small world builders shared by the policy tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from thingward.policy import (
    GroupFacts,
    PolicyDocument,
    PolicyEngine,
    PolicyWorld,
    ThingFacts,
    parse_policy_document,
)


def policy(*statements: Mapping[str, Any]) -> PolicyDocument:
    return parse_policy_document({"statements": list(statements)})


def allow(actions: str | Iterable[str], *resources: str, sid: str | None = None) -> dict[str, Any]:
    return _statement("allow", actions, resources, sid)


def deny(actions: str | Iterable[str], *resources: str, sid: str | None = None) -> dict[str, Any]:
    return _statement("deny", actions, resources, sid)


def _statement(effect: str, actions: str | Iterable[str], resources: Iterable[str], sid: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "effect": effect,
        "actions": [actions] if isinstance(actions, str) else list(actions),
        "resources": list(resources),
    }
    if sid is not None:
        out["sid"] = sid
    return out


def thing(name: str, *groups: str, **attributes: str) -> ThingFacts:
    return ThingFacts(name, attributes, tuple(groups))


def world(
    things: Iterable[ThingFacts] = (),
    groups: Mapping[str, str | None] | None = None,
    policies: Mapping[str, PolicyDocument] | None = None,
    group_policies: Mapping[str, Iterable[str]] | None = None,
    thing_policies: Mapping[str, Iterable[str]] | None = None,
) -> PolicyWorld:
    return PolicyWorld.from_facts(
        things=things,
        groups=[GroupFacts(name, parent) for name, parent in (groups or {}).items()],
        policies=policies,
        group_policies=group_policies,
        thing_policies=thing_policies,
    )


def engine(*args: Any, **kwargs: Any) -> PolicyEngine:
    return PolicyEngine(world(*args, **kwargs))
