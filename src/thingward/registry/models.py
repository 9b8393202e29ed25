"""SQLAlchemy models of the registry. The schema itself is created by the Alembic migrations."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry: use timezone-aware UTC")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

    attributes: Mapped[list[ThingAttribute]] = relationship(
        back_populates="thing", cascade="all, delete-orphan", lazy="selectin"
    )
    groups: Mapped[list[ThingGroup]] = relationship(secondary="group_members", back_populates="things")


class ThingAttribute(Base):
    __tablename__ = "thing_attributes"
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), nullable=False)
    thing: Mapped[Thing] = relationship(back_populates="attributes")


class ThingGroup(Base):
    __tablename__ = "thing_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("thing_groups.id"), nullable=True)
    description: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    parent: Mapped[ThingGroup | None] = relationship(remote_side=[id])
    things: Mapped[list[Thing]] = relationship(secondary="group_members", back_populates="groups")


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(ForeignKey("thing_groups.id", ondelete="CASCADE"), primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), primary_key=True)


class Certificate(Base):
    __tablename__ = "certificates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)  # hex
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id"), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_type: Mapped[str] = mapped_column(String(32), nullable=False)
    # SHA-256 of the SubjectPublicKeyInfo: one key must not serve two things (migration 0007).
    public_key_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    pem: Mapped[str] = mapped_column(Text, nullable=False)
    thing: Mapped[Thing] = relationship()

    __table_args__ = (CheckConstraint("status in ('active', 'revoked')", name="ck_certificates_status"),)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    thing: Mapped[Thing] = relationship()


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    document: Mapped[str] = mapped_column(Text, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)


class PolicyAttachment(Base):
    __tablename__ = "policy_attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"), nullable=False)
    group_id: Mapped[int | None] = mapped_column(ForeignKey("thing_groups.id", ondelete="CASCADE"), nullable=True)
    thing_id: Mapped[int | None] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=True)
    policy: Mapped[Policy] = relationship()
    group: Mapped[ThingGroup | None] = relationship()
    thing: Mapped[Thing | None] = relationship()

    __table_args__ = (
        CheckConstraint("(group_id IS NULL) <> (thing_id IS NULL)", name="ck_policy_attachments_one_target"),
        UniqueConstraint("policy_id", "group_id", "thing_id", name="uq_policy_attachment"),
    )


class AuditEvent(Base):
    """An append-only, hash-chained record of every change: who, when, what, from where."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    actor: Mapped[str] = mapped_column(String(128), nullable=False)
    source: Mapped[str] = mapped_column(String(128), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(256), nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False)
    topic: Mapped[str] = mapped_column(String(1024), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # telemetry | event
    event_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (Index("ix_messages_thing_id_id", "thing_id", "id"),)


class DeviceModel(Base):
    """A product model's profile: the ports its devices may listen on (anything else is a finding)."""

    __tablename__ = "device_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    allowed_tcp_ports: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON list of ints
    allowed_udp_ports: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)


class FirmwareAdvisory(Base):
    """A published weakness of a model's firmware; `affected` is a version specifier such as "<1.4.2"."""

    __tablename__ = "firmware_advisories"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    advisory_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    model: Mapped[str] = mapped_column(String(64), nullable=False)
    affected: Mapped[str] = mapped_column(String(128), nullable=False)
    severity: Mapped[str] = mapped_column(String(16), nullable=False)
    summary: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint("severity in ('critical', 'high', 'medium', 'low')", name="ck_firmware_advisories_severity"),
    )


class DeviceReport(Base):
    """The latest state a device reported about itself on things/NAME/state (one row per thing)."""

    __tablename__ = "device_reports"
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The first model the device ever reported (trust on first use): a later claim cannot change its profile.
    pinned_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    firmware_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tcp_ports: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON list of ints
    udp_ports: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    onboarding_state: Mapped[str] = mapped_column(String(16), nullable=False, default="unknown")
    onboarding_since: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    thing: Mapped[Thing] = relationship()


class AuditSuppression(Base):
    """An accepted audit finding (one check, on one resource or on all), with a reason and an end date."""

    __tablename__ = "audit_suppressions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    check_id: Mapped[str] = mapped_column(String(64), nullable=False)
    resource: Mapped[str | None] = mapped_column(String(256), nullable=True)  # None: the whole check
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)


class AuditRun(Base):
    """One stored audit: when, what started it, the summary and the findings' ids (for 'new since last')."""

    __tablename__ = "audit_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    triggered_by: Mapped[str] = mapped_column(String(128), nullable=False)
    summary: Mapped[str] = mapped_column(Text, nullable=False)  # JSON
    findings: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list of {id, check, resource, ...}


class AuditMitigation(Base):
    """A mitigation applied to a thing for a finding, with what undoing it must restore."""

    __tablename__ = "audit_mitigations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finding_id: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    thing: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    previous_groups: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON
    previous_policies: Mapped[str] = mapped_column(Text, nullable=False, default="[]")  # JSON, thing-attached
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(128), nullable=False)
    undone_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


# --- accounts: people, their sessions and second factors, and what they may see (migration 0005) ---


class User(Base):
    """A person who signs in to the app. Secrets are kept only as hashes, or sealed (the TOTP key)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True, nullable=False)
    display_name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    must_change_password: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    password_changed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    # The TOTP key sealed with AES-GCM (see accounts/sealing.py); pending until confirmed by a first code.
    totp_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_pending_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_enabled_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The newest 30 s step whose code was accepted: that code and every older one are refused from then on.
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    code_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class KnownBrowser(Base):
    """A browser that completed a verified sign-in; it carries a random token (stored hashed) in a cookie."""

    __tablename__ = "known_browsers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    user_agent: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    first_ip: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    first_seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)


class UserSession(Base):
    __tablename__ = "user_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    ip: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    user_agent: Mapped[str] = mapped_column(String(512), nullable=False, default="")


class OneTimeToken(Base):
    """Single-use secrets mailed or handed to a person: password reset links, sign-in codes, invitations."""

    __tablename__ = "one_time_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    email: Mapped[str] = mapped_column(String(254), nullable=False, default="")
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    __table_args__ = (CheckConstraint("purpose in ('reset', 'signin', 'invite')", name="ck_one_time_tokens_purpose"),)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scopes: Mapped[str] = mapped_column(String(512), nullable=False)  # space-separated
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class LoginThrottle(Base):
    """Failed sign-ins per key ("account:<digest of the email>" or "ip:<address>"), for delays and lockout."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    next_allowed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class UserGroup(Base):
    """People who share devices: a household, a support team. Things are shared with groups, never one user."""

    __tablename__ = "user_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    description: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)


class UserGroupMember(Base):
    __tablename__ = "user_group_members"
    group_id: Mapped[int] = mapped_column(ForeignKey("user_groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class ThingShare(Base):
    __tablename__ = "thing_shares"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False, index=True)
    user_group_id: Mapped[int] = mapped_column(ForeignKey("user_groups.id", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)

    __table_args__ = (
        CheckConstraint("role in ('owner', 'viewer')", name="ck_thing_shares_role"),
        UniqueConstraint("thing_id", "user_group_id", name="uq_thing_share"),
    )


class FirmwareImage(Base):
    """A firmware image published to the OTA repository; its signed target is `target_path` there."""

    __tablename__ = "firmware_images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    min_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_path: Mapped[str] = mapped_column(String(256), unique=True, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    length: Mapped[int] = mapped_column(BigInteger, nullable=False)
    published_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    published_by: Mapped[str] = mapped_column(String(128), nullable=False)

    __table_args__ = (UniqueConstraint("model", "version", name="uq_firmware_images_model_version"),)


# --- OTA rollout campaigns: a firmware version sent to a set of devices in waves (migration 0009) ---


class RolloutCampaign(Base):
    """A campaign: one firmware version for a set of devices, released in waves under a rate and abort rules."""

    __tablename__ = "rollout_campaigns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[str] = mapped_column(String(64), nullable=False)
    target_path: Mapped[str] = mapped_column(String(256), nullable=False)
    group_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    advisory_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # running|paused|completed|aborted|canceled
    waves: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list of cumulative percentages
    current_wave: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_per_minute: Mapped[int] = mapped_column(Integer, nullable=False)
    abort_failure_percent: Mapped[int] = mapped_column(Integer, nullable=False)
    abort_min_finished: Mapped[int] = mapped_column(Integer, nullable=False)
    timeout_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    retries: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(String(128), nullable=False)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(
            "state in ('running', 'paused', 'completed', 'aborted', 'canceled')", name="ck_rollout_campaigns_state"
        ),
        Index("ix_rollout_campaigns_state", "state"),
    )


class RolloutJob(Base):
    """One device's job in a campaign; `released_at` is when its job document was last sent to it."""

    __tablename__ = "rollout_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("rollout_campaigns.id", ondelete="CASCADE"), nullable=False)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False)
    wave: Mapped[int] = mapped_column(Integer, nullable=False)
    # queued | in_progress | succeeded | failed | timed_out | rejected | canceled
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    substate: Mapped[str | None] = mapped_column(String(16), nullable=True)  # downloading ... rebooting
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    from_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reported_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    released_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The device must be told of a change (a new or repeated job document, a cancellation, a clear): the
    # server's scheduler, the only publisher, sends it and clears the flag. A CLI in another process only
    # sets it.
    notify: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    __table_args__ = (
        UniqueConstraint("campaign_id", "thing_id", name="uq_rollout_jobs_campaign_thing"),
        Index("ix_rollout_jobs_campaign_state", "campaign_id", "state"),
        Index("ix_rollout_jobs_thing", "thing_id"),
        Index("ix_rollout_jobs_notify", "notify"),
    )


# --- onboarding: claim tokens that bind a new device to the person setting it up (migration 0008) ---


class ClaimToken(Base):
    """A single-use token the app passes to a device inside the provisioning session; the device
    enrolls with it and becomes the person's. Stored as a SHA-256 digest, valid for minutes."""

    __tablename__ = "claim_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the label's id, when the app knew it
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    thing_name: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the thing it enrolled


# --- camera journey: uploads, snapshots, motion analyses, notifications (migration 0010) ---


class CameraUploadGrant(Base):
    """A short-lived, single-use upload URL issued to one camera: its secret is stored as a SHA-256 only."""

    __tablename__ = "camera_upload_grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False, index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    content_type: Mapped[str] = mapped_column(String(32), nullable=False)
    max_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class CameraSnapshot(Base):
    """An image a camera uploaded; the file is in the data dir (`path`, relative), checked and bounded."""

    __tablename__ = "camera_snapshots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False)
    upload_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    content_type: Mapped[str] = mapped_column(String(32), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    size_bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    path: Mapped[str] = mapped_column(String(256), nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (Index("ix_camera_snapshots_thing_id_id", "thing_id", "id"),)


class MotionEvent(Base):
    """The analysis of one snapshot against the camera's previous one: how much changed, and where."""

    __tablename__ = "motion_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False, index=True)
    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("camera_snapshots.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    previous_snapshot_id: Mapped[int | None] = mapped_column(
        ForeignKey("camera_snapshots.id", ondelete="SET NULL"), nullable=True
    )
    motion: Mapped[bool] = mapped_column(Boolean, nullable=False)
    changed_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The changed region in the snapshot's pixels (x, y, width, height); None when nothing changed.
    region_x: Mapped[int | None] = mapped_column(Integer, nullable=True)
    region_y: Mapped[int | None] = mapped_column(Integer, nullable=True)
    region_width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    region_height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    annotated_path: Mapped[str | None] = mapped_column(String(256), nullable=True)
    analysed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)


class NotificationPreference(Base):
    """A person's choice for one thing and event type; without a row, events of things they see notify them."""

    __tablename__ = "notification_preferences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False)
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)

    __table_args__ = (UniqueConstraint("user_id", "thing_id", "event_type", name="uq_notification_preferences"),)


class Notification(Base):
    """What one person was told: a motion event on a thing they may see."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    thing_id: Mapped[int] = mapped_column(ForeignKey("things.id", ondelete="CASCADE"), nullable=False)
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)
    motion_event_id: Mapped[int | None] = mapped_column(
        ForeignKey("motion_events.id", ondelete="CASCADE"), nullable=True
    )
    message: Mapped[str] = mapped_column(String(512), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (Index("ix_notifications_user_id_id", "user_id", "id"),)
