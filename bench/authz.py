"""Authorization decisions per second: thingward's compiled engine beside its reference evaluator and amqtt.

A realistic fleet: product lines > regions > sites (a tree), plus flat cohort groups; each thing is
in one site and maybe one or two cohorts (1-3 groups), has `zone` and `model` attributes, and every
group has its own policy using variables. The same rules, with variables expanded per thing, are
given to amqtt's `TopicAccessControlListPlugin` (which has no deny, no variables and no '$' rule:
its agreement with our decisions is printed too).

    python bench/authz.py            # 100k things, 1k groups, 1M decisions
    python bench/authz.py --quick    # 10k things, 200 groups, 200k decisions

Prints figures, asserts nothing. Run on an otherwise idle machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from amqtt.contexts import Action as AmqttAction
from amqtt.contexts import BaseContext
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin

from thingward.policy import (
    GroupFacts,
    PolicyDocument,
    PolicyEngine,
    PolicyWorld,
    ThingFacts,
    parse_policy_document,
    reference_authorize,
)
from thingward.policy.world import thing_attachments

Decision = tuple[str, str, str]

ZONES = [f"z{i}" for i in range(5)]
MODELS = [f"m{i}" for i in range(10)]


def line_policy() -> dict[str, Any]:
    return {
        "statements": [
            {"sid": "connect-as-self", "effect": "allow", "actions": ["connect"], "resources": ["${thing.name}"]},
            {"sid": "own-topics", "effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/#"]},
            {
                "sid": "own-commands",
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "resources": ["things/${thing.name}/commands/#", "lines/${group.name}/broadcast/#"],
            },
        ]
    }


def region_policy() -> dict[str, Any]:
    return {
        "statements": [
            {
                "sid": "region-telemetry",
                "effect": "allow",
                "actions": ["publish"],
                "resources": ["regions/${group.name}/telemetry/${thing.name}"],
            },
            {
                "sid": "region-alerts",
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "resources": ["regions/${group.name}/alerts/+"],
            },
            {
                "sid": "no-admin",
                "effect": "deny",
                "actions": ["publish"],
                "resources": ["things/${thing.name}/admin/#"],
            },
        ]
    }


def site_policy() -> dict[str, Any]:
    return {
        "statements": [
            {
                "sid": "zone-sensors",
                "effect": "allow",
                "actions": ["publish"],
                "resources": ["sites/${group.name}/${thing.attr.zone}/+"],
            },
            {
                "sid": "zone-feed",
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "resources": ["sites/${group.name}/${thing.attr.zone}/#"],
            },
        ]
    }


def cohort_policy() -> dict[str, Any]:
    return {
        "statements": [
            {
                "sid": "cohort-firmware",
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "resources": ["firmware/${thing.attr.model}/${group.name}/#"],
            },
            {
                "sid": "no-internal",
                "effect": "deny",
                "actions": ["subscribe", "receive"],
                "resources": ["firmware/+/${group.name}/internal/#"],
            },
        ]
    }


@dataclass
class Fleet:
    world: PolicyWorld
    site_of: dict[str, str]
    region_of: dict[str, str]
    line_of: dict[str, str]
    cohorts: list[str]


def build_fleet(things: int, groups: int, rng: random.Random, distinct: bool) -> Fleet:
    lines = max(1, round(groups ** (1 / 3)))
    cohorts = [f"cohort-{i}" for i in range(min(10, max(1, groups // 100)))]
    regions_per_line = lines
    regions = [(f"line-{li}-region-{ri}", f"line-{li}") for li in range(lines) for ri in range(regions_per_line)]
    sites_count = max(1, groups - lines - len(regions) - len(cohorts))
    sites = [(f"site-{si}", regions[si % len(regions)][0]) for si in range(sites_count)]
    group_facts = [GroupFacts(f"line-{li}") for li in range(lines)]
    group_facts += [GroupFacts(name, parent) for name, parent in regions]
    group_facts += [GroupFacts(name, parent) for name, parent in sites]
    group_facts += [GroupFacts(name) for name in cohorts]

    templates = {"line": line_policy, "region": region_policy, "site": site_policy, "cohort": cohort_policy}
    shared = {tier: parse_policy_document(make()) for tier, make in templates.items()}
    policies: dict[str, PolicyDocument] = {}
    group_policies: dict[str, tuple[str, ...]] = {}
    for facts in group_facts:
        tier = (
            facts.name.split("-")[0] if not facts.name.startswith("line-") or "region" not in facts.name else "region"
        )
        if distinct:
            # Worst case for sharing: every group's document differs (a literal of its own).
            source = templates[tier]()
            source["statements"].append(
                {"effect": "allow", "actions": ["receive"], "resources": [f"notices/{facts.name}"]}
            )
            document = parse_policy_document(source)
        else:
            document = shared[tier]
        policies[f"{facts.name}-policy"] = document
        group_policies[facts.name] = (f"{facts.name}-policy",)

    region_parent = dict(regions)
    site_parent = dict(sites)
    thing_facts: list[ThingFacts] = []
    site_of: dict[str, str] = {}
    for index in range(things):
        name = f"dev-{index:06d}"
        site = sites[rng.randrange(len(sites))][0]
        member_of = [site]
        if rng.random() < 0.3:
            member_of.append(rng.choice(cohorts))
            if rng.random() < 0.33:
                member_of.append(rng.choice(cohorts))
        attributes = {"zone": rng.choice(ZONES), "model": rng.choice(MODELS)}
        thing_facts.append(ThingFacts(name, attributes, tuple(dict.fromkeys(member_of))))
        site_of[name] = site
    world = PolicyWorld.from_facts(thing_facts, group_facts, policies, group_policies)
    region_of = {name: site_parent[site] for name, site in site_of.items()}
    line_of = {name: region_parent[region] for name, region in region_of.items()}
    return Fleet(world, site_of, region_of, line_of, cohorts)


def build_decisions(fleet: Fleet, count: int, rng: random.Random) -> list[Decision]:
    names = list(fleet.world.things)
    out: list[Decision] = []
    kinds = [
        (25, "own-telemetry"), (10, "other-telemetry"), (5, "admin"), (10, "region"), (5, "site"),
        (15, "commands"), (5, "broadcast"), (3, "sys"), (7, "sub-own"), (3, "sub-all"), (4, "sub-firmware"),
        (6, "connect-self"), (2, "connect-other"),
    ]  # fmt: skip
    weights = [w for w, _ in kinds]
    labels = [k for _, k in kinds]
    for kind in rng.choices(labels, weights, k=count):
        thing = rng.choice(names)
        other = rng.choice(names)
        facts = fleet.world.things[thing]
        zone = facts.attributes["zone"]
        if kind == "own-telemetry":
            out.append((thing, "publish", f"things/{thing}/telemetry"))
        elif kind == "other-telemetry":
            out.append((thing, "publish", f"things/{other}/telemetry"))
        elif kind == "admin":
            out.append((thing, "publish", f"things/{thing}/admin/reset"))
        elif kind == "region":
            out.append((thing, "publish", f"regions/{fleet.region_of[thing]}/telemetry/{thing}"))
        elif kind == "site":
            out.append((thing, "publish", f"sites/{fleet.site_of[thing]}/{zone}/temperature"))
        elif kind == "commands":
            out.append((thing, "receive", f"things/{thing}/commands/reboot"))
        elif kind == "broadcast":
            out.append((thing, "receive", f"lines/{fleet.line_of[thing]}/broadcast/news"))
        elif kind == "sys":
            out.append((thing, "receive", "$SYS/broker/load/messages"))
        elif kind == "sub-own":
            out.append((thing, "subscribe", f"things/{thing}/commands/#"))
        elif kind == "sub-all":
            out.append((thing, "subscribe", "things/+/commands/#"))
        elif kind == "sub-firmware":
            cohort = rng.choice(fleet.cohorts)
            out.append((thing, "subscribe", f"firmware/{facts.attributes['model']}/{cohort}/#"))
        elif kind == "connect-self":
            out.append((thing, "connect", thing))
        else:
            out.append((thing, "connect", other))
    return out


def amqtt_acls(world: PolicyWorld) -> dict[str, dict[str, list[str]]]:
    """Per action, per username: the allow resources with variables expanded (amqtt has no deny)."""
    acls: dict[str, dict[str, list[str]]] = {"publish": {}, "subscribe": {}, "receive": {}}
    for facts in world.things.values():
        for attachment in thing_attachments(world, facts.name, facts.groups):

            def lookup(key: str, facts: ThingFacts = facts, group: str | None = attachment.group_name) -> str | None:
                if key == "thing.name":
                    return facts.name
                if key == "group.name":
                    return group
                return facts.attributes.get(key.removeprefix("thing.attr."))

            for statement in attachment.document.statements:
                if statement.effect != "allow":
                    continue
                for pattern in statement.patterns:
                    levels = pattern.resolve(lookup, broaden=False)
                    if levels is None:
                        continue
                    for action in statement.actions:
                        if action in acls:
                            acls[action].setdefault(facts.name, []).append("/".join(levels))
    return acls


def timed(run: Callable[[], object], repeat: int) -> float:
    """Best wall time of `repeat` runs, with the garbage collector off (as timeit does)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best


def engine_pass(engine: PolicyEngine, decisions: Sequence[Decision]) -> Callable[[], int]:
    authorize = engine.authorize

    def run() -> int:
        allowed = 0
        for thing, action, topic in decisions:
            if authorize(thing, action, topic):  # type: ignore[arg-type]
                allowed += 1
        return allowed

    return run


def floor_pass(engine: PolicyEngine, decisions: Sequence[Decision]) -> Callable[[], int]:
    """No decision at all: the loop, the cache lookup and the string concatenation every decision needs.

    With 100k things picked at random this is mostly memory latency (cache misses), which bounds
    any per-thing evaluator on this machine.
    """
    cache = engine._state.cache  # internals, read-only: the same dict the engine looks things up in

    def run() -> int:
        total = 0
        for thing, _action, topic in decisions:
            entry = cache.get(thing)
            if entry is not None:
                total += len(entry.prefix + topic)
        return total

    return run


def amqtt_pass(acls: dict[str, dict[str, list[str]]], decisions: Sequence[Decision]) -> Callable[[], int]:
    # Exactly the decision of TopicAccessControlListPlugin.topic_filtering, without the coroutine.
    topic_ac = TopicAccessControlListPlugin.topic_ac

    def run() -> int:
        allowed = 0
        for thing, action, topic in decisions:
            allowed_topics = acls[action].get(thing, [])
            if allowed_topics and any(topic_ac(topic, allowed_topic) for allowed_topic in allowed_topics):
                allowed += 1
        return allowed

    return run


def amqtt_plugin_pass(acls: dict[str, dict[str, list[str]]], decisions: Sequence[Decision]) -> Callable[[], int]:
    """The real plugin coroutine, awaited once per decision, as amqtt's broker calls it."""
    context = BaseContext()
    context.logger = logging.getLogger("bench.amqtt")
    context.config = {
        "topic-check": {
            "enabled": True,
            "publish-acl": acls["publish"],
            "subscribe-acl": acls["subscribe"],
            "receive-acl": acls["receive"],
        }
    }
    plugin = TopicAccessControlListPlugin(context)
    actions = {"publish": AmqttAction.PUBLISH, "subscribe": AmqttAction.SUBSCRIBE, "receive": AmqttAction.RECEIVE}
    sessions = {thing: SimpleNamespace(username=thing) for thing, _a, _t in decisions}
    prepared = [(sessions[thing], actions[action], topic) for thing, action, topic in decisions]

    async def loop() -> int:
        allowed = 0
        for session, action, topic in prepared:
            if await plugin.topic_filtering(session=session, topic=topic, action=action):  # type: ignore[arg-type]
                allowed += 1
        return allowed

    def run() -> int:
        return asyncio.run(loop())

    return run


def row(label: str, seconds: float, count: int, baseline: float | None) -> str:
    per = seconds / count * 1e6
    rate = count / seconds
    if baseline is None:
        ratio = "1.0x"
    elif per >= baseline:
        ratio = f"{per / baseline:.1f}x slower"
    else:
        ratio = f"{per / baseline:.2f}x"
    return f"| {label:<52} | {per:>10.3f} | {rate:>14,.0f} | {count:>10,} | {ratio:>14} |"


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--things", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=1_000)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--reference-sample", type=int, default=20_000)
    parser.add_argument("--plugin-sample", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--distinct-policies", action="store_true", help="give every group a different document")
    parser.add_argument("--quick", action="store_true", help="10k things, 200 groups, 200k decisions")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.things, args.groups, args.decisions = 10_000, 200, 200_000
        args.reference_sample, args.plugin_sample = 5_000, 50_000

    rng = random.Random(args.seed)
    started = time.perf_counter()
    fleet = build_fleet(args.things, args.groups, rng, args.distinct_policies)
    decisions = build_decisions(fleet, args.decisions, rng)
    world = fleet.world
    print(
        f"# thingward authz benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
    )
    print(
        f"# {len(world.things):,} things, {len(world.groups):,} groups, {len(world.policies):,} policies"
        f"{' (all distinct)' if args.distinct_policies else ''}, {len(decisions):,} decisions; "
        f"built in {time.perf_counter() - started:.1f} s"
    )

    # Cold: a fresh engine, the first decision of each thing (builds its matcher; templates shared).
    firsts: dict[str, Decision] = {}
    for decision in decisions:
        firsts.setdefault(decision[0], decision)
    cold_decisions = list(firsts.values())
    cold_engine = PolicyEngine(world, cache_size=max(len(world.things), 1))
    cold_seconds = timed(engine_pass(cold_engine, cold_decisions), 1)
    templates = cold_engine.compiled_templates

    # Warm: every thing's matcher cached.
    engine = PolicyEngine(world, cache_size=max(len(world.things), 1))
    allowed = engine_pass(engine, decisions)()
    warm_seconds = timed(engine_pass(engine, decisions), args.repeat)
    floor_seconds = timed(floor_pass(engine, decisions), args.repeat)

    sample = decisions[: args.reference_sample]
    reference_answers: list[bool] = []

    def reference_run() -> None:
        reference_answers.clear()
        reference_answers.extend(reference_authorize(world, t, a, p) for t, a, p in sample)

    reference_seconds = timed(reference_run, 1)
    mismatches = sum(engine.authorize(t, a, p) != r for (t, a, p), r in zip(sample, reference_answers, strict=True))  # type: ignore[arg-type]

    acl_started = time.perf_counter()
    acls = amqtt_acls(world)
    acl_seconds = time.perf_counter() - acl_started
    data_decisions = [d for d in decisions if d[1] != "connect"]  # amqtt's topic plugin never sees connect
    amqtt_seconds = timed(amqtt_pass(acls, data_decisions), args.repeat)
    plugin_decisions = data_decisions[: args.plugin_sample]
    plugin_seconds = timed(amqtt_plugin_pass(acls, plugin_decisions), 1)
    topic_ac = TopicAccessControlListPlugin.topic_ac
    agree = sum(
        engine.authorize(t, a, p) == any(topic_ac(p, x) for x in acls[a].get(t, []))  # type: ignore[arg-type]
        for t, a, p in data_decisions
    )

    baseline = warm_seconds / len(decisions) * 1e6
    print()
    print(
        f"| {'evaluator':<52} | {'µs/decision':>10} | {'decisions/s':>14} | {'decisions':>10} | {'vs compiled':>14} |"
    )
    print(f"|{'-' * 54}|{'-' * 12}:|{'-' * 15}:|{'-' * 11}:|{'-' * 15}:|")
    print(row("thingward compiled, warm cache", warm_seconds, len(decisions), None))
    print(row("thingward compiled, cold (first decision per thing)", cold_seconds, len(cold_decisions), baseline))
    print(row("thingward reference evaluator (sample)", reference_seconds, len(sample), baseline))
    print(row("amqtt topic_ac loop, allow-only ACLs", amqtt_seconds, len(data_decisions), baseline))
    print(row("amqtt TopicAccessControlListPlugin, awaited (sample)", plugin_seconds, len(plugin_decisions), baseline))
    print(row("(floor: loop + cache lookup + concat, no decision)", floor_seconds, len(decisions), baseline))
    print()
    print(f"allowed: {allowed:,} of {len(decisions):,} ({allowed / len(decisions):.1%})")
    print(f"compiled vs reference on the sample: {mismatches} mismatches")
    print(f"templates compiled for {len(cold_decisions):,} things: {templates}")
    print(f"amqtt agrees with thingward on {agree / len(data_decisions):.2%} of its decisions "
          "(no deny, no '$' rule, '#' does not match the parent level)")  # fmt: skip
    print(f"amqtt ACLs built (variables expanded per thing) in {acl_seconds:.1f} s")

    for label, action, topic in [
        ("one thing's topic", "publish", f"things/{next(iter(world.things))}/telemetry"),
        ("a line broadcast", "receive", "lines/line-0/broadcast/news"),
        ("a wildcard filter", "subscribe", "things/+/commands/#"),
    ]:
        who_started = time.perf_counter()
        result = engine.who_can(action, topic)
        print(f"who_can {action} {topic!r} ({label}): {len(result.things):,} things in "
              f"{time.perf_counter() - who_started:.2f} s")  # fmt: skip
    print(f"total {time.perf_counter() - started:.1f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
