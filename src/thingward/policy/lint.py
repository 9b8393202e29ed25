"""Findings about a policy world that is legal but risky or broken, each with a remediation.

| code                           | severity      | what                                                       |
|--------------------------------|---------------|------------------------------------------------------------|
| policy-attached-to-thing       | medium        | a policy attached to one thing instead of a group          |
| overly-permissive-wildcard     | critical/high | an allow whose first level is '#' or '+' (other things' topics) |
| allow-outside-thing-namespace  | medium/low    | a fixed topic (no variable) allowed to a whole group       |
| missing-thing-attribute        | medium        | `${thing.attr.X}` used where a member thing has no usable X |
| useless-deny                   | low           | a deny that can never match anything an allow grants      |
| unattached-policy              | low           | a policy attached nowhere                                   |
| dangling-reference             | medium        | an attachment, membership or parent naming nothing         |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from thingward.policy._compile import thing_value
from thingward.policy.document import PolicyDocument
from thingward.policy.topics import THING_ATTR_PREFIX, intersects, is_substitutable
from thingward.policy.world import PolicyWorld, group_chain, thing_attachments

__all__ = ["SEVERITIES", "LintFinding", "Severity", "lint_world"]

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
_DATA_ACTIONS = ("publish", "subscribe", "receive")
_NAMES_SHOWN = 5


@dataclass(frozen=True)
class LintFinding:
    code: str
    severity: Severity
    message: str
    policy: str | None
    target: str
    remediation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "policy": self.policy,
            "target": self.target,
            "remediation": self.remediation,
        }


def _names(names: Iterable[str]) -> str:
    listed = sorted(names)
    shown = ", ".join(listed[:_NAMES_SHOWN])
    more = len(listed) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _attachment_points(world: PolicyWorld) -> dict[str, list[str]]:
    """policy -> ["group:g", "thing:t", ...] for every attachment of it."""
    points: dict[str, list[str]] = {}
    for group, policies in world.group_policies.items():
        for policy in policies:
            points.setdefault(policy, []).append(f"group:{group}")
    for thing, policies in world.thing_policies.items():
        for policy in policies:
            points.setdefault(policy, []).append(f"thing:{thing}")
    return points


def _dangling(world: PolicyWorld) -> list[LintFinding]:
    out: list[LintFinding] = []
    for kind, attachments in (("group", world.group_policies), ("thing", world.thing_policies)):
        for owner, policies in attachments.items():
            for policy in policies:
                if policy not in world.policies:
                    out.append(
                        LintFinding(
                            "dangling-reference",
                            "medium",
                            f"{kind} '{owner}' has policy '{policy}' attached, but no such policy exists; "
                            "it grants and denies nothing",
                            policy,
                            f"{kind}:{owner}",
                            "detach the missing policy or create it",
                        )
                    )
    for facts in world.groups.values():
        if facts.parent is not None and facts.parent not in world.groups:
            out.append(
                LintFinding(
                    "dangling-reference",
                    "medium",
                    f"group '{facts.name}' has parent '{facts.parent}', which does not exist; "
                    "no policy is inherited through it",
                    None,
                    f"group:{facts.name}",
                    "set an existing parent or none",
                )
            )
    missing: dict[str, list[str]] = {}
    for thing in world.things.values():
        for group in thing.groups:
            if group not in world.groups:
                missing.setdefault(group, []).append(thing.name)
    for group, things in sorted(missing.items()):
        out.append(
            LintFinding(
                "dangling-reference",
                "medium",
                f"things {_names(things)} are members of group '{group}', which does not exist; "
                "the membership brings no policy",
                None,
                f"group:{group}",
                "create the group or remove the memberships",
            )
        )
    return out


def _document_findings(name: str, document: PolicyDocument, points: list[str]) -> list[LintFinding]:
    out: list[LintFinding] = []
    group_points = [p for p in points if p.startswith("group:")]
    for s_index, statement in enumerate(document.statements):
        if statement.effect != "allow":
            continue
        data_actions = [a for a in statement.actions if a in _DATA_ACTIONS]
        if not data_actions:
            continue
        for r_index, (resource, pattern) in enumerate(zip(statement.resources, statement.patterns, strict=True)):
            where = f"statements[{s_index}].resources[{r_index}]"
            if pattern.first_level_is_wildcard:
                out.append(
                    LintFinding(
                        "overly-permissive-wildcard",
                        "critical" if resource == "#" else "high",
                        f"policy '{name}' allows {', '.join(data_actions)} on {resource!r}: "
                        "a first-level wildcard reaches every other thing's topics",
                        name,
                        where,
                        "scope the resource to the thing's own topics, e.g. 'things/${thing.name}/#'",
                    )
                )
            elif not pattern.variables and group_points:
                severity: Literal["medium", "low"] = "medium" if "publish" in data_actions else "low"
                out.append(
                    LintFinding(
                        "allow-outside-thing-namespace",
                        severity,
                        f"policy '{name}' allows {', '.join(data_actions)} on the fixed topic {resource!r} "
                        f"to every member of {_names(p.partition(':')[2] for p in group_points)}: "
                        "all of them share it",
                        name,
                        where,
                        "use a topic under 'things/${thing.name}/', or a variable such as ${group.name}, "
                        "unless the topic is meant to be shared",
                    )
                )
    return out


def _attribute_findings(world: PolicyWorld) -> list[LintFinding]:
    # (policy, attached_to, attribute) -> things lacking it
    lacking: dict[tuple[str, str, str], list[str]] = {}
    chains: dict[str, tuple[str, ...]] = {}
    per_group_set: dict[tuple[tuple[str, ...], bool], list[tuple[str, str, str]]] = {}
    for facts in world.things.values():
        direct = bool(world.thing_policies.get(facts.name))
        key = (tuple(sorted(set(facts.groups))), direct)
        needed = None if direct else per_group_set.get(key)
        if needed is None:
            for group in key[0]:
                if group not in chains:
                    chains[group] = group_chain(world, group)
            needed = sorted(
                {
                    (a.policy, a.attached_to, var)
                    for a in thing_attachments(world, facts.name, key[0], chains)
                    for statement in a.document.statements
                    for pattern in statement.patterns
                    for var in pattern.variables
                    if var.startswith(THING_ATTR_PREFIX)
                }
            )
            if not direct:
                per_group_set[key] = needed
        for policy, attached_to, var in needed:
            value = thing_value(facts, var)
            if value is None or not is_substitutable(value):
                lacking.setdefault((policy, attached_to, var), []).append(facts.name)
    out: list[LintFinding] = []
    for (policy, attached_to, var), things in sorted(lacking.items()):
        attribute = var[len(THING_ATTR_PREFIX) :]
        out.append(
            LintFinding(
                "missing-thing-attribute",
                "medium",
                f"policy '{policy}' uses ${{{var}}}, but {len(things)} member thing(s) have no usable "
                f"attribute '{attribute}' ({_names(things)}): its allows grant them nothing and its "
                "denies widen to '+'",
                policy,
                attached_to,
                f"set attribute '{attribute}' on those things (one level: not empty, no '/', '+', '#', "
                "no leading '$'), or move them to a group without this policy",
            )
        )
    return out


def _useless_denies(world: PolicyWorld, points: dict[str, list[str]]) -> list[LintFinding]:
    # Which policies can reach the same thing as each policy (through shared members); a policy
    # with no members is compared with every attached policy.
    co_policies: dict[str, set[str]] = {}
    seen_sets: set[tuple[tuple[str, ...], str | None]] = set()
    chains: dict[str, tuple[str, ...]] = {}
    for facts in world.things.values():
        direct = facts.name if world.thing_policies.get(facts.name) else None
        key = (tuple(sorted(set(facts.groups))), direct)
        if key in seen_sets:
            continue
        seen_sets.add(key)
        for group in key[0]:
            if group not in chains:
                chains[group] = group_chain(world, group)
        together = {a.policy for a in thing_attachments(world, facts.name, key[0], chains)}
        for policy in together:
            co_policies.setdefault(policy, set()).update(together)
    everything = {p for p in points if p in world.policies}

    def allows(policy_names: Iterable[str], action: str) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for name in policy_names:
            for statement in world.policies[name].statements:
                if statement.effect == "allow" and action in statement.actions:
                    out.extend(pattern.broadened() for pattern in statement.patterns)
        return out

    findings: list[LintFinding] = []
    for name, document in sorted(world.policies.items()):
        if name not in points:
            continue
        peers = co_policies.get(name) or everything
        for s_index, statement in enumerate(document.statements):
            if statement.effect != "deny":
                continue
            for r_index, (resource, pattern) in enumerate(zip(statement.resources, statement.patterns, strict=True)):
                deny = pattern.broadened()
                useless = [
                    action
                    for action in statement.actions
                    if not any(intersects(deny, allow) for allow in allows(peers, action))
                ]
                if len(useless) == len(statement.actions):
                    findings.append(
                        LintFinding(
                            "useless-deny",
                            "low",
                            f"policy '{name}' denies {', '.join(useless)} on {resource!r}, but no allow "
                            "that reaches the same things grants anything it matches",
                            name,
                            f"statements[{s_index}].resources[{r_index}]",
                            "remove the deny, or fix its resource if it was meant to block an allow",
                        )
                    )
    return findings


def lint_world(world: PolicyWorld) -> list[LintFinding]:
    """Every finding for `world`, most severe first."""
    points = _attachment_points(world)
    findings: list[LintFinding] = []
    findings.extend(_dangling(world))
    for thing, policies in sorted(world.thing_policies.items()):
        for policy in policies:
            findings.append(
                LintFinding(
                    "policy-attached-to-thing",
                    "medium",
                    f"policy '{policy}' is attached directly to thing '{thing}'",
                    policy,
                    f"thing:{thing}",
                    "attach policies to groups and put the thing in a group: per-thing grants drift "
                    "and are hard to audit",
                )
            )
    for name, document in sorted(world.policies.items()):
        attached = points.get(name, [])
        if not attached:
            findings.append(
                LintFinding(
                    "unattached-policy",
                    "low",
                    f"policy '{name}' is attached to no group or thing",
                    name,
                    f"policy:{name}",
                    "attach it to a group or delete it",
                )
            )
        findings.extend(_document_findings(name, document, attached))
    findings.extend(_attribute_findings(world))
    findings.extend(_useless_denies(world, points))
    order = {severity: rank for rank, severity in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (order[f.severity], f.code, f.policy or "", f.target))
    return findings
