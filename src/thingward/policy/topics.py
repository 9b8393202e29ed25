"""MQTT topic names, topic filters and policy resource patterns: validation, substitution, matching.

A resource pattern is parsed once into levels; substituting a thing's values gives a *resolved*
pattern, a tuple of level strings where "+" and "#" are the wildcards (a literal level can never be
"+" or "#": parsing refuses wildcard characters inside a level, and substituted values may not
contain them). The level-walk functions here (`matches`, `covers`, `intersects`) are the readable
definition of the semantics; the engine's compiled matchers must agree with them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thingward.errors import PolicyDocumentError

__all__ = [
    "GROUP_NAME",
    "MAX_RESOURCE_LENGTH",
    "MAX_TOPIC_BYTES",
    "THING_ATTR_PREFIX",
    "THING_NAME",
    "Level",
    "TopicPattern",
    "Variable",
    "Wildcard",
    "client_id_problem",
    "covers",
    "intersects",
    "is_substitutable",
    "matches",
    "parse_topic_pattern",
    "topic_filter_problem",
    "topic_name_problem",
]

MAX_TOPIC_BYTES = 65535
MAX_RESOURCE_LENGTH = 1024

THING_NAME = "thing.name"
GROUP_NAME = "group.name"
THING_ATTR_PREFIX = "thing.attr."
_ATTR_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VARIABLE_HELP = "use ${thing.name}, ${thing.attr.NAME} or ${group.name}"


class Wildcard(enum.Enum):
    """A whole-level MQTT wildcard in a pattern."""

    PLUS = "+"
    HASH = "#"


@dataclass(frozen=True)
class Variable:
    """A `${...}` placeholder; `key` is `thing.name`, `thing.attr.NAME` or `group.name`."""

    key: str

    @property
    def text(self) -> str:
        return "${" + self.key + "}"

    @property
    def is_thing_variable(self) -> bool:
        return self.key != GROUP_NAME


Segment = str | Variable
# A level is a wildcard, or literal text and variables (an empty tuple is the empty level).
Level = Wildcard | tuple[Segment, ...]


@dataclass(frozen=True)
class TopicPattern:
    """A validated resource pattern: MQTT wildcards plus `${...}` variables."""

    text: str
    levels: tuple[Level, ...]

    @property
    def variables(self) -> frozenset[str]:
        """The keys of every variable in the pattern."""
        return frozenset(
            seg.key
            for level in self.levels
            if not isinstance(level, Wildcard)
            for seg in level
            if isinstance(seg, Variable)
        )

    @property
    def first_level_is_wildcard(self) -> bool:
        return isinstance(self.levels[0], Wildcard)

    def resolve(self, lookup: Callable[[str], str | None], *, broaden: bool) -> tuple[str, ...] | None:
        """Substitute variables; `lookup(key)` gives a value or None.

        A value that is missing or not `is_substitutable` is unresolvable. With `broaden=False`
        (allow statements) an unresolvable variable makes the whole pattern unusable (None); with
        `broaden=True` (deny statements) each level holding one becomes "+".
        """
        out: list[str] = []
        for level in self.levels:
            if isinstance(level, Wildcard):
                out.append(level.value)
                continue
            text = _resolve_level(level, lookup)
            if text is None:
                if not broaden:
                    return None
                text = "+"
            out.append(text)
        return tuple(out)

    def broadened(self, lookup: Callable[[str], str | None] | None = None) -> tuple[str, ...]:
        """The pattern with every level holding a variable that `lookup` cannot resolve made "+".

        Every resolution of the pattern matches a subset of what this matches.
        """
        get = lookup or _no_values
        out: list[str] = []
        for level in self.levels:
            if isinstance(level, Wildcard):
                out.append(level.value)
            else:
                text = _resolve_level(level, get)
                out.append("+" if text is None else text)
        return tuple(out)


def _resolve_level(level: tuple[Segment, ...], lookup: Callable[[str], str | None]) -> str | None:
    parts: list[str] = []
    for seg in level:
        if isinstance(seg, str):
            parts.append(seg)
            continue
        value = lookup(seg.key)
        if value is None or not is_substitutable(value):
            return None
        parts.append(value)
    return "".join(parts)


def _no_values(_key: str) -> str | None:
    return None


def is_substitutable(value: str) -> bool:
    """True if `value` may replace a variable: one non-empty literal level that cannot be a wildcard."""
    if not value or value[0] == "$":
        return False
    if "/" in value or "+" in value or "#" in value or "\x00" in value:
        return False
    return value.isascii() or _encodable(value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_variable(body: str, level_number: int) -> Variable:
    if "+" in body or "#" in body:
        raise PolicyDocumentError(f"level {level_number}: a variable cannot contain a wildcard ('${{{body}}}')")
    if body in (THING_NAME, GROUP_NAME):
        return Variable(body)
    if body.startswith(THING_ATTR_PREFIX):
        attr = body[len(THING_ATTR_PREFIX) :]
        if _ATTR_NAME.fullmatch(attr) is None:
            raise PolicyDocumentError(
                f"level {level_number}: bad attribute name in '${{{body}}}': use 1 to 64 letters, "
                "digits, '.', '-' or '_'"
            )
        return Variable(body)
    raise PolicyDocumentError(f"level {level_number}: unknown variable '${{{body}}}'; {_VARIABLE_HELP}")


def _parse_level(raw: str, level_number: int, is_last: bool) -> Level:
    if raw == "+":
        return Wildcard.PLUS
    if raw == "#":
        if not is_last:
            raise PolicyDocumentError(f"level {level_number}: '#' is allowed only as the last level")
        return Wildcard.HASH
    segments: list[Segment] = []
    pos = 0
    while True:
        start = raw.find("${", pos)
        if start < 0:
            break
        end = raw.find("}", start + 2)
        if end < 0:
            raise PolicyDocumentError(f"level {level_number}: unterminated variable in {raw!r}; {_VARIABLE_HELP}")
        if start > pos:
            segments.append(raw[pos:start])
        segments.append(_parse_variable(raw[start + 2 : end], level_number))
        pos = end + 1
    if pos < len(raw):
        segments.append(raw[pos:])
    for wildcard in ("+", "#"):
        for seg in segments:
            if isinstance(seg, str) and wildcard in seg:
                if any(isinstance(s, Variable) for s in segments):
                    raise PolicyDocumentError(
                        f"level {level_number}: wildcard '{wildcard}' cannot share a level with a "
                        f"variable ({raw!r}); a wildcard must be a whole level"
                    )
                raise PolicyDocumentError(
                    f"level {level_number}: wildcard '{wildcard}' must be a whole level, not part of {raw!r}"
                )
    return tuple(segments)


def parse_topic_pattern(text: str) -> TopicPattern:
    """Validate a resource pattern. Raises PolicyDocumentError saying what is wrong (without location)."""
    if not isinstance(text, str):
        raise PolicyDocumentError(f"a resource must be a string, not {type(text).__name__}")
    if not text:
        raise PolicyDocumentError("a resource must not be empty")
    if len(text) > MAX_RESOURCE_LENGTH:
        raise PolicyDocumentError(f"resource is {len(text)} characters long; the limit is {MAX_RESOURCE_LENGTH}")
    if "\x00" in text:
        raise PolicyDocumentError("a resource must not contain the NUL character")
    if not _encodable(text):
        raise PolicyDocumentError("a resource must be valid Unicode (it holds a lone surrogate)")
    raw_levels = text.split("/")
    levels = tuple(
        _parse_level(raw, number, number == len(raw_levels)) for number, raw in enumerate(raw_levels, start=1)
    )
    return TopicPattern(text=text, levels=levels)


def _size_problem(text: str) -> str | None:
    if not text:
        return "it is empty"
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return "it is not valid UTF-8"
    if size > MAX_TOPIC_BYTES:
        return f"it is {size} bytes long; MQTT allows {MAX_TOPIC_BYTES}"
    return None


def topic_name_problem(topic: str) -> str | None:
    """Why `topic` is not a valid MQTT topic name (for publish/receive), or None if it is."""
    problem = _size_problem(topic)
    if problem is not None:
        return problem
    if "\x00" in topic:
        return "it contains the NUL character"
    if "+" in topic or "#" in topic:
        return "a topic name must not contain the wildcards '+' or '#'"
    return None


def client_id_problem(client_id: str) -> str | None:
    """Why `client_id` cannot be matched as a one-level topic (for connect), or None."""
    problem = topic_name_problem(client_id)
    if problem is not None:
        return problem
    if "/" in client_id:
        return "a client id is matched as one topic level and must not contain '/'"
    return None


def topic_filter_problem(topic_filter: str) -> str | None:
    """Why `topic_filter` is not a valid MQTT topic filter (for subscribe), or None if it is."""
    problem = _size_problem(topic_filter)
    if problem is not None:
        return problem
    if "\x00" in topic_filter:
        return "it contains the NUL character"
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if level == "#" and index != len(levels) - 1:
            return "'#' is allowed only as the last level"
        if level not in ("+", "#") and ("+" in level or "#" in level):
            return f"wildcard in {level!r}: a wildcard must be a whole level"
    return None


def _wild(level: str) -> bool:
    return level in ("+", "#")


def matches(pattern: Sequence[str], topic: Sequence[str]) -> bool:
    """MQTT matching of a resolved pattern against the levels of a topic name."""
    if topic and pattern and topic[0].startswith("$") and _wild(pattern[0]):
        return False  # MQTT 4.7.2: '+' and '#' as first level never match '$' topics
    for index, level in enumerate(pattern):
        if level == "#":
            return True  # also matches the parent level, as in MQTT
        if index >= len(topic):
            return False
        if level != "+" and level != topic[index]:
            return False
    return len(pattern) == len(topic)


def covers(pattern: Sequence[str], topic_filter: Sequence[str]) -> bool:
    """True if every topic that `topic_filter` matches is matched by `pattern`."""
    if pattern and topic_filter and _wild(pattern[0]):
        first = topic_filter[0]
        if not _wild(first) and first.startswith("$"):
            return False
    for index, level in enumerate(pattern):
        if level == "#":
            return True
        if index >= len(topic_filter):
            return False
        other = topic_filter[index]
        if other == "#":
            return False
        if level != "+" and level != other:
            return False
    return len(pattern) == len(topic_filter)


def intersects(left: Sequence[str], right: Sequence[str]) -> bool:
    """True if some topic name is matched by both patterns."""
    if left and right:
        first_left, first_right = left[0], right[0]
        if _wild(first_left) and not _wild(first_right) and first_right.startswith("$"):
            return False
        if _wild(first_right) and not _wild(first_left) and first_left.startswith("$"):
            return False
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else None
        b = right[index] if index < len(right) else None
        if a == "#" or b == "#":
            return True
        if a is None or b is None:
            return False
        if a != "+" and b != "+" and a != b:
            return False
    return True
