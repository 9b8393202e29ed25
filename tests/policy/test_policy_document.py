"""Policy documents: every malformed input is refused with a message that says what and where."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from thingward.errors import InvalidInputError, PolicyDocumentError
from thingward.policy import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_JSON,
    MAX_STATEMENTS,
    PolicyDocument,
    Statement,
    parse_policy_document,
)
from thingward.policy.document import MAX_DOCUMENT_BYTES


def doc(*statements: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"statements": list(statements), **top}


def stmt(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/#"]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


BAD_DOCUMENTS: list[tuple[str, Any, str]] = [
    ("not-json", "{statements: []", "document is not valid JSON"),
    ("not-utf8", b'{"statements": "\xff"}', "not valid UTF-8"),
    ("nan-constant", '{"statements": NaN}', "NaN is not allowed"),
    ("top-level-list", "[]", "document must be a JSON object, not a list"),
    ("no-statements", {}, "no 'statements' list"),
    ("unknown-top-key", {"statements": [stmt()], "Version": "2012"}, "unknown key 'Version'"),
    ("duplicate-key", '{"statements": [], "statements": []}', "key 'statements' appears twice"),
    ("statements-not-list", {"statements": "x"}, "statements: must be a list of statements, not a string"),
    ("empty-statements", doc(), "statements: must not be empty"),
    ("statement-not-object", doc("allow"), "statements[0]: must be an object, not a string"),
    ("unknown-statement-key", doc(stmt(Condition={})), "statements[0]: unknown key 'Condition'"),
    ("missing-effect", doc(stmt(effect=...)), "statements[0]: missing key 'effect'"),
    ("bad-effect", doc(stmt(effect="Allow")), "statements[0].effect: 'Allow' is not an effect; use 'allow' or 'deny'"),
    (
        "unknown-action",
        doc(stmt(), stmt(actions=["pub"])),
        "statements[1].actions[0]: unknown action 'pub'; use one of connect, publish, subscribe, receive",
    ),
    (
        "actions-not-list",
        doc(stmt(actions="publish")),
        "statements[0].actions: must be a list of actions, not a string",
    ),
    ("empty-actions", doc(stmt(actions=[])), "statements[0].actions: must not be empty"),
    (
        "duplicate-action",
        doc(stmt(actions=["publish", "publish"])),
        "statements[0].actions[1]: action 'publish' is listed twice",
    ),
    ("empty-resources", doc(stmt(resources=[])), "statements[0].resources: must not be empty"),
    (
        "resource-not-string",
        doc(stmt(resources=[7])),
        "statements[0].resources[0]: 7: a resource must be a string, not int",
    ),
    ("empty-resource", doc(stmt(resources=[""])), "statements[0].resources[0]: '': a resource must not be empty"),
    (
        "hash-not-last",
        doc(stmt(resources=["a/#/b"])),
        "statements[0].resources[0]: 'a/#/b': level 2: '#' is allowed only as the last level",
    ),
    ("plus-inside-level", doc(stmt(resources=["a+"])), "'a+': level 1: wildcard '+' must be a whole level"),
    ("hash-inside-level", doc(stmt(resources=["a/b#"])), "level 2: wildcard '#' must be a whole level"),
    ("unknown-variable", doc(stmt(resources=["things/${thing.id}"])), "level 2: unknown variable '${thing.id}'"),
    ("unterminated-variable", doc(stmt(resources=["things/${thing.name"])), "level 2: unterminated variable"),
    ("variable-with-plus", doc(stmt(resources=["things/${thing.attr.+}"])), "a variable cannot contain a wildcard"),
    ("variable-beside-plus", doc(stmt(resources=["things/+${thing.name}"])), "cannot share a level with a variable"),
    ("bad-attribute-name", doc(stmt(resources=["${thing.attr.a b}"])), "bad attribute name"),
    ("nul-in-resource", doc(stmt(resources=["a\x00b"])), "must not contain the NUL character"),
    ("lone-surrogate", doc(stmt(resources=["a\ud800"])), "lone surrogate"),
    ("resource-too-long", doc(stmt(resources=["a" * 1025])), "resource is 1025 characters long; the limit is 1024"),
    ("duplicate-resource", doc(stmt(resources=["a", "a"])), "statements[0].resources[1]: resource 'a' is listed twice"),
    (
        "too-many-statements",
        doc(*[stmt(sid=f"s{i}") for i in range(MAX_STATEMENTS + 1)]),
        "statements: has 101 entries; the limit is 100",
    ),
    ("bad-sid", doc(stmt(sid="no spaces")), "statements[0].sid: 'no spaces' is not a valid statement id"),
    ("duplicate-sid", doc(stmt(sid="a"), stmt(sid="a")), "statements[1].sid: sid 'a' is already used by statements[0]"),
    ("description-not-string", doc(stmt(), description=5), "description: must be a string, not a number"),
    ("effect-is-boolean", doc(stmt(effect=True)), "statements[0].effect: True is not an effect"),
]


@pytest.mark.parametrize(
    ("source", "expected"), [(s, e) for _, s, e in BAD_DOCUMENTS], ids=[i for i, _, _ in BAD_DOCUMENTS]
)
def test_malformed_document_is_refused_with_location(source: Any, expected: str) -> None:
    with pytest.raises(PolicyDocumentError) as info:
        parse_policy_document(source)
    assert expected in str(info.value)
    assert isinstance(info.value, InvalidInputError)


def test_oversized_document_text_is_refused_before_parsing() -> None:
    text = json.dumps(doc(stmt(), description="x")).replace('"x"', '"' + "x" * MAX_DOCUMENT_BYTES + '"')
    with pytest.raises(PolicyDocumentError, match="the limit is"):
        parse_policy_document(text)


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    with pytest.raises(PolicyDocumentError):
        parse_policy_document("[" * 100_000 + "]" * 100_000)


def test_round_trip_through_canonical_json_gives_an_equal_document() -> None:
    source = {
        "description": "cams",
        "statements": [
            stmt(sid="own", actions=["publish", "receive"], resources=["things/${thing.name}/#", "$aws/x"]),
            stmt(effect="deny", actions=["subscribe"], resources=["zones/${thing.attr.zone}/+/#", "g/${group.name}"]),
        ],
    }
    document = parse_policy_document(json.dumps(source))
    text = document.to_json()
    assert parse_policy_document(text) == document
    assert parse_policy_document(text.encode()) == document
    assert parse_policy_document(text).to_json() == text
    assert json.loads(text)["statements"][1] == {
        "actions": ["subscribe"],
        "effect": "deny",
        "resources": ["zones/${thing.attr.zone}/+/#", "g/${group.name}"],
    }


def test_default_policy_grants_only_own_topics() -> None:
    assert parse_policy_document(DEFAULT_POLICY_JSON) == DEFAULT_POLICY
    grants = {(a, r) for s in DEFAULT_POLICY.statements for a in s.actions for r in s.resources}
    assert grants == {
        ("connect", "${thing.name}"),
        ("publish", "things/${thing.name}/#"),
        ("subscribe", "things/${thing.name}/commands/#"),
        ("receive", "things/${thing.name}/commands/#"),
    }
    assert all(s.effect == "allow" for s in DEFAULT_POLICY.statements)


def test_statement_built_in_code_is_validated_too() -> None:
    with pytest.raises(PolicyDocumentError, match="unknown action 'admin'"):
        Statement(effect="allow", actions=("admin",), resources=("a",))  # type: ignore[arg-type]
    with pytest.raises(PolicyDocumentError, match="statements: must not be empty"):
        PolicyDocument(statements=())


def test_document_cannot_be_changed_after_validation() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_POLICY.statements[0].resources = ("#",)  # type: ignore[misc]
    assert isinstance(DEFAULT_POLICY.statements[0].resources, tuple)


def test_lists_given_as_input_are_copied_so_later_mutation_changes_nothing() -> None:
    resources = ["things/${thing.name}/#"]
    statement = Statement(effect="allow", actions=["publish"], resources=resources)  # type: ignore[arg-type]
    resources.append("#")
    assert statement.resources == ("things/${thing.name}/#",)
    assert len(statement.patterns) == 1
