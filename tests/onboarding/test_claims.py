"""Claim tokens and claim enrollment over the real HTTPS API: a person gets a claim, a device enrolls
with it and becomes theirs; a used, expired, mismatched or another person's claim is refused and audited."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update

from conftest import ApiServer
from lab.accounts import FakeClock, make_accounts, make_user, signed_in
from thingward.accounts.service import Accounts
from thingward.accounts.sharing import add_member, add_user_group, shares_of, visible_things
from thingward.app.api import create_app
from thingward.app.session import SESSION_COOKIE
from thingward.config import SmtpSettings
from thingward.device.enroll import server_context
from thingward.pki.keystore import build_csr_with_key
from thingward.platform import Platform, cli_actor
from thingward.registry.audit_log import list_events
from thingward.registry.models import ClaimToken, User
from thingward.registry.things import get_thing

pytestmark = pytest.mark.both_databases


class ClaimApi(ApiServer):
    def __init__(self, platform: Platform, accounts: Accounts) -> None:
        from thingward.app.https import https_server

        super().__init__(platform)
        self.accounts = accounts
        self.server = https_server(
            create_app(platform, accounts=accounts), "127.0.0.1", 0, platform.server_certificate_path,
            platform.server_key_path,
        )  # fmt: skip

    def client(self, token: str | None = None, cookie: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        cookies = {SESSION_COOKIE: cookie} if cookie else {}
        return httpx.Client(base_url=self.url, verify=server_context(self.platform.ca_certificate_path),
                            timeout=10, headers=headers, cookies=cookies)  # fmt: skip


@pytest.fixture
def claim_api(platform: Platform, smtp: tuple[object, SmtpSettings], clock: FakeClock) -> Iterator[ClaimApi]:
    accounts = make_accounts(platform, smtp[1], clock)
    # The API tokens are checked against the accounts clock: keep it at the real time.
    clock.now = dt.datetime.now(dt.UTC)
    with ClaimApi(platform, accounts) as server:
        yield server


def _person(api: ClaimApi, email: str, scopes: tuple[str, ...] = ("things:control",)) -> tuple[int, str]:
    user_id = make_user(api.accounts, email)
    return user_id, api.accounts.create_api_token(user_id, "onboarding", list(scopes)).token


def _claim(api: ClaimApi, token: str, device_id: str | None) -> dict[str, object]:
    with api.client(token) as client:
        response = client.post("/api/v1/claims", json={"device_id": device_id})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def _enroll(api: ClaimApi, claim_token: str, device_id: str, cn: str | None = None) -> httpx.Response:
    csr = build_csr_with_key(ec.generate_private_key(ec.SECP256R1()), cn or device_id).decode()
    with api.client() as client:
        return client.post("/api/v1/claims/enroll", json={"claim_token": claim_token, "device_id": device_id,
                                                          "csr": csr})  # fmt: skip


def _refusals(platform: Platform) -> list[str]:
    with platform.db.read() as session:
        return [json.loads(e.detail)["reason"] for e in list_events(session, 200) if e.action == "claim.refused"]


def test_claimed_device_is_enrolled_grouped_and_visible_to_its_owner_only(claim_api: ClaimApi) -> None:
    alice_id, alice_token = _person(claim_api, "alice@example.com")
    bob_id, _ = _person(claim_api, "bob@example.com")
    claim = _claim(claim_api, alice_token, "cam-1")
    assert str(claim["token"]).startswith("twc_")
    with claim_api.platform.db.read() as session:  # stored as a digest only
        row = session.execute(select(ClaimToken)).scalar_one()
        assert row.token_sha256 != claim["token"] and str(claim["token"]) not in json.dumps(row.token_sha256)
    response = _enroll(claim_api, str(claim["token"]), "cam-1")
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "cam-1" and "BEGIN CERTIFICATE" in response.json()["certificate"]
    with claim_api.platform.db.read() as session:
        thing = get_thing(session, "cam-1")
        assert [g.name for g in thing.groups] == ["default"]
        assert shares_of(session, thing) == [(f"household-{alice_id}", "owner")]
        alice, bob = session.get(User, alice_id), session.get(User, bob_id)
        assert alice is not None and bob is not None
        assert [t.name for t in visible_things(session, alice)] == ["cam-1"]
        assert list(visible_things(session, bob)) == []
    with claim_api.client(alice_token) as client:
        status = client.get(f"/api/v1/claims/{claim['id']}").json()
    assert status["state"] == "enrolled" and status["thing"] == "cam-1" and status["online"] is False


def test_claim_token_replay_refused_and_audited(claim_api: ClaimApi) -> None:
    _, token = _person(claim_api, "alice@example.com")
    claim = _claim(claim_api, token, None)
    assert _enroll(claim_api, str(claim["token"]), "cam-1").status_code == 201
    replay = _enroll(claim_api, str(claim["token"]), "cam-2")
    assert replay.status_code == 403
    assert "claim refused" in replay.json()["error"]
    with claim_api.platform.db.read() as session, pytest.raises(Exception, match="no thing named"):
        get_thing(session, "cam-2")
    assert any("used again" in r for r in _refusals(claim_api.platform))


def test_expired_claim_token_refused(claim_api: ClaimApi) -> None:
    _, token = _person(claim_api, "alice@example.com")
    claim = _claim(claim_api, token, "cam-1")
    with claim_api.platform.db.session() as session:
        session.execute(update(ClaimToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    assert _enroll(claim_api, str(claim["token"]), "cam-1").status_code == 403
    assert any("expired" in r for r in _refusals(claim_api.platform))
    with claim_api.client(token) as client:
        assert client.get(f"/api/v1/claims/{claim['id']}").json()["state"] == "expired"


def test_claim_for_another_device_and_unknown_claim_refused(claim_api: ClaimApi) -> None:
    _, token = _person(claim_api, "alice@example.com")
    claim = _claim(claim_api, token, "cam-1")
    assert _enroll(claim_api, str(claim["token"]), "cam-9").status_code == 403
    assert _enroll(claim_api, "twc_" + "A" * 43, "cam-1").status_code == 403
    reasons = _refusals(claim_api.platform)
    assert any("for cam-1 presented by cam-9" in r for r in reasons)
    assert "unknown claim token" in reasons
    assert _enroll(claim_api, str(claim["token"]), "cam-1").status_code == 201  # not spent by the refusals


def test_another_users_claim_is_not_theirs_to_see(claim_api: ClaimApi) -> None:
    _, alice_token = _person(claim_api, "alice@example.com")
    _, bob_token = _person(claim_api, "bob@example.com")
    claim = _claim(claim_api, alice_token, "cam-1")
    with claim_api.client(bob_token) as client:
        theirs = client.get(f"/api/v1/claims/{claim['id']}")
        missing = client.get("/api/v1/claims/999999")
    assert theirs.status_code == missing.status_code == 404
    assert "claim of another user" in _refusals(claim_api.platform)
    with claim_api.client(alice_token) as client:
        assert client.get(f"/api/v1/claims/{claim['id']}").json()["state"] == "pending"


def test_claims_need_a_token_with_the_control_scope_or_a_session(claim_api: ClaimApi, inbox: object) -> None:
    _, reader = _person(claim_api, "alice@example.com", scopes=("things:read",))
    with claim_api.client() as client:
        assert client.post("/api/v1/claims", json={}).status_code == 401
    with claim_api.client("twk_not-a-token") as client:
        assert client.post("/api/v1/claims", json={}).status_code == 401
    with claim_api.client(reader) as client:
        assert client.post("/api/v1/claims", json={}).status_code == 403
    with claim_api.client(cookie="forged") as client:
        assert client.post("/api/v1/claims", json={}).status_code == 401
    session = signed_in(claim_api.accounts, inbox, "alice@example.com")
    with claim_api.client(cookie=session.session_token) as client:
        # The web app's CSRF guard covers cookie requests: without the session's token, refused.
        assert client.post("/api/v1/claims", json={"device_id": "cam-3"}).status_code == 403
        csrf = {"X-CSRF-Token": claim_api.accounts.csrf_token(session.session_token or "")}
        response = client.post("/api/v1/claims", json={"device_id": "cam-3"}, headers=csrf)
    assert response.status_code == 201 and response.json()["device_id"] == "cam-3"


def test_bad_csr_costs_the_claim_nothing_and_existing_household_is_used(claim_api: ClaimApi) -> None:
    alice_id, token = _person(claim_api, "alice@example.com")
    with claim_api.platform.db.session() as session:
        add_user_group(session, cli_actor(), "smiths")
        user = session.get(User, alice_id)
        assert user is not None
        add_member(session, cli_actor(), "smiths", user)
    claim = _claim(claim_api, token, "cam-1")
    wrong_cn = _enroll(claim_api, str(claim["token"]), "cam-1", cn="cam-2")
    assert wrong_cn.status_code == 400 and "CN" in wrong_cn.json()["error"]
    assert _enroll(claim_api, str(claim["token"]), "cam-1").status_code == 201
    with claim_api.platform.db.read() as session:
        assert shares_of(session, get_thing(session, "cam-1")) == [("smiths", "owner")]


def test_claim_settings_validated(tmp_path: Path) -> None:
    from thingward.config import OnboardingSettings
    from thingward.errors import ConfigError

    with pytest.raises(ConfigError, match="60 to 3600"):
        OnboardingSettings(claim_ttl_seconds=5)


def _onboard_cli(api: ClaimApi, tmp_path: Path, token: str, ap_port: int) -> tuple[int, dict[str, object]]:
    import subprocess
    import sys

    from thingward.device.onboarding.label import new_label

    (tmp_path / "token").write_text(token)
    (tmp_path / "wifi").write_text("plum-violin-89-quietly-sailing\n")
    result = subprocess.run(
        [sys.executable, "-m", "thingward.cli.main", "onboard", "--label", new_label("cam-cli").code(),
         "--wifi-ssid", "home", "--wifi-passphrase-file", str(tmp_path / "wifi"), "--url", api.url,
         "--api-token-file", str(tmp_path / "token"), "--ca-certificate", str(api.platform.ca_certificate_path),
         "--ap-address", f"127.0.0.1:{ap_port}", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_onboard_cli_says_what_failed(claim_api: ClaimApi, tmp_path: Path) -> None:
    import socket

    _, token = _person(claim_api, "alice@example.com")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connect refused
        status, bad_token = _onboard_cli(claim_api, tmp_path, "twk_wrong", port)
        assert status == 1 and "HTTP 401" in str(bad_token["error"])
        status, no_device = _onboard_cli(claim_api, tmp_path, token, port)
    assert status == 1 and "cannot reach the device's provisioning service" in str(no_device["error"])


def test_two_devices_racing_with_one_claim_only_one_wins(claim_api: ClaimApi) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _, token = _person(claim_api, "alice@example.com")
    claim = str(_claim(claim_api, token, None)["token"])
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda i: _enroll(claim_api, claim, f"cam-race{i}").status_code, range(4)))
    assert codes == [201, 403, 403, 403]
    with claim_api.platform.db.read() as session:
        alice = session.execute(select(User).where(User.email == "alice@example.com")).scalar_one()
        assert len(visible_things(session, alice)) == 1


def test_open_claims_per_person_are_bounded(claim_api: ClaimApi) -> None:
    from thingward.onboarding.claims import MAX_OPEN_CLAIMS

    _, token = _person(claim_api, "alice@example.com")
    for _ in range(MAX_OPEN_CLAIMS):
        _claim(claim_api, token, None)
    with claim_api.client(token) as client:
        refused = client.post("/api/v1/claims", json={})
    assert refused.status_code == 409 and "unused claim tokens" in refused.json()["error"]
