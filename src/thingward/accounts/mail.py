"""Mail to people: the `Mailer` protocol, SMTP through smtplib, and a queue that sends in the background.

Mail bodies carry one-time secrets (reset links, sign-in codes): they are never logged, only their
subject and recipient are. `QueuedMailer` hands each mail to a worker thread, so a request that sends a
mail and one that does not take the same time (no account enumeration through timing).
"""

from __future__ import annotations

import logging
import os
import queue
import smtplib
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from thingward.config import SmtpSettings
from thingward.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


class MailError(ConfigError):
    """The mail could not be handed to the mail server."""


class Mailer(Protocol):
    def send(self, mail: Mail) -> None: ...


class NoMailer:
    """No mail server configured: whatever needs a mail is refused, saying what to set."""

    def send(self, mail: Mail) -> None:
        raise MailError("no mail server is configured: set [smtp] host in thingward.toml (see docs/accounts.md)")


class SmtpMailer:
    """One SMTP connection per mail; STARTTLS or implicit TLS with certificate checks unless told "none"."""

    def __init__(self, settings: SmtpSettings, ssl_context: ssl.SSLContext | None = None) -> None:
        if settings.security not in {"starttls", "tls", "none"}:
            raise ConfigError(f"[smtp] security must be starttls, tls or none, not {settings.security!r}")
        if not settings.host:
            raise ConfigError("[smtp] host is not set")
        self.settings = settings
        self._ssl = ssl_context or ssl.create_default_context()

    def _password(self) -> str:
        name = self.settings.password_env
        if not name:
            return ""
        value = os.environ.get(name)
        if not value:
            raise MailError(f"the SMTP password is read from ${name}, which is not set or empty")
        return value

    def send(self, mail: Mail) -> None:
        s = self.settings
        message = EmailMessage()
        message["From"] = s.from_address
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message.set_content(mail.body)
        try:
            client: smtplib.SMTP
            if s.security == "tls":
                client = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_seconds, context=self._ssl)
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds)
            with client:
                if s.security == "starttls":
                    client.starttls(context=self._ssl)
                if s.username:
                    client.login(s.username, self._password())
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as e:
            raise MailError(f"mail to {mail.to} not sent: {s.host}:{s.port} said {e}") from e
        logger.info("mail sent to %s: %s", mail.to, mail.subject)


def mailer_from_settings(settings: SmtpSettings) -> Mailer:
    return SmtpMailer(settings) if settings.host else NoMailer()


class QueuedMailer:
    """Sends through `inner` on a worker thread; a failed send is logged (without the body) and dropped."""

    def __init__(self, inner: Mailer, max_queued: int = 1000) -> None:
        self.inner = inner
        self._queue: queue.Queue[Mail | Callable[[], None] | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="thingward-mailer", daemon=True)
        self._thread.start()

    def send(self, mail: Mail) -> None:
        try:
            self._queue.put_nowait(mail)
        except queue.Full:
            logger.error("mail queue full: mail to %s dropped (%s)", mail.to, mail.subject)

    def run_later(self, job: Callable[[], None]) -> None:
        """Run `job` on the worker (work that decides whether to mail, kept off the request's clock)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            logger.error("mail queue full: a mail job was dropped")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, Mail):
                    self.inner.send(item)
                else:
                    item()
            except Exception as e:  # one bad mail must not stop the others
                logger.error("mail %s not sent: %s", f"to {item.to}" if isinstance(item, Mail) else "job", e)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued mail was tried; False if that took longer than `timeout`."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
