"""Policies compiled into a Mosquitto 2.0 `acl_file`: one `user` block per identity, denies first.

How Mosquitto 2.0.11 reads the file (src/security_default.c, and tried on the real broker): the client's
username (with `use_identity_as_username`, the certificate's CN) selects one `user` block; its lines are
tried in file order and the first whose topic matches decides: `deny` refuses, a line whose access
includes the request (`read` for a delivery, retained ones included, `write` for a publish) allows,
any other line is passed over. Then `pattern` lines, for every user. No match: refused. SUBSCRIBE is
never checked by an acl_file; what a subscription may deliver is.

Why per-identity blocks and no `pattern` lines: a pattern applies to every username, so it would give
its rights to any certificate the CA ever signed whose name is not (or no longer) a thing with that
policy: a quarantined thing, a thing whose connect the policy forbids, a deleted thing. Blocks keep
Mosquitto fail-closed like the policy engine: a name with no block gets nothing.

Where the compiled ACL is stricter than the policy (never looser), `CompiledAcl.stricter` says why:
a deny for only one of publish and receive is written as `deny`, which Mosquitto applies to both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from thingward.broker.base import Authorizer
from thingward.policy.topics import GROUP_NAME, THING_ATTR_PREFIX, THING_NAME, intersects
from thingward.policy.world import PolicyWorld, ThingFacts, thing_attachments

__all__ = ["INTERNAL_IDENTITY", "INTERNAL_RULES", "CompiledAcl", "compile_acl"]

# The certificate name of thingward's own MQTT client. Thing names are [a-z0-9_-]{1,64}: no device can
# enroll under a name with a colon.
INTERNAL_IDENTITY = "thingward:internal"

# Least privilege for the internal client: read what ingestion stores, write where the server speaks.
INTERNAL_RULES: tuple[tuple[str, str], ...] = (
    ("read", "things/+/telemetry"),
    ("read", "things/+/state"),
    ("read", "things/+/events/+"),
    ("read", "things/+/update/status"),  # OTA job reports for the rollout scheduler
    ("write", "things/+/commands/#"),
    ("write", "things/+/update/#"),
)

_ACCESS = {"publish": "write", "receive": "read"}


@dataclass(frozen=True)
class CompiledAcl:
    text: str
    identities: int  # user blocks written
    rules: int  # topic lines written
    # Why a thing's rights on Mosquitto are narrower than the policy's (one line per case).
    stricter: tuple[str, ...]


def _safe_topic(topic: str) -> bool:
    """A topic that the acl_file parser reads back unchanged: no control characters, no leading space."""
    if not topic or topic[0] == " " or len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return False
    return not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in topic)


def _thing_rules(world: PolicyWorld, facts: ThingFacts) -> tuple[list[tuple[str, str]], list[str]] | None:
    """(rules in order, notes) for one thing, or None when it must get nothing (an unwritable deny)."""
    allows: dict[str, set[str]] = {"write": set(), "read": set()}
    denies: dict[str, set[str]] = {"write": set(), "read": set()}
    notes: list[str] = []
    for attachment in thing_attachments(world, facts.name, facts.groups):

        def lookup(key: str, group: str | None = attachment.group_name) -> str | None:
            if key == THING_NAME:
                return facts.name
            if key == GROUP_NAME:
                return group
            if key.startswith(THING_ATTR_PREFIX):
                return facts.attributes.get(key[len(THING_ATTR_PREFIX) :])
            return None

        for statement in attachment.document.statements:
            accesses = [_ACCESS[a] for a in statement.actions if a in _ACCESS]
            if not accesses:
                continue
            deny = statement.effect == "deny"
            for pattern in statement.patterns:
                levels = pattern.resolve(lookup, broaden=deny)
                if levels is None:
                    continue
                topic = "/".join(levels)
                if not _safe_topic(topic):
                    if deny:
                        return None
                    notes.append(f"{facts.name}: allow on {topic!r} left out (not writable in an acl_file)")
                    continue
                for access in accesses:
                    (denies if deny else allows)[access].add(topic)
    rules: list[tuple[str, str]] = [("deny", topic) for topic in sorted(denies["write"] | denies["read"])]
    for access, other in (("write", "read"), ("read", "write")):
        for topic in sorted(denies[access] - denies[other]):
            denied = topic.split("/")
            if any(intersects(denied, allowed.split("/")) for allowed in allows[other]):
                action = "receive" if other == "read" else "publish"
                notes.append(
                    f"{facts.name}: the deny on {topic!r} also refuses {action} there "
                    "(an acl_file deny covers both directions)"
                )
    for topic in sorted(allows["write"] | allows["read"]):
        if topic in allows["write"] and topic in allows["read"]:
            rules.append(("readwrite", topic))
        else:
            rules.append(("write" if topic in allows["write"] else "read", topic))
    return rules, notes


def compile_acl(
    world: PolicyWorld,
    authorizer: Authorizer,
    internal: Iterable[tuple[str, Sequence[tuple[str, str]]]] = ((INTERNAL_IDENTITY, INTERNAL_RULES),),
) -> CompiledAcl:
    """The acl_file for `world`: a block per enabled thing allowed to connect, and the internal identities'.

    `authorizer` answers the connect question (a thing the policy may not connect as itself gets no block,
    so nothing at all on Mosquitto, where a CONNECT cannot be refused by name).
    """
    lines = ["# Written by thingward from the policies; every change is rewritten. Do not edit.", ""]
    identities = rules_written = 0
    stricter: list[str] = []
    for name, rules in internal:
        lines.append(f"user {name}")
        lines.extend(f"topic {access} {topic}" for access, topic in rules)
        lines.append("")
        identities += 1
        rules_written += len(rules)
    for name in sorted(world.things):
        facts = world.things[name]
        if not authorizer.authorize(name, "connect", name):
            lines.append(f"# {name}: may not connect; no rights")
            continue
        compiled = _thing_rules(world, facts)
        if compiled is None:
            lines.append(f"# {name}: a deny cannot be written safely; no rights")
            stricter.append(f"{name}: a deny holds characters an acl_file cannot carry, so the thing gets nothing")
            continue
        thing_rules, notes = compiled
        stricter.extend(notes)
        if not thing_rules:
            continue
        lines.append(f"user {name}")
        lines.extend(f"topic {access} {topic}" for access, topic in thing_rules)
        lines.append("")
        identities += 1
        rules_written += len(thing_rules)
    return CompiledAcl(
        text="\n".join(lines) + "\n", identities=identities, rules=rules_written, stricter=tuple(stricter)
    )
