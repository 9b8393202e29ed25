"""Audit snapshots for check tests: a clean one-camera platform that each test changes one fact of."""

from __future__ import annotations

import datetime as dt

from thingward.audit import checks
from thingward.audit.model import AuditSnapshot, CertificateFacts, CheckResult, DeviceFacts
from thingward.policy.document import DEFAULT_POLICY, parse_policy_document
from thingward.policy.world import GroupFacts, PolicyWorld, ThingFacts

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def world(extra: dict | None = None, *, on_thing: bool = False) -> PolicyWorld:
    policies = {"default": DEFAULT_POLICY}
    group_policies = {"cams": ("default",)}
    thing_policies: dict[str, tuple[str, ...]] = {}
    if extra is not None:
        policies["extra"] = parse_policy_document(extra)
        if on_thing:
            thing_policies["cam1"] = ("extra",)
        else:
            group_policies["cams"] = ("default", "extra")
    return PolicyWorld(
        things={"cam1": ThingFacts(name="cam1", attributes={}, groups=("cams",))},
        groups={"cams": GroupFacts(name="cams", parent=None)},
        policies=policies,
        group_policies=group_policies,
        thing_policies=thing_policies,
    )


def snapshot(**kwargs) -> AuditSnapshot:
    base = {
        "now": NOW,
        "world": world(),
        "ca_not_after": NOW + 3000 * DAY,
        "ca_key_encrypted": True,
        "devices": (DeviceFacts("cam1", False, NOW - 2 * DAY, NOW - DAY),),
        "certificates": (CertificateFacts("cam1", "aa", "active", NOW + 80 * DAY, "ec-secp256r1"),),
    }
    base.update(kwargs)
    return AuditSnapshot(**base)


def result(check_id: str, snap: AuditSnapshot) -> CheckResult:
    return next(r for r in checks.run_checks(snap) if r.info.id == check_id)
