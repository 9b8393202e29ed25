"""A real HTTPS web app (uvicorn in a thread, TLS from the platform's CA) with a real SMTP server."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pyotp
import pytest

from lab.accounts import FAST, PASSWORD, Inbox
from lab.served import wait_for
from thingward.accounts.mail import QueuedMailer, SmtpMailer
from thingward.accounts.service import Accounts
from thingward.app.api import create_app
from thingward.app.https import https_server
from thingward.config import SmtpSettings
from thingward.device.enroll import server_context
from thingward.platform import Platform, cli_actor


@dataclass
class WebApp:
    url: str
    platform: Platform
    accounts: Accounts
    inbox: Inbox

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=server_context(self.platform.ca_certificate_path), timeout=10, **kwargs
        )

    def add_user(self, email: str, admin: bool = False, password: str = PASSWORD) -> int:
        info, _ = self.accounts.create_user(cli_actor(), email, password, name="", admin=admin)
        return info.id

    def mailed_code(self, email: str, count_before: int) -> str:
        assert wait_for(lambda: len(self.inbox.to(email)) > count_before, 10), f"no sign-in code mailed to {email}"
        return self.inbox.find(email, r"the code is (\d{8})")

    def sign_in(self, client: httpx.Client, email: str, password: str = PASSWORD) -> str:
        """Sign in through the REST API from a new browser (password, then the mailed code); the CSRF token."""
        before = len(self.inbox.to(email))
        first = client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert first.status_code == 200 and first.json()["outcome"] == "need_email_code", first.text
        code = self.mailed_code(email, before)
        done = client.post("/api/v1/auth/login", json={"email": email, "password": password, "code": code})
        assert done.status_code == 200 and done.json()["outcome"] == "ok", done.text
        return str(done.json()["csrf_token"])

    def totp_now(self, secret: str) -> str:
        return pyotp.TOTP(secret).now()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


@pytest.fixture
def web(platform: Platform, smtp: tuple[Inbox, SmtpSettings]) -> Iterator[WebApp]:
    inbox, settings = smtp
    mailer = QueuedMailer(SmtpMailer(settings))
    accounts = Accounts(platform.db, dataclasses.replace(FAST, signup="open", lockout_failures=4), mailer)
    server = https_server(
        create_app(platform, accounts=accounts),
        "127.0.0.1",
        0,
        platform.server_certificate_path,
        platform.server_key_path,
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 10), "the web app did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield WebApp(f"https://127.0.0.1:{port}", platform, accounts, inbox)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        mailer.close()
