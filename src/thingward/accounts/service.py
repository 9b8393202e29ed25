"""The accounts service every door calls: users, passwords, 2FA, sign-in, sessions, API tokens.

Each method is one transaction and records what it did in the audit log (never a password, code or
token). Time comes from an injected clock, so tests move it instead of sleeping. Secrets handed out
(session ids, browser tokens, reset links, API tokens, recovery codes) are random, shown once, and
stored only as SHA-256 digests; passwords as argon2id hashes; the TOTP key sealed (see `sealing`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Result, delete, or_, select, update
from sqlalchemy.orm import Session

from thingward.accounts import sealing, throttle, totp
from thingward.accounts.errors import (
    AuthenticationError,
    InvalidTokenError,
    PermissionDeniedError,
    SignUpClosedError,
    WeakPasswordError,
)
from thingward.accounts.mail import Mail, Mailer, MailError, mailer_from_settings
from thingward.accounts.passwords import (
    PasswordCheck,
    PasswordHasher,
    PasswordPolicy,
    check_password,
    context_words,
    generate_password,
    password_rules,
)
from thingward.accounts.sharing import groups_of
from thingward.config import AccountsSettings
from thingward.errors import ConfigError, ConflictError, InvalidInputError, NotFoundError, ThingwardError
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.db import Database
from thingward.registry.models import (
    ApiToken,
    KnownBrowser,
    OneTimeToken,
    RecoveryCode,
    User,
    UserSession,
)

if TYPE_CHECKING:
    from thingward.platform import Platform

logger = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
SIGNIN_CODE_DIGITS = 8
MAX_CODE_ATTEMPTS = 5
# A session's last-seen time is written at most this often (one write per request is wasted work).
_TOUCH_EVERY = dt.timedelta(seconds=30)
_CSRF_LABEL = b"thingward accounts: CSRF tokens v1"
API_TOKEN_PREFIX = "twk_"  # noqa: S105 - a prefix that marks our tokens in logs and scanners
SCOPES: dict[str, str] = {
    "things:read": "list and read the things shared with you, and their messages",
    "things:control": "send commands to things you own",
    "account:read": "read your own account",
    "admin": "everything an admin may do (only for admins)",
}


def _changed(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched (the conditional writes that make single use race-free)."""
    return int(getattr(result, "rowcount", 0))


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(secret: str) -> str:
    # Every secret digested here has at least 256 bits (or is short-lived and attempt-limited): no salt needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_email(email: str) -> str:
    cleaned = email.strip().lower()
    if len(cleaned) > 254 or _EMAIL.fullmatch(cleaned) is None:
        raise InvalidInputError(f"not an email address: {email!r} (expected name@example.com)")
    return cleaned


def user_by_email(session: Session, email: str) -> User:
    """The user with this email, in the caller's session (for doors that also work on sharing)."""
    user = session.execute(select(User).where(User.email == normalize_email(email))).scalar_one_or_none()
    if user is None:
        raise NotFoundError(f"no user with email {email!r}: see 'thingward user list'")
    return user


class LoginOutcome(StrEnum):
    OK = "ok"
    NEED_SECOND_FACTOR = "need_second_factor"  # the password was right; ask for the TOTP or a recovery code
    NEED_EMAIL_CODE = "need_email_code"  # a new browser and no 2FA: a code went to the account's email
    REFUSED = "refused"
    LOCKED = "locked"


REFUSED_MESSAGE = "wrong email or password"
LOCKED_MESSAGE = "too many failed sign-ins: this account is locked for a while; resetting the password unlocks it"


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    message: str = ""
    session_token: str | None = None
    # Set when this sign-in verified a new browser: the door stores it in a long-lived cookie.
    browser_token: str | None = None
    user_id: int | None = None
    retry_after: float = 0.0
    # What the person must do before anything else: "change_password", "enroll_2fa".
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserInfo:
    id: int
    email: str
    display_name: str
    is_admin: bool
    disabled: bool
    must_change_password: bool
    totp_enabled: bool
    created_at: dt.datetime
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.display_name,
            "admin": self.is_admin,
            "disabled": self.disabled,
            "must_change_password": self.must_change_password,
            "totp_enabled": self.totp_enabled,
            "created_at": self.created_at.isoformat(),
            "groups": list(self.groups),
        }


@dataclass(frozen=True)
class SessionInfo:
    id: int
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    ip: str
    user_agent: str
    current: bool = False


@dataclass(frozen=True)
class AuthenticatedSession:
    user: UserInfo
    session_id: int
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    uri: str
    qr_svg: str


@dataclass(frozen=True)
class ApiTokenInfo:
    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    expires_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked: bool


@dataclass(frozen=True)
class NewApiToken:
    token: str
    info: ApiTokenInfo


P = ParamSpec("P")
R = TypeVar("R")


def _records_refusals(method: Callable[Concatenate[Accounts, P], R]) -> Callable[Concatenate[Accounts, P], R]:
    @functools.wraps(method)
    def wrapper(self: Accounts, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except ThingwardError as e:
            refusal = getattr(e, "refusal", None)
            if refusal is not None:
                with self.db.session() as session:
                    record_event(session, *refusal)
            raise

    return wrapper


@dataclass
class _Attempt:
    """A guarded check of the password or a code outside sign-in; set `verified` once it passed."""

    verified: bool = False


@dataclass
class _Notices:
    """Mails decided inside a transaction, sent only after it committed."""

    mails: list[Mail] = field(default_factory=list)


class Accounts:
    """The accounts of one data dir."""

    def __init__(self, db: Database, settings: AccountsSettings, mailer: Mailer, clock: Clock = utc_now) -> None:
        if settings.signup not in {"invite", "open"}:
            raise ConfigError(f"[accounts] signup must be 'invite' or 'open', not {settings.signup!r}")
        for name in ("session_idle_seconds", "session_lifetime_seconds", "lockout_failures", "lockout_seconds"):
            if getattr(settings, name) <= 0:
                raise ConfigError(f"[accounts] {name} must be positive")
        self.db = db
        self.settings = settings
        self.mailer = mailer
        self.clock = clock
        self.policy = PasswordPolicy.from_settings(settings)
        self.hasher = PasswordHasher.from_settings(settings)

    @classmethod
    def for_platform(cls, platform: Platform, mailer: Mailer | None = None, clock: Clock = utc_now) -> Accounts:
        return cls(
            platform.db, platform.settings.accounts, mailer or mailer_from_settings(platform.settings.smtp), clock
        )

    # --- passwords ---

    def password_rules(self) -> list[str]:
        return password_rules(self.policy)

    def password_feedback(self, password: str, email: str = "", name: str = "") -> PasswordCheck:
        """The verdict the page shows live while a password is typed; the same one the server enforces."""
        return check_password(password, self.policy, context_words(email, name, self.settings.product_name))

    def _require_strong(self, password: str, email: str, name: str) -> None:
        verdict = self.password_feedback(password, email, name)
        if not verdict.ok:
            raise WeakPasswordError(verdict.problems)

    # --- users ---

    def _user(self, session: Session, email: str) -> User:
        return user_by_email(session, email)

    def _user_by_id(self, session: Session, user_id: int) -> User:
        user = session.get(User, user_id)
        if user is None:
            raise NotFoundError(f"no user with id {user_id}")
        return user

    def _info(self, session: Session, user: User) -> UserInfo:
        return UserInfo(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            is_admin=user.is_admin,
            disabled=user.disabled,
            must_change_password=user.must_change_password,
            totp_enabled=user.totp_enabled_at is not None,
            created_at=user.created_at,
            groups=tuple(groups_of(session, user)),
        )

    def requirements(self, user: User | UserInfo) -> tuple[str, ...]:
        """What must happen before this person may use the app: a new password, 2FA set up."""
        needs = []
        if user.must_change_password:
            needs.append("change_password")
        totp_on = user.totp_enabled if isinstance(user, UserInfo) else user.totp_enabled_at is not None
        if not totp_on and (self.settings.require_2fa_everyone or (user.is_admin and self.settings.require_2fa_admins)):
            needs.append("enroll_2fa")
        return tuple(needs)

    def create_user(
        self,
        actor: Actor,
        email: str,
        password: str | None = None,
        *,
        name: str = "",
        admin: bool = False,
    ) -> tuple[UserInfo, str | None]:
        """Create an account. Without a password one is generated, returned once, and must be changed at
        the first sign-in. Returns the user and the generated password (None when one was given)."""
        address = normalize_email(email)
        generated = None
        if password is None:
            generated = password = generate_password()
        else:
            self._require_strong(password, address, name)
        now = self.clock()
        with self.db.session() as session:
            if session.execute(select(User.id).where(User.email == address)).first():
                raise ConflictError(f"a user with email {address} exists already")
            user = User(
                email=address,
                display_name=name.strip()[:128],
                password_hash=self.hasher.hash(password),
                is_admin=admin,
                disabled=False,
                must_change_password=generated is not None,
                created_at=now,
                password_changed_at=now,
            )
            session.add(user)
            session.flush()
            record_event(session, actor, "user.add", f"user:{address}", {"admin": admin, "generated": bool(generated)})
            return self._info(session, user), generated

    def get_user(self, email: str) -> UserInfo:
        with self.db.read() as session:
            return self._info(session, self._user(session, email))

    def get_user_by_id(self, user_id: int) -> UserInfo:
        with self.db.read() as session:
            return self._info(session, self._user_by_id(session, user_id))

    def list_users(self) -> list[UserInfo]:
        with self.db.read() as session:
            return [self._info(session, u) for u in session.execute(select(User).order_by(User.email)).scalars()]

    def set_disabled(self, actor: Actor, email: str, disabled: bool) -> UserInfo:
        """Disable (or enable) an account; disabling ends its sessions and voids its API tokens' use."""
        with self.db.session() as session:
            user = self._user(session, email)
            user.disabled = disabled
            ended = self._end_sessions(session, user.id) if disabled else 0
            record_event(
                session,
                actor,
                "user.disable" if disabled else "user.enable",
                f"user:{user.email}",
                {"sessions_ended": ended},
            )
            return self._info(session, user)

    def set_admin(self, actor: Actor, email: str, admin: bool) -> UserInfo:
        """A change of privilege ends the person's sessions: the next sign-in gets a fresh one."""
        with self.db.session() as session:
            user = self._user(session, email)
            user.is_admin = admin
            ended = self._end_sessions(session, user.id)
            record_event(
                session, actor, "user.set_admin", f"user:{user.email}", {"admin": admin, "sessions_ended": ended}
            )
            return self._info(session, user)

    def admin_reset_password(self, actor: Actor, email: str) -> str:
        """An operator's reset for someone who cannot use the mailed link: a new random password, returned
        once, to be changed at the next sign-in; every session ends and a lockout is lifted."""
        password = generate_password()
        notices = _Notices()
        with self.db.session() as session:
            user = self._user(session, email)
            ended = self._set_password(session, user, password, None)
            user.must_change_password = True
            throttle.unlock(session, throttle.account_key(user.email))
            revoked = self._revoke_api_tokens(session, user)
            record_event(
                session,
                actor,
                "user.admin_password_reset",
                f"user:{user.email}",
                {"sessions_ended": ended, "api_tokens_revoked": revoked},
            )
            notices.mails.append(
                self._notice(
                    user.email,
                    "Your password was reset by an administrator",
                    "An administrator set a new password for your account; "
                    "they will give it to you. Your sessions were ended.",
                )
            )
        self._flush(notices)
        return password

    def admin_reset_totp(self, actor: Actor, email: str) -> None:
        """An operator's way out for someone who lost both the phone and the recovery codes: 2FA off,
        every session ended, the person told. They enrol again at the next sign-in (if 2FA is required)."""
        notices = _Notices()
        with self.db.session() as session:
            user = self._user(session, email)
            if user.totp_enabled_at is None and user.totp_pending_sealed is None:
                raise InvalidInputError(f"{user.email} has no 2FA to reset")
            user.totp_secret_sealed = None
            user.totp_pending_sealed = None
            user.totp_enabled_at = None
            user.totp_last_step = None
            session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
            ended = self._end_sessions(session, user.id)
            record_event(session, actor, "user.admin_2fa_reset", f"user:{user.email}", {"sessions_ended": ended})
            notices.mails.append(
                self._notice(
                    user.email,
                    "Two-factor authentication was reset by an administrator",
                    "An administrator turned off two-factor authentication for your "
                    "account. Set it up again at your next sign-in.",
                )
            )
        self._flush(notices)

    def unlock(self, actor: Actor, email: str) -> bool:
        with self.db.session() as session:
            user = self._user(session, email)
            unlocked = throttle.unlock(session, throttle.account_key(user.email))
            record_event(session, actor, "user.unlock", f"user:{user.email}", {"was_locked": unlocked})
            return unlocked

    # --- sign-up and invitations ---

    def invite(self, actor: Actor, email: str) -> str:
        """Create an invitation for one address, mail its link, and return the token (shown once)."""
        address = normalize_email(email)
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.session() as session:
            session.add(
                OneTimeToken(
                    purpose="invite",
                    email=address,
                    token_sha256=_digest(token),
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=self.settings.invite_ttl_seconds),
                    attempts=0,
                )
            )
            record_event(session, actor, "user.invite", f"user:{address}")
        self._send(
            Mail(
                to=address,
                subject=f"You are invited to {self.settings.product_name}",
                body=f"Sign up here (the link works once, for {self.settings.invite_ttl_seconds // 3600} hours):\n"
                f"{self.settings.public_url}/signup?invite={token}\n",
            ),
            required=False,
        )
        return token

    def sign_up(
        self, email: str, password: str, *, name: str = "", invite_token: str | None = None, ip: str = ""
    ) -> UserInfo:
        """Open sign-up, or sign-up with an invitation for this very address (by config)."""
        address = normalize_email(email)
        self._require_strong(password, address, name)
        now = self.clock()
        actor = Actor(address, f"ip:{ip}")
        with self.db.session() as session:
            if self.settings.signup == "invite":
                claimed = (
                    invite_token is not None
                    and _changed(
                        session.execute(
                            update(OneTimeToken)
                            .where(
                                OneTimeToken.purpose == "invite",
                                OneTimeToken.token_sha256 == _digest(invite_token),
                                OneTimeToken.email == address,
                                OneTimeToken.used_at.is_(None),
                                OneTimeToken.expires_at > now,
                            )
                            .values(used_at=now)
                        )
                    )
                    == 1
                )
                if not claimed:
                    raise SignUpClosedError("sign-up needs a valid invitation for this email address")
            if session.execute(select(User.id).where(User.email == address)).first():
                raise ConflictError(f"a user with email {address} exists already: sign in, or reset the password")
            user = User(
                email=address,
                display_name=name.strip()[:128],
                password_hash=self.hasher.hash(password),
                is_admin=False,
                disabled=False,
                must_change_password=False,
                created_at=now,
                password_changed_at=now,
            )
            session.add(user)
            session.flush()
            record_event(
                session, actor, "user.signup", f"user:{address}", {"invited": self.settings.signup == "invite"}
            )
            return self._info(session, user)

    # --- password changes and resets ---

    @_records_refusals
    def change_password(
        self, user_id: int, current_password: str, new_password: str, keep_session_token: str | None = None
    ) -> int:
        """Change the password; every other session of the account ends. Returns how many ended."""
        notices = _Notices()
        with self._guarded(user_id, "user.password_change") as attempt, self.db.session() as session:
            user = self._user_by_id(session, user_id)
            if not self.hasher.verify(user.password_hash, current_password):
                raise _refused(
                    AuthenticationError("the current password is wrong"),
                    Actor(user.email, "app"),
                    "user.password_change_refused",
                    f"user:{user.email}",
                )
            attempt.verified = True
            if self.hasher.verify(user.password_hash, new_password):
                raise InvalidInputError("the new password is the same as the current one")
            self._require_strong(new_password, user.email, user.display_name)
            ended = self._set_password(session, user, new_password, keep_session_token)
            record_event(
                session,
                Actor(user.email, "app"),
                "user.password_change",
                f"user:{user.email}",
                {"sessions_ended": ended},
            )
            notices.mails.append(
                self._notice(
                    user.email,
                    "Your password was changed",
                    "Your password was changed and your other sessions were ended.",
                )
            )
        self._flush(notices)
        return ended

    def _set_password(self, session: Session, user: User, password: str, keep_session_token: str | None) -> int:
        user.password_hash = self.hasher.hash(password)
        user.password_changed_at = self.clock()
        user.must_change_password = False
        self._void_mailed_tokens(session, user)
        return self._end_sessions(session, user.id, keep=keep_session_token)

    def _revoke_api_tokens(self, session: Session, user: User) -> int:
        """A reset is what someone does who fears the account was taken: whatever API tokens were made with
        it (by a stolen session, too) stop working with the sessions. Returns how many were live."""
        now = self.clock()
        return _changed(
            session.execute(
                update(ApiToken)
                .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None), ApiToken.expires_at > now)
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
        )

    def _void_mailed_tokens(self, session: Session, user: User) -> None:
        """Reset links and sign-in codes mailed before a new password or a new email address are void: an
        older link (in a mailbox read by someone else, or one since given up) must not set it again."""
        session.execute(
            update(OneTimeToken)
            .where(
                OneTimeToken.user_id == user.id,
                OneTimeToken.purpose.in_(("reset", "signin")),
                OneTimeToken.used_at.is_(None),
            )
            .values(used_at=self.clock())
            .execution_options(synchronize_session=False)
        )

    def request_password_reset(self, email: str, ip: str = "") -> None:
        """Mail a reset link if the account exists. The request does the same work either way (address,
        throttle, one audit event); looking the account up, making the token and mailing it happen after,
        on the mailer's worker when the mailer has one (`QueuedMailer.run_later`), so neither the answer
        nor its timing tells whether the email is known."""
        now = self.clock()
        try:
            address = normalize_email(email)
        except InvalidInputError:
            return
        anonymous = Actor("anonymous", f"ip:{ip}")
        with self.db.session() as session:
            throttle.hold(session, [throttle.address_key(ip)], now)
            verdict = throttle.peek(session, throttle.address_key(ip), now)
            # Reset requests cost an address a little, so mailing many accounts from one place slows down.
            throttle.charge(session, throttle.address_key(ip), throttle.ADDRESS_RULE, now)
            if not verdict.allowed:
                record_event(session, anonymous, "user.reset_throttled", "password_reset", {"email": address})
                return
            record_event(session, anonymous, "user.reset_request", "password_reset", {"email": address})
        run_later: Callable[[Callable[[], None]], None] | None = getattr(self.mailer, "run_later", None)
        if run_later is not None:
            run_later(lambda: self._mail_reset_link(address, ip, now))
        else:
            self._mail_reset_link(address, ip, now)

    def _mail_reset_link(self, address: str, ip: str, now: dt.datetime) -> None:
        token = secrets.token_urlsafe(32)
        with self.db.session() as session:
            user = session.execute(select(User).where(User.email == address)).scalar_one_or_none()
            if user is None or user.disabled:
                return
            session.add(
                OneTimeToken(
                    purpose="reset",
                    user_id=user.id,
                    email=user.email,
                    token_sha256=_digest(token),
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=self.settings.reset_token_ttl_seconds),
                    attempts=0,
                )
            )
            record_event(session, Actor("anonymous", f"ip:{ip}"), "user.reset_link_mailed", f"user:{user.email}")
        minutes = self.settings.reset_token_ttl_seconds // 60
        self._send(
            Mail(
                to=address,
                subject=f"Reset your {self.settings.product_name} password",
                body=f"Someone (from {ip or 'an unknown address'}) asked to reset your password.\n"
                f"If it was you, open this link within {minutes} minutes; it works once:\n"
                f"{self.settings.public_url}/reset?token={token}\n\n"
                "If it was not you, ignore this mail: your password stays as it is.\n",
            ),
            required=False,
        )

    @_records_refusals
    def reset_password(self, token: str, new_password: str, ip: str = "") -> UserInfo:
        """Set a new password with a reset token: single use, expiring; ends every session, lifts a lockout."""
        now = self.clock()
        with self.db.session() as session:
            row = session.execute(
                select(OneTimeToken).where(OneTimeToken.purpose == "reset", OneTimeToken.token_sha256 == _digest(token))
            ).scalar_one_or_none()
            if row is None or row.used_at is not None or row.expires_at <= now or row.user_id is None:
                reason = "unknown" if row is None else ("used" if row.used_at else "expired")
                raise _refused(
                    InvalidTokenError("this reset link is not valid (used, expired or mistyped): ask for a new one"),
                    Actor("anonymous", f"ip:{ip}"),
                    "user.reset_refused",
                    "password_reset",
                    {"reason": reason},
                )
            user = self._user_by_id(session, row.user_id)
            self._require_strong(new_password, user.email, user.display_name)
            claimed = _changed(
                session.execute(
                    update(OneTimeToken)
                    .where(OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None))
                    .values(used_at=now)
                )
            )
            if claimed != 1:
                raise InvalidTokenError("this reset link is not valid (used, expired or mistyped): ask for a new one")
            ended = self._set_password(session, user, new_password, None)
            throttle.unlock(session, throttle.account_key(user.email))
            revoked = self._revoke_api_tokens(session, user)
            record_event(
                session,
                Actor(user.email, f"ip:{ip}"),
                "user.password_reset",
                f"user:{user.email}",
                {"sessions_ended": ended, "api_tokens_revoked": revoked},
            )
            return self._info(session, user)

    @_records_refusals
    def change_email(self, user_id: int, password: str, code: str | None, new_email: str) -> UserInfo:
        """Change the sign-in email: needs the password and, with 2FA on, a current code. Both addresses
        are told."""
        address = normalize_email(new_email)
        now = self.clock()
        notices = _Notices()
        with self._guarded(user_id, "user.email_change") as attempt, self.db.session() as session:
            user = self._user_by_id(session, user_id)
            self._confirm_identity(session, user, password, code, now, "user.email_change_refused")
            attempt.verified = True
            if session.execute(select(User.id).where(User.email == address)).first():
                raise ConflictError(f"{address} is in use by another account")
            old = user.email
            user.email = address
            self._void_mailed_tokens(session, user)
            throttle.unlock(session, throttle.account_key(old))
            record_event(session, Actor(old, "app"), "user.email_change", f"user:{address}", {"old": old})
            body = f"The sign-in email of your {self.settings.product_name} account changed from {old} to {address}."
            notices.mails += [
                self._notice(old, "Your sign-in email was changed", body),
                self._notice(address, "Your sign-in email was changed", body),
            ]
            info = self._info(session, user)
        self._flush(notices)
        return info

    @contextlib.contextmanager
    def _guarded(self, user_id: int, action: str) -> Iterator[_Attempt]:
        """Checks of the password or a code outside sign-in (changing the password or the email, 2FA
        settings) spend the account's sign-in attempts: someone holding a stolen session must not guess
        the password or the TOTP code freely. Charged up front in a transaction of its own (so a refusal
        cannot roll it back), locking the account when the attempts run out, exactly as sign-in does;
        taken back, lock and all, when the check passed."""
        now = self.clock()
        with self.db.session() as session:
            user = self._user_by_id(session, user_id)
            key = throttle.account_key(user.email)
            throttle.hold(session, [key], now)
            verdict = throttle.peek(session, key, now)
            if verdict.allowed:
                if throttle.charge(session, key, throttle.ACCOUNT_RULE, now) >= self.settings.lockout_failures:
                    throttle.lock(session, key, now + dt.timedelta(seconds=self.settings.lockout_seconds))
            else:
                record_event(
                    session,
                    Actor(user.email, "app"),
                    f"{action}_throttled",
                    f"user:{user.email}",
                    {"locked": verdict.locked},
                )
        if not verdict.allowed:
            raise AuthenticationError(
                LOCKED_MESSAGE
                if verdict.locked
                else f"too many attempts: try again in {max(1, round(verdict.retry_after))} s"
            )
        attempt = _Attempt()
        try:
            yield attempt
        finally:
            if attempt.verified:
                with self.db.session() as session:
                    throttle.refund(session, key, self.clock(), forget=True)

    def _confirm_identity(
        self, session: Session, user: User, password: str, code: str | None, now: dt.datetime, refused_action: str
    ) -> None:
        """Password, and the current TOTP code when 2FA is on; both are checked before either is reported."""
        password_ok = self.hasher.verify(user.password_hash, password)
        code_ok = True
        if user.totp_enabled_at is not None:
            code_ok = password_ok and code is not None and self._accept_totp(session, user, code, now)
        if not (password_ok and code_ok):
            raise _refused(
                AuthenticationError("the password or the code is wrong"),
                Actor(user.email, "app"),
                refused_action,
                f"user:{user.email}",
            )

    # --- TOTP ---

    def begin_totp(self, user_id: int) -> TotpEnrolment:
        """A new TOTP key, held pending until `confirm_totp` sees a first code from it."""
        secret = totp.new_secret()
        with self.db.session() as session:
            user = self._user_by_id(session, user_id)
            user.totp_pending_sealed = sealing.seal(sealing.sealing_key(session), user.id, secret)
            record_event(session, Actor(user.email, "app"), "user.2fa_begin", f"user:{user.email}")
            uri = totp.provisioning_uri(secret, user.email, self.settings.product_name)
        return TotpEnrolment(secret=secret, uri=uri, qr_svg=totp.qr_svg(uri))

    @_records_refusals
    def confirm_totp(self, user_id: int, code: str, session_token: str | None = None) -> tuple[list[str], str | None]:
        """Turn 2FA on with a first code from the pending key. Returns ten recovery codes (shown once) and,
        if `session_token` was given, the new id of that session (a privilege change gets a new id)."""
        now = self.clock()
        codes = totp.new_recovery_codes()
        with self.db.session() as session:
            user = self._user_by_id(session, user_id)
            if user.totp_pending_sealed is None:
                raise InvalidInputError("no 2FA enrolment is under way: start one first")
            key = sealing.sealing_key(session)
            secret = sealing.unseal(key, user.id, user.totp_pending_sealed)
            step = totp.match_step(secret, code, now, None)
            if step is None:
                raise _refused(
                    AuthenticationError("the code is wrong: check the time on your phone and type the newest code"),
                    Actor(user.email, "app"),
                    "user.2fa_confirm_refused",
                    f"user:{user.email}",
                )
            user.totp_secret_sealed = sealing.seal(key, user.id, secret)
            user.totp_pending_sealed = None
            user.totp_enabled_at = now
            user.totp_last_step = step
            self._store_recovery_codes(session, user, codes)
            new_token = self._rotate(session, session_token, user.id) if session_token else None
            record_event(session, Actor(user.email, "app"), "user.2fa_enable", f"user:{user.email}")
        return codes, new_token

    def _store_recovery_codes(self, session: Session, user: User, codes: Iterable[str]) -> None:
        session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        session.add_all(RecoveryCode(user_id=user.id, code_sha256=totp.recovery_code_digest(c)) for c in codes)
        session.flush()

    @_records_refusals
    def regenerate_recovery_codes(self, user_id: int, password: str, code: str) -> list[str]:
        now = self.clock()
        codes = totp.new_recovery_codes()
        with self._guarded(user_id, "user.recovery_codes_renew") as attempt, self.db.session() as session:
            user = self._user_by_id(session, user_id)
            if user.totp_enabled_at is None:
                raise InvalidInputError("2FA is off: there are no recovery codes to renew")
            self._confirm_identity(session, user, password, code, now, "user.recovery_codes_refused")
            attempt.verified = True
            self._store_recovery_codes(session, user, codes)
            record_event(session, Actor(user.email, "app"), "user.recovery_codes_renew", f"user:{user.email}")
        return codes

    @_records_refusals
    def disable_totp(self, user_id: int, password: str, code: str) -> None:
        """Turn 2FA off: needs the password and a current code (a recovery code will do)."""
        now = self.clock()
        notices = _Notices()
        with self._guarded(user_id, "user.2fa_disable") as attempt, self.db.session() as session:
            user = self._user_by_id(session, user_id)
            if user.totp_enabled_at is None:
                raise InvalidInputError("2FA is off already")
            password_ok = self.hasher.verify(user.password_hash, password)
            code_ok = password_ok and self._accept_second_factor(session, user, code, now)
            if not code_ok:
                raise _refused(
                    AuthenticationError("the password or the code is wrong"),
                    Actor(user.email, "app"),
                    "user.2fa_disable_refused",
                    f"user:{user.email}",
                )
            attempt.verified = True
            user.totp_secret_sealed = None
            user.totp_pending_sealed = None
            user.totp_enabled_at = None
            user.totp_last_step = None
            session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
            record_event(session, Actor(user.email, "app"), "user.2fa_disable", f"user:{user.email}")
            notices.mails.append(
                self._notice(
                    user.email,
                    "Two-factor authentication was turned off",
                    "Two-factor authentication was turned off for your account.",
                )
            )
        self._flush(notices)

    def _accept_totp(self, session: Session, user: User, code: str, now: dt.datetime) -> bool:
        if user.totp_secret_sealed is None:
            return False
        secret = sealing.unseal(sealing.sealing_key(session), user.id, user.totp_secret_sealed)
        step = totp.match_step(secret, code, now, user.totp_last_step)
        if step is None:
            return False
        # A conditional write: two requests racing with the same code cannot both win.
        won = (
            _changed(
                session.execute(
                    update(User)
                    .where(User.id == user.id, or_(User.totp_last_step.is_(None), User.totp_last_step < step))
                    .values(totp_last_step=step)
                    .execution_options(synchronize_session=False)
                )
            )
            == 1
        )
        if won:
            user.totp_last_step = step
        return won

    def _accept_recovery_code(self, session: Session, user: User, code: str, now: dt.datetime) -> bool:
        if not totp.looks_like_recovery_code(code):
            return False
        return (
            _changed(
                session.execute(
                    update(RecoveryCode)
                    .where(
                        RecoveryCode.user_id == user.id,
                        RecoveryCode.code_sha256 == totp.recovery_code_digest(code),
                        RecoveryCode.used_at.is_(None),
                    )
                    .values(used_at=now)
                )
            )
            == 1
        )

    def _accept_second_factor(self, session: Session, user: User, code: str, now: dt.datetime) -> bool:
        if totp.looks_like_recovery_code(code):
            return self._accept_recovery_code(session, user, code, now)
        return self._accept_totp(session, user, code, now)

    def recovery_codes_left(self, user_id: int) -> int:
        with self.db.read() as session:
            rows = session.execute(
                select(RecoveryCode.id).where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
            ).all()
            return len(rows)

    # --- sign-in ---

    def login(
        self,
        email: str,
        password: str,
        *,
        second_factor: str | None = None,
        ip: str = "",
        user_agent: str = "",
        browser_token: str | None = None,
    ) -> LoginResult:
        """Sign in. See `LoginOutcome`; only `ok` carries a session. A browser this account has not used
        before must pass a second factor (TOTP or recovery code, else a code mailed now) and the person is
        told of the new sign-in. An unknown email and a wrong password look and take the same."""
        now = self.clock()
        address = email.strip().lower()[:254]
        account = throttle.account_key(address)
        here = throttle.address_key(ip)
        anonymous = Actor("anonymous", f"ip:{ip}")
        user_agent = user_agent[:512]
        # 1. The throttle, charged up front (refunded below on success).
        with self.db.session() as session:
            throttle.hold(session, [account, here], now)
            for key in (account, here):
                verdict = throttle.peek(session, key, now)
                if not verdict.allowed:
                    outcome = LoginOutcome.LOCKED if verdict.locked else LoginOutcome.REFUSED
                    record_event(
                        session,
                        anonymous,
                        "login.throttled",
                        "login",
                        {"email": address, "locked": verdict.locked, "key": key.split(":")[0]},
                    )
                    message = (
                        LOCKED_MESSAGE
                        if verdict.locked
                        else (f"too many attempts: try again in {max(1, round(verdict.retry_after))} s")
                    )
                    return LoginResult(outcome, message, retry_after=verdict.retry_after)
            failures = throttle.charge(session, account, throttle.ACCOUNT_RULE, now)
            throttle.charge(session, here, throttle.ADDRESS_RULE, now)
        # 2. The password (against a dummy hash when there is no such account: the same time).
        # The hash is checked outside any write transaction: on SQLite that lock is one for the whole
        # database, and argon2id's tens of milliseconds under it would make every sign-in wait in line.
        with self.db.read() as session:
            stored = session.execute(select(User.password_hash).where(User.email == address)).scalar_one_or_none()
        password_ok = self.hasher.verify(stored or self.hasher.dummy_hash, password) and stored is not None
        notices = _Notices()
        with self.db.session() as session:
            user = session.execute(select(User).where(User.email == address)).scalar_one_or_none()
            # A password changed meanwhile: what was checked is no longer the account's password.
            password_ok = password_ok and user is not None and user.password_hash == stored
            if not password_ok or user is None or user.disabled:
                reason = "unknown_user" if user is None else ("disabled" if user.disabled else "bad_password")
                result = self._failed(session, user, address, account, failures, ip, user_agent, reason, now, notices)
            else:
                if self.hasher.needs_rehash(user.password_hash):
                    user.password_hash = self.hasher.hash(password)
                    record_event(session, Actor(user.email, f"ip:{ip}"), "user.password_rehash", f"user:{user.email}")
                result = self._second_step(
                    session, user, account, here, failures, second_factor, ip, user_agent, browser_token, now, notices
                )
        self._flush(notices)
        return result

    def _failed(
        self,
        session: Session,
        user: User | None,
        address: str,
        account: str,
        failures: int,
        ip: str,
        user_agent: str,
        reason: str,
        now: dt.datetime,
        notices: _Notices,
    ) -> LoginResult:
        actor = Actor(user.email if user else "anonymous", f"ip:{ip}")
        detail = {"email": address, "reason": reason, "failures": failures, "user_agent": user_agent[:200]}
        if failures >= self.settings.lockout_failures:
            throttle.lock(session, account, now + dt.timedelta(seconds=self.settings.lockout_seconds))
            record_event(session, actor, "login.locked", f"user:{address}" if user else "login", detail)
            if user is not None and failures == self.settings.lockout_failures:
                notices.mails.append(
                    self._notice(
                        user.email,
                        "Your account was locked after failed sign-ins",
                        f"{failures} sign-ins to your account failed, the last from {ip or 'an unknown address'} "
                        f"at {now:%Y-%m-%d %H:%M} UTC. It is locked for {self.settings.lockout_seconds // 60} minutes. "
                        "If this was not you, your password may be under attack: reset it and turn on 2FA.",
                    )
                )
            return LoginResult(LoginOutcome.LOCKED, LOCKED_MESSAGE)
        record_event(session, actor, "login.refused", f"user:{address}" if user else "login", detail)
        return LoginResult(LoginOutcome.REFUSED, REFUSED_MESSAGE)

    def _second_step(
        self,
        session: Session,
        user: User,
        account: str,
        here: str,
        failures: int,
        second_factor: str | None,
        ip: str,
        user_agent: str,
        browser_token: str | None,
        now: dt.datetime,
        notices: _Notices,
    ) -> LoginResult:
        actor = Actor(user.email, f"ip:{ip}")
        target = f"user:{user.email}"
        browser = self._known_browser(session, user, browser_token)
        needs_factor = user.totp_enabled_at is not None
        # The very first sign-in with a password generated and shown once on the operator's console (the
        # first admin, before any mail server is set up): that password is itself the one-time secret
        # from a second channel, and it must be replaced at once.
        first_with_generated = (
            user.must_change_password
            and not needs_factor
            and session.execute(select(KnownBrowser.id).where(KnownBrowser.user_id == user.id).limit(1)).first() is None
        )
        if needs_factor or (browser is None and not first_with_generated):
            if second_factor is None:
                throttle.refund(session, account, now, forget=False)
                throttle.refund(session, here, now, forget=False)
                if needs_factor:
                    return LoginResult(
                        LoginOutcome.NEED_SECOND_FACTOR,
                        "enter the code from your app or a recovery code",
                        user_id=user.id,
                    )
                self._mail_signin_code(session, user, ip, user_agent, now, notices)
                record_event(session, actor, "login.email_code_sent", target, {"user_agent": user_agent[:200]})
                return LoginResult(LoginOutcome.NEED_EMAIL_CODE, "a sign-in code was mailed to you", user_id=user.id)
            accepted = (
                self._accept_second_factor(session, user, second_factor, now)
                if needs_factor
                else self._accept_signin_code(session, user, second_factor, now)
            )
            if not accepted:
                return self._failed(
                    session, user, user.email, account, failures, ip, user_agent, "bad_second_factor", now, notices
                )
        throttle.refund(session, account, now, forget=True)
        throttle.refund(session, here, now, forget=False)
        new_browser_token = None
        if browser is None:
            new_browser_token = secrets.token_urlsafe(32)
            session.add(
                KnownBrowser(
                    user_id=user.id,
                    token_sha256=_digest(new_browser_token),
                    user_agent=user_agent,
                    first_ip=ip,
                    first_seen_at=now,
                    last_seen_at=now,
                )
            )
            notices.mails.append(
                self._notice(
                    user.email,
                    "New sign-in to your account",
                    f"Your account was signed in to from a new browser.\n\nTime: {now:%Y-%m-%d %H:%M:%S} UTC\n"
                    f"IP address: {ip or 'unknown'}\nBrowser: {user_agent or 'unknown'}\n\n"
                    "If this was not you, change your password now and end the sessions you do not know.",
                )
            )
        else:
            browser.last_seen_at = now
        token = self._new_session(session, user, ip, user_agent, now)
        record_event(
            session,
            actor,
            "login.ok",
            target,
            {"new_browser": browser is None, "second_factor": needs_factor, "user_agent": user_agent[:200]},
        )
        return LoginResult(
            LoginOutcome.OK,
            session_token=token,
            browser_token=new_browser_token,
            user_id=user.id,
            requirements=self.requirements(user),
        )

    def _known_browser(self, session: Session, user: User, browser_token: str | None) -> KnownBrowser | None:
        if not browser_token:
            return None
        return session.execute(
            select(KnownBrowser).where(
                KnownBrowser.user_id == user.id, KnownBrowser.token_sha256 == _digest(browser_token)
            )
        ).scalar_one_or_none()

    def _mail_signin_code(
        self, session: Session, user: User, ip: str, user_agent: str, now: dt.datetime, notices: _Notices
    ) -> None:
        code = "".join(secrets.choice("0123456789") for _ in range(SIGNIN_CODE_DIGITS))
        # One outstanding code per account: a new request voids the old one.
        session.execute(delete(OneTimeToken).where(OneTimeToken.user_id == user.id, OneTimeToken.purpose == "signin"))
        session.add(
            OneTimeToken(
                purpose="signin",
                user_id=user.id,
                email=user.email,
                token_sha256=_digest(f"{user.id}:{code}"),
                created_at=now,
                expires_at=now + dt.timedelta(seconds=self.settings.signin_code_ttl_seconds),
                attempts=0,
            )
        )
        notices.mails.append(
            Mail(
                to=user.email,
                subject=f"Your {self.settings.product_name} sign-in code",
                body=f"Someone is signing in to your account from a new browser ({user_agent or 'unknown'}, "
                f"IP {ip or 'unknown'}).\nIf it is you, the code is {code} (valid for "
                f"{self.settings.signin_code_ttl_seconds // 60} minutes).\n"
                "If it is not you, someone knows your password: change it.\n",
            )
        )
        notices.mails[-1] = _Required(notices.mails[-1])

    def _accept_signin_code(self, session: Session, user: User, code: str, now: dt.datetime) -> bool:
        row = session.execute(
            select(OneTimeToken).where(
                OneTimeToken.user_id == user.id, OneTimeToken.purpose == "signin", OneTimeToken.used_at.is_(None)
            )
        ).scalar_one_or_none()
        if row is None or row.expires_at <= now or row.attempts >= MAX_CODE_ATTEMPTS:
            return False
        if not hmac.compare_digest(row.token_sha256, _digest(f"{user.id}:{code.strip()}")):
            row.attempts += 1
            return False
        row.used_at = now
        return True

    # --- sessions ---

    def _new_session(self, session: Session, user: User, ip: str, user_agent: str, now: dt.datetime) -> str:
        token = secrets.token_urlsafe(32)  # 256 bits
        session.add(
            UserSession(
                user_id=user.id,
                token_sha256=_digest(token),
                created_at=now,
                last_seen_at=now,
                expires_at=now + dt.timedelta(seconds=self.settings.session_lifetime_seconds),
                ip=ip,
                user_agent=user_agent,
            )
        )
        session.flush()
        return token

    def _end_sessions(self, session: Session, user_id: int, keep: str | None = None) -> int:
        query = delete(UserSession).where(UserSession.user_id == user_id)
        if keep:
            query = query.where(UserSession.token_sha256 != _digest(keep))
        return int(_changed(session.execute(query)))

    def _live_session(self, session: Session, token: str, now: dt.datetime) -> UserSession | None:
        row = session.execute(
            select(UserSession).where(UserSession.token_sha256 == _digest(token))
        ).scalar_one_or_none()
        if row is None:
            return None
        idle = dt.timedelta(seconds=self.settings.session_idle_seconds)
        if row.expires_at <= now or row.last_seen_at + idle <= now:
            session.delete(row)
            return None
        return row

    def authenticate_session(self, token: str) -> AuthenticatedSession | None:
        """The person behind a session cookie, or None (unknown, ended, idle too long, too old, disabled)."""
        if not token:
            return None
        now = self.clock()
        with self.db.session() as session:
            row = self._live_session(session, token, now)
            if row is None:
                return None
            user = self._user_by_id(session, row.user_id)
            if user.disabled:
                session.delete(row)
                return None
            if now - row.last_seen_at >= _TOUCH_EVERY:
                row.last_seen_at = now
            info = self._info(session, user)
            return AuthenticatedSession(user=info, session_id=row.id, requirements=self.requirements(user))

    def _rotate(self, session: Session, token: str | None, user_id: int) -> str | None:
        if not token:
            return None
        row = self._live_session(session, token, self.clock())
        if row is None or row.user_id != user_id:
            return None
        new = secrets.token_urlsafe(32)
        row.token_sha256 = _digest(new)
        session.flush()
        return new

    def rotate_session(self, token: str) -> str | None:
        """A new id for a live session (after a privilege change); the old id stops working at once."""
        with self.db.session() as session:
            row = self._live_session(session, token, self.clock())
            return self._rotate(session, token, row.user_id) if row else None

    def csrf_token(self, session_token: str) -> str:
        """The anti-CSRF token of a session, for forms and the X-CSRF-Token header: an HMAC of the session
        id under a key derived from the data dir's key, so it needs no storage, changes whenever the
        session id does, and cannot be computed without the session cookie (which pages never see)."""
        with self.db.read() as session:
            key = sealing.derived_key(session, _CSRF_LABEL)
        return hmac.new(key, session_token.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session_token: str, presented: str | None) -> bool:
        if not session_token or not presented or not presented.isascii():
            return False  # (compare_digest raises on non-ASCII text; no token of ours has any)
        return hmac.compare_digest(self.csrf_token(session_token), presented)

    def logout(self, token: str) -> bool:
        with self.db.session() as session:
            row = session.execute(
                select(UserSession).where(UserSession.token_sha256 == _digest(token))
            ).scalar_one_or_none()
            if row is None:
                return False
            user = self._user_by_id(session, row.user_id)
            session.delete(row)
            record_event(session, Actor(user.email, "app"), "logout", f"user:{user.email}")
            return True

    def list_sessions(self, user_id: int, current_token: str | None = None) -> list[SessionInfo]:
        now = self.clock()
        idle = dt.timedelta(seconds=self.settings.session_idle_seconds)
        current = _digest(current_token) if current_token else None
        with self.db.read() as session:
            rows = session.execute(
                select(UserSession).where(UserSession.user_id == user_id).order_by(UserSession.created_at)
            ).scalars()
            return [
                SessionInfo(
                    id=r.id,
                    created_at=r.created_at,
                    last_seen_at=r.last_seen_at,
                    expires_at=r.expires_at,
                    ip=r.ip,
                    user_agent=r.user_agent,
                    current=r.token_sha256 == current,
                )
                for r in rows
                if r.expires_at > now and r.last_seen_at + idle > now
            ]

    def end_session(self, user_id: int, session_id: int) -> None:
        """End one of the person's own sessions; someone else's session id is "not found" like a missing one."""
        with self.db.session() as session:
            row = session.get(UserSession, session_id)
            if row is None or row.user_id != user_id:
                raise NotFoundError(f"no session {session_id}")
            user = self._user_by_id(session, user_id)
            session.delete(row)
            record_event(
                session, Actor(user.email, "app"), "session.end", f"user:{user.email}", {"session": session_id}
            )

    # --- API tokens ---

    def create_api_token(self, user_id: int, name: str, scopes: Sequence[str], days: int = 90) -> NewApiToken:
        """A token for scripts, limited to `scopes`, expiring after `days`; returned once, stored hashed."""
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise InvalidInputError(
                f"unknown or missing scope(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SCOPES)}"
            )
        if not 1 <= days <= self.settings.api_token_max_days:
            raise InvalidInputError(f"a token lives 1 to {self.settings.api_token_max_days} days, not {days}")
        if not name.strip() or len(name) > 64:
            raise InvalidInputError("give the token a name of 1 to 64 characters (what it is for)")
        now = self.clock()
        raw = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.session() as session:
            user = self._user_by_id(session, user_id)
            if "admin" in scopes and not user.is_admin:
                raise PermissionDeniedError("only an admin may make a token with the admin scope")
            row = ApiToken(
                user_id=user.id,
                name=name.strip(),
                token_sha256=_digest(raw),
                scopes=" ".join(sorted(set(scopes))),
                created_at=now,
                expires_at=now + dt.timedelta(days=days),
            )
            session.add(row)
            session.flush()
            record_event(
                session,
                Actor(user.email, "app"),
                "api_token.create",
                f"user:{user.email}",
                {"token": row.id, "name": row.name, "scopes": row.scopes, "days": days},
            )
            return NewApiToken(token=raw, info=_token_info(row))

    def list_api_tokens(self, user_id: int) -> list[ApiTokenInfo]:
        with self.db.read() as session:
            rows = session.execute(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id)).scalars()
            return [_token_info(r) for r in rows]

    def revoke_api_token(self, user_id: int, token_id: int) -> None:
        with self.db.session() as session:
            row = session.get(ApiToken, token_id)
            if row is None or row.user_id != user_id:
                raise NotFoundError(f"no API token {token_id}")
            row.revoked_at = self.clock()
            user = self._user_by_id(session, user_id)
            record_event(
                session, Actor(user.email, "app"), "api_token.revoke", f"user:{user.email}", {"token": token_id}
            )

    @_records_refusals
    def authenticate_api_token(self, raw: str, scope: str) -> UserInfo:
        """The person a token acts for, if it is live and carries `scope`. An unknown, expired or revoked
        token is InvalidTokenError; a live one without the scope is PermissionDeniedError."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")  # a programming error in a door, not input
        now = self.clock()
        with self.db.session() as session:
            row = session.execute(select(ApiToken).where(ApiToken.token_sha256 == _digest(raw))).scalar_one_or_none()
            user = self._user_by_id(session, row.user_id) if row is not None else None
            if row is None or user is None or row.revoked_at is not None or row.expires_at <= now or user.disabled:
                raise InvalidTokenError("the API token is not valid (unknown, expired or revoked)")
            pending = self.requirements(user)
            if pending:
                # A token acts for the person as they are now: one held at setting up their account (2FA now
                # required, a password to change) may do nothing else through a token either.
                raise _refused(
                    PermissionDeniedError(
                        "finish setting up the account first (" + ", ".join(pending) + "): sign in to the web app"
                    ),
                    Actor(user.email, "api"),
                    "api_token.requirements_pending",
                    f"user:{user.email}",
                    {"token": row.id, "pending": list(pending)},
                )
            granted = set(row.scopes.split())
            if scope not in granted or (scope == "admin" and not user.is_admin):
                raise _refused(
                    PermissionDeniedError(f"this token does not carry the {scope!r} scope"),
                    Actor(user.email, "api"),
                    "api_token.scope_refused",
                    f"user:{user.email}",
                    {"token": row.id, "scope": scope},
                )
            row.last_used_at = now
            return self._info(session, user)

    # --- mail ---

    def _notice(self, to: str, subject: str, body: str) -> Mail:
        return Mail(to=to, subject=f"[{self.settings.product_name}] {subject}", body=body)

    def _send(self, mail: Mail, required: bool) -> None:
        try:
            self.mailer.send(mail)
        except MailError as e:
            if required:
                raise
            logger.warning("notice to %s not sent (%s): %s", mail.to, mail.subject, e)

    def _flush(self, notices: _Notices) -> None:
        for mail in notices.mails:
            self._send(mail, required=isinstance(mail, _Required))


_E = TypeVar("_E", bound=ThingwardError)


def _refused(error: _E, actor: Actor, action: str, target: str, detail: Mapping[str, object] | None = None) -> _E:
    """Mark an error with the audit event of the refusal: `_records_refusals` writes it after the failed
    transaction was rolled back (an event written inside it would be rolled back with it)."""
    error.refusal = (actor, action, target, detail)  # type: ignore[attr-defined]
    return error


class _Required(Mail):
    """A mail the operation cannot do without (a sign-in code): failing to send it is an error."""

    def __init__(self, mail: Mail) -> None:
        super().__init__(to=mail.to, subject=mail.subject, body=mail.body)


def _token_info(row: ApiToken) -> ApiTokenInfo:
    return ApiTokenInfo(
        id=row.id,
        name=row.name,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked=row.revoked_at is not None,
    )
