"""The compiler from policies to fast matchers (internal to the engine).

Things that share the same policy documents share one compiled matcher per action: a variable does
not become literal text in the regex but a backreference to a value carried in front of the topic.
The string matched is `value\\0value\\0...topic`, where the values are the thing's (`${thing.*}`)
and the attaching groups' (`${group.name}`) resolvable values; NUL separates them because it can
occur neither in a valid topic nor in a substitutable value. So 100k things with 100k names compile
into as many regexes as there are distinct combinations of documents, not one per thing.

Per action, one regex does the whole decision with one `fullmatch`: a negative lookahead holding
the deny alternatives, then the allow alternatives. The wildcard pieces exclude '+', '#' and NUL,
so a malformed topic name or filter never matches an allow and is denied. Subscribe: the allow
regex accepts a filter string exactly when one allow resource covers it; denies are checked by
intersecting level by level (`topics.intersects`), since a regex cannot express "some topic is
matched by both".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thingward.policy.document import PolicyDocument
from thingward.policy.topics import (
    GROUP_NAME,
    MAX_TOPIC_BYTES,
    THING_ATTR_PREFIX,
    THING_NAME,
    TopicPattern,
    Wildcard,
    intersects,
    is_substitutable,
)
from thingward.policy.world import Attachment, ThingFacts

__all__ = [
    "CLIENT_ID",
    "DENY_ALL",
    "FILTER_WITH_DENIES",
    "TOPIC",
    "Entry",
    "GroupSetInfo",
    "Plan",
    "Template",
    "pattern_regex",
    "size_ok",
    "subscribe_denied",
    "thing_value",
]

# One level of a topic name, any tail of a topic name.
# Possessive quantifiers (*+): a level wildcard can only ever end at '/' or at the end, so giving
# characters back cannot help; without them a failing match backtracks through every character.
_LEVEL_T = r"[^/+#\x00]*+"
_ANY_T = r"[^+#\x00]*+"
# One level of a topic filter ('+' or text), any valid filter (tail).
_LEVEL_F = r"(?:\+|[^/+#\x00]*+)"
_ANY_F = r"(?:\#|" + _LEVEL_F + r"(?:/" + _LEVEL_F + r")*(?:/\#)?)"
_NOT_DOLLAR = r"(?!\$)"


def thing_value(facts: ThingFacts, key: str) -> str | None:
    """The raw value of a `${thing.*}` variable for `facts` (None if the thing has no such value)."""
    if key == THING_NAME:
        return facts.name
    if key.startswith(THING_ATTR_PREFIX):
        return facts.attributes.get(key[len(THING_ATTR_PREFIX) :])
    return None


def pattern_regex(
    pattern: TopicPattern, refs: Callable[[str], str | None], *, broaden: bool, filter_mode: bool
) -> str | None:
    """Regex source for `pattern`; `refs(key)` gives the regex for a variable, None if unresolvable.

    In filter mode the regex matches the topic filters the pattern covers; otherwise the topic
    names it matches. An unresolvable variable drops the pattern (None) or, with `broaden`, turns
    its level into '+'.
    """
    level_re = _LEVEL_F if filter_mode else _LEVEL_T
    any_re = _ANY_F if filter_mode else _ANY_T
    pieces: list[str] = []
    for index, level in enumerate(pattern.levels):
        first = index == 0
        if isinstance(level, Wildcard):
            if level is Wildcard.HASH:
                pieces.append(_NOT_DOLLAR + any_re if first else "(?:/" + any_re + ")?")
            else:
                pieces.append(("" if first else "/") + (_NOT_DOLLAR if first else "") + level_re)
            continue
        if not first:
            pieces.append("/")
        parts: list[str] = []
        for seg in level:
            if isinstance(seg, str):
                parts.append(re.escape(seg))
                continue
            ref = refs(seg.key)
            if ref is None:
                break
            parts.append(ref)
        else:
            pieces.append("".join(parts))
            continue
        if not broaden:
            return None
        pieces.append((_NOT_DOLLAR if first else "") + level_re)
    return "".join(pieces)


@dataclass(frozen=True)
class GroupSetInfo:
    """What all things with the same groups share (a thing with policies of its own has its own)."""

    attachments: tuple[Attachment, ...]
    # Attachments in slot order (sorted by document); per slot the document id and whether its
    # `${group.name}` is used and resolvable (the template key part); those values, NUL-terminated.
    slots: tuple[Attachment, ...]
    slots_key: tuple[tuple[int, bool], ...]
    group_prefix: str
    thing_var_keys: tuple[str, ...]

    @classmethod
    def build(cls, attachments: tuple[Attachment, ...], doc_id: Callable[[str, PolicyDocument], int]) -> GroupSetInfo:
        slots = tuple(sorted(attachments, key=lambda a: (doc_id(a.policy, a.document), a.kind, a.target)))
        keys: list[tuple[int, bool]] = []
        slot_groups: list[str | None] = []
        thing_vars: set[str] = set()
        for slot in slots:
            uses_group = False
            for statement in slot.document.statements:
                for pattern in statement.patterns:
                    for key in pattern.variables:
                        if key == GROUP_NAME:
                            uses_group = True
                        else:
                            thing_vars.add(key)
            group = slot.group_name
            usable = uses_group and group is not None and is_substitutable(group)
            keys.append((doc_id(slot.policy, slot.document), usable))
            slot_groups.append(group if usable else None)
        prefix = "".join(g + "\x00" for g in slot_groups if g is not None)
        return cls(
            attachments=attachments,
            slots=slots,
            slots_key=tuple(keys),
            group_prefix=prefix,
            thing_var_keys=tuple(sorted(thing_vars)),
        )


class Entry:
    """A thing's cached matcher: its shared template and the values matched in front of the topic."""

    __slots__ = ("facts", "hot", "info", "plans", "prefix", "sub_denies", "template")

    def __init__(self, facts: ThingFacts, info: GroupSetInfo, template: Template, prefix: str) -> None:
        self.facts = facts
        self.info = info
        self.template = template
        self.plans = template.plans  # the template's dict, one attribute hop closer to the hot path
        self.prefix = prefix
        self.sub_denies: tuple[tuple[str, ...], ...] | None = None
        # Set on every cache hit, cleared by the eviction sweep (CLOCK): used since the last sweep.
        self.hot = False

    def lookup(self, slot: int) -> Callable[[str], str | None]:
        group = self.info.slots[slot].group_name

        def get(key: str) -> str | None:
            return group if key == GROUP_NAME else thing_value(self.facts, key)

        return get

    def subscribe_denies(self) -> tuple[tuple[str, ...], ...]:
        denies = self.sub_denies
        if denies is None:
            denies = tuple(
                pattern.broadened(self.lookup(slot)) for slot, pattern in self.template.subscribe_deny_patterns
            )
            self.sub_denies = denies
        return denies


def size_ok(topic: str) -> bool:
    """True if `topic` is valid UTF-8 of at most MAX_TOPIC_BYTES bytes (the slow path of the checks)."""
    if topic.isascii():
        return len(topic) <= MAX_TOPIC_BYTES
    try:
        return len(topic.encode("utf-8")) <= MAX_TOPIC_BYTES
    except UnicodeEncodeError:
        return False


def subscribe_denied(entry: Entry, topic_filter: str) -> bool:
    """True if a deny resource of the entry's documents intersects `topic_filter` (a valid filter)."""
    levels = topic_filter.split("/")
    return any(intersects(deny, levels) for deny in entry.subscribe_denies())


# How a template decides one action: a kind and the `fullmatch` of its one compiled regex, which
# accepts `prefix + topic` only if an allow matches and (topic kinds) no deny does.
DENY_ALL = 0  # nothing is allowed
TOPIC = 1  # publish, receive, or subscribe with no deny to check
CLIENT_ID = 2  # connect: also one level only
FILTER_WITH_DENIES = 3  # subscribe: the regex checks the allows; denies are intersected after
Matcher = Callable[[str], "re.Match[str] | None"]
Plan = tuple[int, Matcher]


def _never(_subject: str) -> re.Match[str] | None:
    return None


_DENY_ALL_PLAN: Plan = (DENY_ALL, _never)


class Template:
    """The compiled matchers shared by every thing with the same documents and resolvable variables."""

    def __init__(
        self,
        slot_documents: Sequence[PolicyDocument],
        slot_group_usable: Sequence[bool],
        thing_var_keys: Sequence[str],
        thing_mask: Sequence[bool],
    ) -> None:
        self._documents = tuple(slot_documents)
        header: list[str] = []
        self._thing_refs: dict[str, str] = {}
        for index, (key, usable) in enumerate(zip(thing_var_keys, thing_mask, strict=True)):
            if usable:
                header.append(f"(?P<t{index}>[^\\x00]*+)\\x00")
                self._thing_refs[key] = f"(?P=t{index})"
        self._group_refs: list[str | None] = []
        for slot, usable in enumerate(slot_group_usable):
            if usable:
                header.append(f"(?P<g{slot}>[^\\x00]*+)\\x00")
                self._group_refs.append(f"(?P=g{slot})")
            else:
                self._group_refs.append(None)
        self._header = "".join(header)
        self.subscribe_deny_patterns: tuple[tuple[int, TopicPattern], ...] = tuple(
            (slot, pattern)
            for slot, document in enumerate(self._documents)
            for statement in document.statements
            if statement.effect == "deny" and "subscribe" in statement.actions
            for pattern in statement.patterns
        )
        self.plans: dict[str, Plan] = {}

    def _refs(self, slot: int) -> Callable[[str], str | None]:
        group_ref = self._group_refs[slot]
        thing_refs = self._thing_refs

        def ref(key: str) -> str | None:
            return group_ref if key == GROUP_NAME else thing_refs.get(key)

        return ref

    def _alternatives(self, action: str, effect: str, *, filter_mode: bool) -> str | None:
        alternatives: dict[str, None] = {}
        for slot, document in enumerate(self._documents):
            refs = self._refs(slot)
            for statement in document.statements:
                if statement.effect != effect or action not in statement.actions:
                    continue
                for pattern in statement.patterns:
                    source = pattern_regex(pattern, refs, broaden=effect == "deny", filter_mode=filter_mode)
                    if source is not None:
                        alternatives[source] = None
        return "(?:" + "|".join(alternatives) + ")" if alternatives else None

    def plan(self, action: str) -> Plan:
        """How to decide `action`, compiled on first use."""
        plan = self.plans.get(action)
        if plan is not None:
            return plan
        if action == "subscribe":
            allow = self._alternatives("subscribe", "allow", filter_mode=True)
            kind = FILTER_WITH_DENIES if self.subscribe_deny_patterns else TOPIC
            deny = None
        elif action in ("publish", "receive", "connect"):
            allow = self._alternatives(action, "allow", filter_mode=False)
            deny = self._alternatives(action, "deny", filter_mode=False)
            kind = CLIENT_ID if action == "connect" else TOPIC
        else:
            return _DENY_ALL_PLAN
        if allow is None:
            plan = _DENY_ALL_PLAN
        else:
            # One regex for both: the lookahead refuses what a deny matches before trying the allows.
            veto = "" if deny is None else r"(?!" + deny + r"\Z)"
            plan = (kind, re.compile(self._header + veto + allow).fullmatch)
        self.plans[action] = plan
        return plan
