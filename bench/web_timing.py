"""Does the web door tell known emails from unknown ones by time? Medians over real HTTPS.

Starts the app (uvicorn, the platform's TLS certificate) on a throwaway data dir with a local SMTP server
(aiosmtpd) behind the queued mailer, then alternates requests for a known and an unknown email:
- `POST /api/v1/auth/login` with a wrong password (argon2id at the default costs, or the dummy hash);
- `POST /api/v1/auth/password-reset` (the look-up and the mail happen on the mailer's thread).
Prints the median and the 90th percentile of each, and the ratio known/unknown. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller
from sqlalchemy import delete

from thingward.accounts.mail import QueuedMailer, SmtpMailer
from thingward.accounts.service import Accounts
from thingward.app.api import create_app
from thingward.app.https import https_server
from thingward.config import AccountsSettings, SmtpSettings
from thingward.device.enroll import server_context
from thingward.platform import Platform, cli_actor, init_data_dir
from thingward.registry.models import LoginThrottle

PASSWORD = "tangerine harpsichord velvet"


class _Sink:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40, help="requests per email and route (at most 200)")
    args = parser.parse_args()
    runs = max(4, min(args.runs, 200))
    smtp = Controller(_Sink(), hostname="127.0.0.1", port=_free_port())
    smtp.start()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        init_data_dir(data_dir)
        platform = Platform.open(data_dir)
        mailer = QueuedMailer(SmtpMailer(SmtpSettings(host="127.0.0.1", port=smtp.port, security="none")))
        # A high lockout and a fresh address key per request pair keep the throttle out of the figures.
        settings = AccountsSettings(lockout_failures=100_000)
        accounts = Accounts(platform.db, settings, mailer)
        accounts.create_user(cli_actor(), "known@example.com", PASSWORD)
        server = https_server(
            create_app(platform, accounts=accounts),
            "127.0.0.1",
            0,
            platform.server_certificate_path,
            platform.server_key_path,
        )
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        url = f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        results: dict[tuple[str, str], list[float]] = {}
        try:
            with httpx.Client(base_url=url, verify=server_context(platform.ca_certificate_path), timeout=30) as client:
                routes = {
                    "login (wrong password)": lambda email: client.post(
                        "/api/v1/auth/login", json={"email": email, "password": "wrong wrong wrong"}
                    ),
                    "password reset request": lambda email: client.post(
                        "/api/v1/auth/password-reset", json={"email": email}
                    ),
                }
                for route, call in routes.items():
                    for email in ("known@example.com", "unknown@example.com"):
                        call(email)  # warm-up
                    for _ in range(runs):
                        for email in ("known@example.com", "unknown@example.com"):
                            # Reset the throttle between rounds: growing delays would be the figure otherwise.
                            mailer.flush()  # the previous request's work (and mail) is done: no overlap
                            time.sleep(0.02)
                            with platform.db.session() as session:
                                session.execute(delete(LoginThrottle))
                            start = time.perf_counter()
                            response = call(email)
                            results.setdefault((route, email), []).append(time.perf_counter() - start)
                            if response.status_code >= 500:
                                raise SystemExit(f"{route}: {response.status_code} {response.text}")
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            mailer.close()
            platform.close()
            smtp.stop()
    print(f"{runs} requests per email and route, over HTTPS on loopback")
    for route in ("login (wrong password)", "password reset request"):
        known = _summary(results[(route, "known@example.com")])
        unknown = _summary(results[(route, "unknown@example.com")])
        print(
            f"{route:24} known: median {known[0]:6.1f} ms p90 {known[1]:6.1f} ms | "
            f"unknown: median {unknown[0]:6.1f} ms p90 {unknown[1]:6.1f} ms | ratio {known[0] / unknown[0]:.2f}"
        )


if __name__ == "__main__":
    main()
