"""The edge of the audit: read the registry, the config and the CA into an `AuditSnapshot`."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from thingward.audit.model import (
    AccountPolicyFacts,
    AdvisoryFacts,
    AuditSnapshot,
    CertificateFacts,
    DeviceFacts,
    ModelFacts,
    ReportFacts,
    Severity,
    UserFacts,
)
from thingward.live import LIVE_STATE_FILE, LiveState, read_live_state
from thingward.pki.ca import CA_KEY_FILE
from thingward.platform import Platform
from thingward.registry.audit_log import verify_audit_chain
from thingward.registry.device_state import latest_reports, list_advisories, list_models
from thingward.registry.models import Certificate, Thing, User
from thingward.registry.policies import load_policy_world


def gather_snapshot(
    platform: Platform,
    expiry_days: int = 30,
    stale_days: int = 30,
    live_things: frozenset[str] | None = None,
    now: dt.datetime | None = None,
    live: LiveState | None = None,
    onboarding_max_minutes: int = 15,
) -> AuditSnapshot:
    """Read everything the checks need. Live sessions come from `live`, else from a running server's file."""
    settings = platform.settings
    accounts = settings.accounts
    if live is None:
        live = read_live_state(settings.data_dir / LIVE_STATE_FILE)
    if live is not None and live_things is None:
        live_things = live.things
    with platform.db.read() as session:
        world = load_policy_world(session)
        # Columns, not ORM objects (which would also load every PEM and attribute): 100k things in seconds.
        certificates = tuple(
            CertificateFacts(
                thing=name,
                serial=serial,
                status=status,
                not_after=not_after,
                key_type=key_type,
                public_key_sha256=key_hash,
            )
            for serial, status, not_after, key_type, key_hash, name in session.connection().execute(
                select(
                    Certificate.serial,
                    Certificate.status,
                    Certificate.not_after,
                    Certificate.key_type,
                    Certificate.public_key_sha256,
                    Thing.name,
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
        users = tuple(
            UserFacts(email=email, is_admin=is_admin, has_2fa=totp_enabled_at is not None)
            for email, is_admin, totp_enabled_at in session.connection().execute(
                select(User.email, User.is_admin, User.totp_enabled_at).where(User.disabled.is_(False))
            )
        )
        reports = tuple(
            ReportFacts(
                thing=r.thing,
                received_at=r.received_at,
                model=r.model,
                reported_model=r.report.model,
                firmware_version=r.report.firmware_version,
                tcp_ports=r.report.tcp_ports,
                udp_ports=r.report.udp_ports,
                onboarding_state=r.report.onboarding_state,
                onboarding_since=r.report.onboarding_since,
            )
            for r in latest_reports(session)
        )
        models = {
            m.name: ModelFacts(m.name, frozenset(m.allowed_tcp_ports), frozenset(m.allowed_udp_ports))
            for m in list_models(session)
        }
        advisories = tuple(
            AdvisoryFacts(a.advisory_id, a.model, a.affected, _severity(a.severity), a.summary)
            for a in list_advisories(session)
        )
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
        reports=reports,
        models=models,
        advisories=advisories,
        sessions=live.sessions if live is not None else None,
        takeovers=live.takeovers if live is not None else (),
        onboarding_max_minutes=onboarding_max_minutes,
        users=users,
        account_policy=AccountPolicyFacts(
            password_min_length=accounts.password_min_length,
            password_max_length=accounts.password_max_length,
            password_min_strength=accounts.password_min_strength,
            require_2fa_admins=accounts.require_2fa_admins,
            require_2fa_everyone=accounts.require_2fa_everyone,
            lockout_failures=accounts.lockout_failures,
        ),
        config_passwords=_config_passwords(settings.database.url),
        audit_interval_minutes=settings.audit.interval_minutes,
    )


def _config_passwords(database_url: str) -> dict[str, str]:
    """Passwords written into the settings themselves (today only a database URL can carry one)."""
    if not database_url:
        return {}
    try:
        password = make_url(database_url).password
    except ArgumentError:
        return {}
    return {"database.url": str(password)} if password else {}


def _severity(value: str) -> Severity:
    for severity in ("critical", "high", "medium", "low"):
        if value == severity:
            return severity
    return "high"  # the database's check constraint allows nothing else
