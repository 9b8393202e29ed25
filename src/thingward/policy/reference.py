"""A deliberately plain policy evaluator, to cross-check the compiled engine.

Written independently of `engine`, `_compile` and the level functions of `topics`: it reads the
resources as written, substitutes variables by scanning the text, and matches level by level with
straight loops. No regex, no cache. Slow on purpose; use `PolicyEngine` for real decisions.
"""

from __future__ import annotations

from thingward.policy.world import PolicyWorld, ThingFacts

__all__ = ["reference_authorize"]

_ACTIONS = ("connect", "publish", "subscribe", "receive")
_LIMIT = 65535


def _utf8_length(text: str) -> int | None:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _valid_name(topic: str) -> bool:
    length = _utf8_length(topic)
    if length is None or length == 0 or length > _LIMIT:
        return False
    return all(ch not in "+#\x00" for ch in topic)


def _valid_filter(text: str) -> bool:
    length = _utf8_length(text)
    if length is None or length == 0 or length > _LIMIT or "\x00" in text:
        return False
    levels = text.split("/")
    for position, level in enumerate(levels):
        if level == "#":
            if position != len(levels) - 1:
                return False
        elif level != "+" and ("+" in level or "#" in level):
            return False
    return True


def _usable(value: str | None) -> bool:
    if value is None or value == "" or value.startswith("$"):
        return False
    for ch in value:
        if ch in "/+#\x00":
            return False
    return _utf8_length(value) is not None


def _value(facts: ThingFacts, group: str | None, name: str) -> str | None:
    if name == "thing.name":
        return facts.name
    if name == "group.name":
        return group
    if name.startswith("thing.attr."):
        return facts.attributes.get(name[len("thing.attr.") :])
    return None


def _substitute(resource: str, facts: ThingFacts, group: str | None, deny: bool) -> list[str] | None:
    """Levels of `resource` with variables replaced; None if an allow cannot be resolved."""
    result: list[str] = []
    for level in resource.split("/"):
        text = ""
        ok = True
        rest = level
        while "${" in rest:
            before, _, after = rest.partition("${")
            inside, _, rest = after.partition("}")
            value = _value(facts, group, inside)
            if not _usable(value):
                ok = False
                break
            text = text + before + str(value)
        if ok:
            result.append(text + rest)
        elif deny:
            result.append("+")
        else:
            return None
    return result


def _dollar(level: str) -> bool:
    return level not in ("+", "#") and level[:1] == "$"


def _topic_matches(pattern: list[str], topic: list[str]) -> bool:
    if pattern[0] in ("+", "#") and topic[0][:1] == "$":
        return False
    i = 0
    while True:
        if i < len(pattern) and pattern[i] == "#":
            return True
        if i == len(pattern) or i == len(topic):
            return i == len(pattern) and i == len(topic)
        if pattern[i] != "+" and pattern[i] != topic[i]:
            return False
        i += 1


def _covers(pattern: list[str], topic_filter: list[str]) -> bool:
    if pattern[0] in ("+", "#") and _dollar(topic_filter[0]):
        return False
    i = 0
    while True:
        if i < len(pattern) and pattern[i] == "#":
            return True
        if i == len(pattern) or i == len(topic_filter):
            return i == len(pattern) and i == len(topic_filter)
        wanted, given = pattern[i], topic_filter[i]
        if given == "#":
            return False
        if given == "+" and wanted != "+":
            return False
        if wanted != "+" and wanted != given:
            return False
        i += 1


def _overlap(first: list[str], second: list[str]) -> bool:
    if (first[0] in ("+", "#") and _dollar(second[0])) or (second[0] in ("+", "#") and _dollar(first[0])):
        return False
    i = 0
    while True:
        if (i < len(first) and first[i] == "#") or (i < len(second) and second[i] == "#"):
            return True
        if i == len(first) or i == len(second):
            return i == len(first) and i == len(second)
        if first[i] != "+" and second[i] != "+" and first[i] != second[i]:
            return False
        i += 1


def _policies_for(world: PolicyWorld, facts: ThingFacts) -> list[tuple[str, str | None]]:
    """(policy name, attaching group or None for a thing attachment), every path."""
    found: list[tuple[str, str | None]] = [(p, None) for p in world.thing_policies.get(facts.name, ())]
    for start in facts.groups:
        visited: list[str] = []
        current: str | None = start
        while current is not None and current in world.groups and current not in visited:
            visited.append(current)
            for policy in world.group_policies.get(current, ()):
                found.append((policy, current))
            current = world.groups[current].parent
    return found


def reference_authorize(world: PolicyWorld, thing: str, action: str, topic: str) -> bool:
    """True only if `thing` may do `action` on `topic`, by the plain reading of the semantics."""
    facts = world.things.get(thing)
    if facts is None or action not in _ACTIONS:
        return False
    if action == "subscribe":
        if not _valid_filter(topic):
            return False
    elif not _valid_name(topic) or (action == "connect" and "/" in topic):
        return False
    requested = topic.split("/")
    allowed = False
    for policy, group in _policies_for(world, facts):
        document = world.policies.get(policy)
        if document is None:
            continue
        for statement in document.statements:
            if action not in statement.actions:
                continue
            deny = statement.effect == "deny"
            for resource in statement.resources:
                levels = _substitute(resource, facts, group, deny)
                if levels is None:
                    continue
                if action == "subscribe":
                    hit = _overlap(levels, requested) if deny else _covers(levels, requested)
                else:
                    hit = _topic_matches(levels, requested)
                if hit and deny:
                    return False
                if hit:
                    allowed = True
    return allowed
