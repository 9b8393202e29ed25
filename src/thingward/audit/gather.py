"""The edge of the audit: read the registry, the config and the CA into an `AuditSnapshot`."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from thingward.audit.model import AuditSnapshot, CertificateFacts, DeviceFacts
from thingward.pki.ca import CA_KEY_FILE
from thingward.platform import Platform
from thingward.registry.audit_log import verify_audit_chain
from thingward.registry.models import Certificate, Thing
from thingward.registry.policies import load_policy_world


def gather_snapshot(
    platform: Platform,
    expiry_days: int = 30,
    stale_days: int = 30,
    live_things: frozenset[str] | None = None,
    now: dt.datetime | None = None,
) -> AuditSnapshot:
    settings = platform.settings
    with platform.db.read() as session:
        world = load_policy_world(session)
        # Columns, not ORM objects (which would also load every PEM and attribute): 100k things in seconds.
        certificates = tuple(
            CertificateFacts(thing=name, serial=serial, status=status, not_after=not_after, key_type=key_type)
            for serial, status, not_after, key_type, name in session.connection().execute(
                select(
                    Certificate.serial, Certificate.status, Certificate.not_after, Certificate.key_type, Thing.name
                ).join(Thing)
            )
        )
        devices = tuple(
            DeviceFacts(name=name, disabled=disabled, created_at=created_at, last_seen_at=last_seen_at)
            for name, disabled, created_at, last_seen_at in session.connection().execute(
                select(Thing.name, Thing.disabled, Thing.created_at, Thing.last_seen_at)
            )
        )
        chain_intact = verify_audit_chain(session) is None
    ca_key = (settings.pki_dir / CA_KEY_FILE).read_bytes()
    return AuditSnapshot(
        now=now or dt.datetime.now(dt.UTC),
        world=world,
        certificates=certificates,
        devices=devices,
        ca_not_after=platform.ca_certificate_not_after(),
        ca_key_encrypted=b"ENCRYPTED" in ca_key,
        plaintext_port=settings.mqtt.plaintext_port,
        audit_chain_intact=chain_intact,
        expiry_days=expiry_days,
        stale_days=stale_days,
        live_things=live_things,
    )
