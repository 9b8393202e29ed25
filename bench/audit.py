"""Fleet audit time on a synthetic registry: gather (read everything) + checks, at 10k, 50k and 100k things.

The fleet is written straight into a SQLite registry made by `thingward init` (bulk inserts, no API):
1,000 groups in a tree (100 product lines x 9 sites) each with its own policy using variables, things in
1 or 2 groups with a `zone` attribute, one certificate each (a few weak keys, some expiring), last-seen
times up to 60 days old (some stale), one `thing.add` audit event per thing in a valid HMAC chain (the
audit verifies the whole chain), and a few bad policies so that every kind of check has work to do.
User accounts do not exist yet, so the 10k users of the issue's aim are not part of the fleet.

    python bench/audit.py                    # 10k, 50k, 100k things
    python bench/audit.py --sizes 10000      # one size
    python bench/audit.py --profile 100000   # cProfile of one audit, top 25 by cumulative time

Prints figures, asserts nothing. Aim (issue 5): linear in the fleet, and under 10 s for 100k things.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import logging
import os
import platform as host
import pstats
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from thingward.audit.checks import run_checks
from thingward.audit.gather import gather_snapshot
from thingward.audit.report import build_report
from thingward.audit.service import run_audit
from thingward.platform import Platform, init_data_dir
from thingward.registry.audit_log import GENESIS, _event_hash
from thingward.registry.models import (
    AuditEvent,
    Certificate,
    DeviceModel,
    DeviceReport,
    FirmwareAdvisory,
    GroupMember,
    Policy,
    PolicyAttachment,
    Thing,
    ThingAttribute,
    ThingGroup,
    User,
)
from thingward.registry.policies import load_policy_world

GROUPS = 1000
USERS = 10_000
LINES = 100
FAKE_PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 640 + "\n-----END CERTIFICATE-----\n"


def group_policy(line: bool) -> dict[str, Any]:
    if line:
        return {
            "statements": [
                {"effect": "allow", "actions": ["connect"], "resources": ["${thing.name}"]},
                {"effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/#"]},
                {
                    "effect": "allow",
                    "actions": ["subscribe", "receive"],
                    "resources": ["things/${thing.name}/commands/#"],
                },
            ]
        }
    return {
        "statements": [
            {"effect": "allow", "actions": ["publish"], "resources": ["sites/${group.name}/${thing.attr.zone}/+"]},
            {"effect": "deny", "actions": ["publish"], "resources": ["things/${thing.name}/admin/#"]},
        ]
    }


def build_fleet(data_dir: Path, things: int, rng: random.Random) -> Platform:
    init_data_dir(data_dir)
    platform = Platform.open(data_dir)
    now = dt.datetime.now(dt.UTC)
    key = (data_dir / "audit.key").read_bytes()
    with platform.db.session() as session:
        groups, policies, attachments = [], [], []
        for gid in range(2, GROUPS + 2):  # id 1 is init's default group
            line = (gid - 2) % 10 == 0
            parent = None if line else 2 + ((gid - 2) // 10) * 10
            groups.append({"id": gid, "name": f"g{gid}", "parent_id": parent, "description": "", "created_at": now})
            document = group_policy(line)
            if gid % 250 == 0:  # a few policies that reach every device: findings for the policy checks
                document = {
                    "statements": [{"effect": "allow", "actions": ["subscribe", "receive"], "resources": ["#"]}]
                }
            text = json.dumps(document)
            policies.append(
                {"id": gid, "name": f"p{gid}", "document": text, "version": 1, "created_at": now, "updated_at": now}
            )
            attachments.append({"policy_id": gid, "group_id": gid, "thing_id": None})
        session.execute(insert(ThingGroup), groups)
        session.execute(insert(Policy), policies)
        session.execute(insert(PolicyAttachment), attachments)
        thing_rows, members, attributes, certs = [], [], [], []
        sites = [g["id"] for g in groups if g["parent_id"] is not None]
        for tid in range(1, things + 1):
            seen = now - dt.timedelta(hours=rng.uniform(0, 60 * 24))
            thing_rows.append(
                {
                    "id": tid,
                    "name": f"t{tid}",
                    "disabled": tid % 500 == 0,
                    "created_at": now - dt.timedelta(days=90),
                    "last_seen_at": seen,
                }
            )
            site = rng.choice(sites)
            members.append({"group_id": site, "thing_id": tid})
            if rng.random() < 0.5:
                members.append({"group_id": 2 + ((site - 2) // 10) * 10, "thing_id": tid})
            attributes.append({"thing_id": tid, "key": "zone", "value": f"z{tid % 5}"})
            serial = secrets.token_hex(16)
            certs.append(
                {
                    "serial": serial,
                    "fingerprint_sha256": secrets.token_hex(32),
                    "thing_id": tid,
                    "status": "active",
                    "not_before": now - dt.timedelta(days=10),
                    "not_after": now + dt.timedelta(days=rng.uniform(-5, 90)),
                    "revoked_at": None,
                    "revocation_reason": None,
                    "key_type": "rsa-1024" if tid % 1000 == 0 else "ec-secp256r1",
                    "pem": FAKE_PEM,
                }
            )
        session.execute(insert(Thing), thing_rows)
        session.execute(insert(GroupMember), members)
        session.execute(insert(ThingAttribute), attributes)
        session.execute(insert(Certificate), certs)
        # What devices report (every thing; one in 200 with Telnet, one in 10 on firmware under an advisory),
        # their model's profile and the advisory, and the people: USERS accounts, 1 in 20 an admin, 1 in 3 with 2FA.
        session.execute(
            insert(DeviceModel),
            [
                {
                    "name": "cam",
                    "description": "",
                    "allowed_tcp_ports": "[443]",
                    "allowed_udp_ports": "[5353]",
                    "updated_at": now,
                }
            ],
        )
        session.execute(
            insert(FirmwareAdvisory),
            [
                {
                    "advisory_id": "BENCH-1",
                    "model": "cam",
                    "affected": "<1.2",
                    "severity": "high",
                    "summary": "",
                    "created_at": now,
                }
            ],
        )
        session.execute(
            insert(DeviceReport),
            [
                {
                    "thing_id": tid,
                    "received_at": now,
                    "model": "cam",
                    "pinned_model": "cam",
                    "firmware_version": "1.1.0" if tid % 10 == 0 else "1.4.0",
                    "tcp_ports": "[23, 443]" if tid % 200 == 0 else "[443]",
                    "udp_ports": "[5353]",
                    "onboarding_state": "provisioned",
                    "onboarding_since": None,
                }
                for tid in range(1, things + 1)
            ],
        )
        session.execute(
            insert(User),
            [
                {
                    "email": f"user{uid}@example.test",
                    "display_name": "",
                    "password_hash": "bench",
                    "is_admin": uid % 20 == 0,
                    "disabled": False,
                    "must_change_password": False,
                    "created_at": now,
                    "password_changed_at": now,
                    "totp_enabled_at": now if uid % 3 == 0 else None,
                }
                for uid in range(1, USERS + 1)
            ],
        )
        last = session.execute(AuditEvent.__table__.select().order_by(AuditEvent.id.desc()).limit(1)).first()
        prev = last.hash if last is not None else GENESIS
        events = []
        for tid in range(1, things + 1):
            at = now.replace(microsecond=0)
            detail = json.dumps({"groups": []}, separators=(",", ":"))
            digest = _event_hash(key, prev, at, "bench", "bench", "thing.add", f"thing:t{tid}", detail)
            events.append(
                {
                    "at": at,
                    "actor": "bench",
                    "source": "bench",
                    "action": "thing.add",
                    "target": f"thing:t{tid}",
                    "detail": detail,
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            prev = digest
        session.execute(insert(AuditEvent), events)
    return platform


def timed(label: str, fn: Any, results: dict[str, float]) -> Any:
    started, cpu = time.perf_counter(), time.process_time()
    value = fn()
    results[label] = time.perf_counter() - started
    # CPU seconds of this process: less moved by other work sharing the machine than the wall clock.
    results[f"{label} cpu"] = time.process_time() - cpu
    return value


def measure(things: int, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="thingward-bench-audit-") as tmp:
        started = time.perf_counter()
        platform = build_fleet(Path(tmp) / "data", things, rng)
        build = time.perf_counter() - started
        try:
            times: dict[str, float] = {}
            with platform.db.read() as session:
                timed("load policy world", lambda: load_policy_world(session), times)
            snapshot = timed("gather (all reads)", lambda: gather_snapshot(platform), times)
            results = timed("checks", lambda: run_checks(snapshot), times)
            timed("report", lambda: build_report(results, snapshot.now), times)
            outcome = timed("whole audit (run_audit)", lambda: run_audit(platform), times)
            findings = sum(outcome.report["summary"]["findings"].values())
        finally:
            platform.close()
    return {"things": things, "build": build, "times": times, "findings": findings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--profile", type=int, metavar="THINGS", help="profile one audit of this many things")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    rng = random.Random(5)
    print(
        f"python {sys.version.split()[0]} on {host.machine()}, {os.cpu_count()} cores; "
        f"{GROUPS} groups and policies, {USERS} users"
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f}; seconds (wall unless marked cpu)")
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="thingward-bench-audit-") as tmp:
            platform = build_fleet(Path(tmp) / "data", args.profile, rng)
            profiler = cProfile.Profile()
            profiler.runcall(run_audit, platform)
            platform.close()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return
    rows = [measure(n, rng) for n in args.sizes]
    labels = [label for label in rows[0]["times"] if not label.endswith(" cpu")] + ["whole audit (run_audit) cpu"]
    print(
        f"{'things':>8} {'build s':>8} "
        + " ".join(f"{label:>24}" for label in labels)
        + f" {'findings':>9} {'s per 10k':>9}"
    )
    for row in rows:
        whole = row["times"]["whole audit (run_audit)"]
        cells = " ".join(f"{row['times'][label]:>24.2f}" for label in labels)
        per_10k = whole / row["things"] * 10_000
        print(f"{row['things']:>8} {row['build']:>8.1f} {cells} {row['findings']:>9} {per_10k:>9.2f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = last["times"]["whole audit (run_audit)"] / first["times"]["whole audit (run_audit)"]
        scale = last["things"] / first["things"]
        print(f"{first['things']} -> {last['things']} things ({scale:.0f}x): whole audit {growth:.1f}x")


if __name__ == "__main__":
    main()
