"""explain and who_can: an operator must see exactly which statement decides and who holds a grant."""

from __future__ import annotations

import json

from thingward.policy import DEFAULT_POLICY, PolicyEngine

from ._worlds import allow, deny, policy, thing, world

CAMS = world(
    things=[
        thing("cam-1", "garden"),
        thing("cam-2", "porch"),
        thing("cam-3", "porch", "beta"),
        thing("lock-1", "doors"),
    ],
    groups={"home": None, "cams": "home", "garden": "cams", "porch": "cams", "doors": "home", "beta": None},
    policies={
        "default": DEFAULT_POLICY,
        "p1": policy(
            deny(["publish", "subscribe"], "things/+/secrets/#", sid="no-secrets"),
            allow("publish", "clips/${group.name}/${thing.name}"),
        ),
        "beta-p": policy(allow(["subscribe", "receive"], "firmware/beta/#", sid="beta-firmware")),
        "home-p": policy(allow("receive", "home/broadcast", sid="broadcast")),
    },
    group_policies={"home": ["default", "home-p"], "cams": ["p1"], "beta": ["beta-p"]},
)


def test_explain_names_the_deciding_deny_statement_and_its_group() -> None:
    explanation = PolicyEngine(CAMS).explain("cam-1", "publish", "things/cam-1/secrets/key")
    assert explanation.decision == "deny"
    assert explanation.reason == "denied by statement 'no-secrets' of policy 'p1' attached to group 'cams'"
    by_effect = {m.effect: m for m in explanation.statements}
    assert by_effect["deny"].to_dict() == {
        "policy": "p1",
        "sid": "no-secrets",
        "index": 0,
        "effect": "deny",
        "resource": "things/+/secrets/#",
        "resolved": "things/+/secrets/#",
        "attached_to": "group:cams",
        "via": ["garden", "cams"],
    }
    assert by_effect["allow"]["policy"] == "default"
    assert by_effect["allow"]["via"] == ["garden", "cams", "home"]  # the mapping view is the JSON form
    assert by_effect["allow"].via == ("garden", "cams", "home")
    json.dumps(explanation.to_dict())


def test_explain_names_an_unnamed_statement_by_index() -> None:
    explanation = PolicyEngine(CAMS).explain("cam-1", "publish", "clips/cams/cam-1")
    assert explanation.decision == "allow"
    assert explanation.reason == "allowed by statement #1 of policy 'p1' attached to group 'cams'"
    [matched] = explanation.statements
    assert matched.to_dict()["sid"] == 1
    assert matched.resolved == "clips/cams/cam-1"


def test_explain_default_deny_lists_nothing() -> None:
    explanation = PolicyEngine(CAMS).explain("cam-1", "publish", "things/cam-2/x")
    assert explanation.decision == "deny"
    assert explanation.reason == "no statement allows it (default deny)"
    assert explanation.statements == ()


def test_explain_says_why_a_malformed_topic_is_denied() -> None:
    e = PolicyEngine(CAMS)
    assert "must not contain the wildcards" in e.explain("cam-1", "publish", "things/cam-1/+").reason
    assert "'#' is allowed only as the last level" in e.explain("cam-1", "subscribe", "a/#/b").reason
    assert "must not contain '/'" in e.explain("cam-1", "connect", "cam-1/x").reason


def test_who_can_lists_exactly_the_things_holding_a_grant() -> None:
    e = PolicyEngine(CAMS)
    result = e.who_can("publish", "things/cam-2/telemetry")
    assert result.names == ("cam-2",)
    [entry] = result.things
    assert [g.to_dict() for g in entry.grants] == [
        {"policy": "default", "sid": "publish-own-topics", "index": 1, "attached_to": "group:home"}
    ]
    assert result.groups == ("home",)


def test_who_can_does_not_list_things_whose_grant_is_denied() -> None:
    e = PolicyEngine(CAMS)
    assert e.who_can("publish", "things/cam-2/secrets/x").names == ()
    # lock-1 is not under 'cams', so the deny does not reach it
    assert e.who_can("publish", "things/lock-1/secrets/x").names == ("lock-1",)


def test_who_can_for_a_shared_topic_lists_the_whole_group() -> None:
    e = PolicyEngine(CAMS)
    assert e.who_can("receive", "home/broadcast").names == ("cam-1", "cam-2", "cam-3", "lock-1")
    beta = e.who_can("subscribe", "firmware/beta/+")
    assert beta.names == ("cam-3",)
    assert beta.groups == ("beta",)
    assert e.who_can("subscribe", "firmware/#").names == ()


def test_who_can_with_group_name_variable_lists_members_of_the_attaching_group() -> None:
    e = PolicyEngine(CAMS)
    assert e.who_can("publish", "clips/cams/cam-3").names == ("cam-3",)
    assert e.who_can("publish", "clips/porch/cam-3").names == ()


def test_who_can_with_a_wildcard_filter_finds_no_thing_under_default_policy() -> None:
    e = PolicyEngine(CAMS)
    assert e.who_can("subscribe", "things/+/commands/#").names == ()
    assert e.who_can("subscribe", "#").names == ()
    assert e.who_can("subscribe", "things/cam-1/commands/#").names == ("cam-1",)


def test_who_can_for_malformed_topic_lists_nobody_and_says_why() -> None:
    result = PolicyEngine(CAMS).who_can("publish", "things/+/x")
    assert result.names == ()
    assert result.problem is not None
    assert json.loads(json.dumps(result.to_dict()))["count"] == 0


def test_who_can_connect_lists_the_one_thing_with_that_client_id() -> None:
    e = PolicyEngine(CAMS)
    assert e.who_can("connect", "lock-1").names == ("lock-1",)
    assert e.who_can("connect", "intruder").names == ()


def test_who_can_scales_to_a_large_fleet() -> None:
    things = [thing(f"t{i}", f"site-{i % 100}", zone=f"z{i % 7}") for i in range(20_000)]
    groups: dict[str, str | None] = {f"site-{i}": f"region-{i % 10}" for i in range(100)}
    groups.update({f"region-{i}": None for i in range(10)})
    w = world(
        things=things,
        groups=groups,
        policies={
            "default": DEFAULT_POLICY,
            "site": policy(
                allow("publish", "sites/${group.name}/${thing.attr.zone}/+"),
                deny("publish", "things/${thing.name}/admin/#"),
            ),
            "region": policy(allow("receive", "regions/${group.name}/alerts")),
        },
        group_policies={
            **{f"region-{i}": ["default", "region"] for i in range(10)},
            **{f"site-{i}": ["site"] for i in range(100)},
        },
    )
    e = PolicyEngine(w)
    assert e.who_can("publish", "things/t123/telemetry").names == ("t123",)
    assert e.who_can("publish", "things/t123/admin/x").names == ()
    zone_site = e.who_can("publish", "sites/site-5/z3/x").names
    assert set(zone_site) == {f"t{i}" for i in range(20_000) if i % 100 == 5 and i % 7 == 3}
    assert len(e.who_can("receive", "regions/region-4/alerts").names) == 2000
