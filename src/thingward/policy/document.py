"""Policy documents: untrusted JSON in, a frozen validated `PolicyDocument` out, and back to canonical JSON.

    {"description": "optional",
     "statements": [{"sid": "optional-id", "effect": "allow" | "deny",
                     "actions": ["connect" | "publish" | "subscribe" | "receive", ...],
                     "resources": ["things/${thing.name}/#", ...]}]}

Every error is a `PolicyDocumentError` whose message starts with where the problem is
(`statements[1].actions[0]: ...`) and says what to change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from thingward.broker.base import ACTIONS, Action
from thingward.errors import PolicyDocumentError
from thingward.policy.topics import TopicPattern, parse_topic_pattern

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_JSON",
    "EFFECTS",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_RESOURCES_PER_STATEMENT",
    "MAX_STATEMENTS",
    "Effect",
    "PolicyDocument",
    "Statement",
    "parse_policy_document",
]

Effect = Literal["allow", "deny"]
EFFECTS: tuple[Effect, ...] = ("allow", "deny")

MAX_STATEMENTS = 100
MAX_RESOURCES_PER_STATEMENT = 100
MAX_DESCRIPTION_LENGTH = 1024
MAX_DOCUMENT_BYTES = 256 * 1024

_SID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DOCUMENT_KEYS = ("description", "statements")
_STATEMENT_KEYS = ("actions", "effect", "resources", "sid")


class _LocatedError(PolicyDocumentError):
    """A PolicyDocumentError that remembers where, so an enclosing level can prefix its own location."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}" if where else detail)
        self.where = where
        self.detail = detail


def _fail(where: str, message: str) -> PolicyDocumentError:
    return _LocatedError(where, message)


def _within(where: str, error: PolicyDocumentError) -> PolicyDocumentError:
    if isinstance(error, _LocatedError):
        return _LocatedError(f"{where}.{error.where}" if error.where else where, error.detail)
    return _LocatedError(where, str(error))


def _type_name(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _check_sequence(value: object, where: str, what: str, limit: int) -> tuple[object, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _fail(where, f"must be a list of {what}, not {_type_name(value)}")
    if not value:
        raise _fail(where, f"must not be empty: give at least one of {what}")
    if len(value) > limit:
        raise _fail(where, f"has {len(value)} entries; the limit is {limit}")
    return tuple(value)


@dataclass(frozen=True)
class Statement:
    """One allow or deny rule. Validated on construction; `patterns` are the parsed `resources`."""

    effect: Effect
    actions: tuple[Action, ...]
    resources: tuple[str, ...]
    sid: str | None = None
    patterns: tuple[TopicPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sid is not None and (not isinstance(self.sid, str) or _SID.fullmatch(self.sid) is None):
            raise _fail(
                "sid", f"{self.sid!r} is not a valid statement id: use 1 to 64 letters, digits, '.', '-' or '_'"
            )
        if not isinstance(self.effect, str) or self.effect not in EFFECTS:
            raise _fail("effect", f"{self.effect!r} is not an effect; use 'allow' or 'deny'")
        actions = _check_sequence(self.actions, "actions", "actions", len(ACTIONS))
        for index, action in enumerate(actions):
            if not isinstance(action, str) or action not in ACTIONS:
                raise _fail(
                    f"actions[{index}]",
                    f"unknown action {action!r}; use one of {', '.join(ACTIONS)}",
                )
            if action in actions[:index]:
                raise _fail(f"actions[{index}]", f"action {action!r} is listed twice")
        resources = _check_sequence(self.resources, "resources", "topic patterns", MAX_RESOURCES_PER_STATEMENT)
        patterns: list[TopicPattern] = []
        for index, resource in enumerate(resources):
            try:
                patterns.append(parse_topic_pattern(cast(str, resource)))
            except PolicyDocumentError as e:
                raise _fail(f"resources[{index}]", f"{resource!r}: {e}") from e
            if resource in resources[:index]:
                raise _fail(f"resources[{index}]", f"resource {resource!r} is listed twice")
        object.__setattr__(self, "actions", cast(tuple[Action, ...], actions))
        object.__setattr__(self, "resources", cast(tuple[str, ...], resources))
        object.__setattr__(self, "patterns", tuple(patterns))

    @property
    def label(self) -> str:
        """How explanations name the statement when it has no sid."""
        return self.sid if self.sid is not None else "(no sid)"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.sid is not None:
            out["sid"] = self.sid
        out["effect"] = self.effect
        out["actions"] = list(self.actions)
        out["resources"] = list(self.resources)
        return out


@dataclass(frozen=True)
class PolicyDocument:
    """A validated policy: at most `MAX_STATEMENTS` statements, evaluated as default deny, deny wins."""

    statements: tuple[Statement, ...]
    description: str | None = None

    def __post_init__(self) -> None:
        if self.description is not None:
            if not isinstance(self.description, str):
                raise _fail("description", f"must be a string, not {_type_name(self.description)}")
            if len(self.description) > MAX_DESCRIPTION_LENGTH:
                raise _fail(
                    "description",
                    f"is {len(self.description)} characters long; the limit is {MAX_DESCRIPTION_LENGTH}",
                )
        statements = _check_sequence(self.statements, "statements", "statements", MAX_STATEMENTS)
        seen_sids: dict[str, int] = {}
        for index, statement in enumerate(statements):
            if not isinstance(statement, Statement):
                raise _fail(f"statements[{index}]", f"must be a Statement, not {_type_name(statement)}")
            if statement.sid is not None:
                if statement.sid in seen_sids:
                    raise _fail(
                        f"statements[{index}].sid",
                        f"sid {statement.sid!r} is already used by statements[{seen_sids[statement.sid]}]",
                    )
                seen_sids[statement.sid] = index
        object.__setattr__(self, "statements", cast(tuple[Statement, ...], statements))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.description is not None:
            out["description"] = self.description
        out["statements"] = [statement.to_dict() for statement in self.statements]
        return out

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, two-space indent; `parse_policy_document` gives back an equal value."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PolicyDocumentError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _load_json(text: str | bytes) -> object:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise PolicyDocumentError(f"document is {size} bytes long; the limit is {MAX_DOCUMENT_BYTES}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyDocumentError(f"document is not valid UTF-8 (byte {e.start})") from e
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise PolicyDocumentError(f"document is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise PolicyDocumentError("document is nested too deeply") from e


def _refuse_constant(name: str) -> object:
    raise PolicyDocumentError(f"document is not valid JSON: {name} is not allowed")


def _check_keys(value: Mapping[Any, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            place = f"{where}: " if where else ""
            raise PolicyDocumentError(f"{place}unknown key {key!r}; allowed keys are {', '.join(allowed)}")


def _parse_statement(raw: object, where: str) -> Statement:
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be an object, not {_type_name(raw)}")
    _check_keys(raw, where, _STATEMENT_KEYS)
    for required in ("effect", "actions", "resources"):
        if required not in raw:
            raise _fail(where, f"missing key {required!r}")
    try:
        return Statement(
            effect=raw["effect"],
            actions=raw["actions"],
            resources=raw["resources"],
            sid=raw.get("sid"),
        )
    except PolicyDocumentError as e:
        raise _within(where, e) from e


def parse_policy_document(source: str | bytes | Mapping[str, Any]) -> PolicyDocument:
    """Parse and validate a policy document given as JSON text, UTF-8 bytes or an already-decoded object."""
    raw = source if isinstance(source, Mapping) else _load_json(source)
    if not isinstance(raw, Mapping):
        raise PolicyDocumentError(f"document must be a JSON object, not {_type_name(raw)}")
    _check_keys(raw, "", _DOCUMENT_KEYS)
    if "statements" not in raw:
        raise PolicyDocumentError("document has no 'statements' list")
    raw_statements = _check_sequence(raw["statements"], "statements", "statements", MAX_STATEMENTS)
    statements = tuple(_parse_statement(item, f"statements[{index}]") for index, item in enumerate(raw_statements))
    return PolicyDocument(statements=statements, description=raw.get("description"))


_DEFAULT_POLICY_SOURCE: dict[str, Any] = {
    "description": "thingward default: a thing connects with its own name and uses only its own topics",
    "statements": [
        {
            "sid": "connect-as-self",
            "effect": "allow",
            "actions": ["connect"],
            "resources": ["${thing.name}"],
        },
        {
            "sid": "publish-own-topics",
            "effect": "allow",
            "actions": ["publish"],
            "resources": ["things/${thing.name}/#"],
        },
        {
            "sid": "receive-own-commands",
            "effect": "allow",
            "actions": ["subscribe", "receive"],
            "resources": ["things/${thing.name}/commands/#"],
        },
    ],
}

DEFAULT_POLICY: PolicyDocument = parse_policy_document(_DEFAULT_POLICY_SOURCE)
DEFAULT_POLICY_JSON: str = DEFAULT_POLICY.to_json()
