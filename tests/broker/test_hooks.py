"""The broker hooks through the real FastAPI app over httpx: EMQX, VerneMQ and RabbitMQ formats, the secret,
failure means deny, and the cache (emptied by a registry change in a real `thingward serve`).

The registry is real (a data dir made by `init_data_dir`, things enrolled from CSRs); decisions come from
the real policy engine. The one stand-in is `BrokenAuthorizer`, a fault injected to prove that a failing
decision denies.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from typer.testing import CliRunner

from lab.served import serving, wait_for
from thingward.app.api import create_app
from thingward.app.broker_hooks import routing_key_to_mqtt
from thingward.broker.decisions import HookDecisions, load_certified_things
from thingward.cli.main import app as cli_app
from thingward.device.enroll import server_context
from thingward.errors import ConfigError
from thingward.platform import Platform, cli_actor, init_data_dir
from thingward.policy.engine import PolicyEngine
from thingward.registry import things
from thingward.registry.policies import load_policy_world

SECRET_ENV = "THINGWARD_TEST_HOOKS_SECRET"
SECRET = secrets.token_urlsafe(32)
LOOPBACK = ("127.0.0.1", 50000)


def csr_pem(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )


def enroll(platform: Platform, name: str) -> None:
    ttl = dt.timedelta(hours=1)
    with platform.db.session() as session:
        things.add_thing(session, cli_actor(), name)
        token = things.create_enrollment_token(session, cli_actor(), name, ttl).token
    platform.enroll(token, csr_pem(name), source="test")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("hooks") / "data")


def make_data_dir(root: Path, database_url: str | None = None) -> Path:
    """cam-a and cam-b enrolled, cam-new registered but never enrolled, cam-revoked and cam-off enrolled
    then revoked and disabled."""
    init_data_dir(root, database_url=database_url)
    platform = Platform.open(root)
    try:
        for name in ("cam-a", "cam-b", "cam-revoked", "cam-off"):
            enroll(platform, name)
        with platform.db.session() as session:
            things.add_thing(session, cli_actor(), "cam-new")
        platform.revoke(cli_actor(), "cam-revoked")
        platform.set_disabled(cli_actor(), "cam-off", True)
    finally:
        platform.close()
    return root


@pytest.fixture
def hooks_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINGWARD_HOOKS__SECRET_ENV", SECRET_ENV)
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def platform(data_dir: Path, hooks_env: None) -> Iterator[Platform]:
    opened = Platform.open(data_dir)
    yield opened
    opened.close()


def decisions_for(platform: Platform, **options: Any) -> HookDecisions:
    with platform.db.read() as session:
        engine = PolicyEngine(load_policy_world(session))
        certified = load_certified_things(session)
    return HookDecisions(engine, certified, **options)


class HooksClient:
    """httpx into the real ASGI app (no sockets), from a given source address, on an event loop of its own."""

    def __init__(self, app: FastAPI, address: tuple[str, int], headers: dict[str, str]) -> None:
        self._runner = asyncio.Runner()
        transport = httpx.ASGITransport(app=app, client=address)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://thingward.test", headers=headers)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self._runner.run(self._client.post(url, **options))

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self._runner.run(self._client.get(url, **options))

    def __enter__(self) -> HooksClient:
        return self

    def __exit__(self, *_: object) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


def hooks_client(app: FastAPI, address: tuple[str, int] = LOOPBACK, secret: str | None = SECRET) -> HooksClient:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    return HooksClient(app, address, headers)


@pytest.fixture
def client(platform: Platform) -> Iterator[HooksClient]:
    with hooks_client(create_app(platform, hook_decisions=decisions_for(platform))) as test_client:
        yield test_client


def emqx_authn(client: HooksClient, **body: Any) -> dict[str, Any]:
    response = client.post("/hooks/emqx/authn", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()  # type: ignore[no-any-return]


def emqx_authz(client: HooksClient, username: str, action: str, topic: str) -> str:
    response = client.post("/hooks/emqx/authz", json={"username": username, "action": action, "topic": topic})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"result"}
    return body["result"]  # type: ignore[no-any-return]


def vernemq(client: HooksClient, hook: str, body: dict[str, Any], header: str | None = None) -> Any:
    response = client.post(f"/hooks/vernemq/{hook}", json=body, headers={"vernemq-hook": header or hook})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def rabbit(client: HooksClient, kind: str, method: str = "POST", **params: str) -> str:
    if method == "POST":
        response = client.post(f"/hooks/rabbitmq/{kind}", data=params)
    else:
        response = client.get(f"/hooks/rabbitmq/{kind}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# -- EMQX 5 ------------------------------------------------------------------------------------------------


def test_emqx_authn_allows_a_certified_thing_with_its_own_client_id_and_never_a_superuser(client: HooksClient) -> None:
    assert emqx_authn(client, username="cam-a", clientid="cam-a", cert_common_name="cam-a") == {
        "result": "allow",
        "is_superuser": False,
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"username": "cam-a", "clientid": "cam-b"}, "another thing's client id"),
        ({"username": "cam-a", "clientid": "cam-a", "password": "hunter2"}, "a password login"),
        ({"username": "cam-b", "clientid": "cam-b", "cert_common_name": "cam-a"}, "a username that is not the CN"),
        ({"username": "ghost", "clientid": "ghost"}, "a thing the registry does not know"),
        ({"username": "cam-new", "clientid": "cam-new"}, "a thing that never enrolled"),
        ({"username": "cam-revoked", "clientid": "cam-revoked"}, "a thing whose certificates are revoked"),
        ({"username": "cam-off", "clientid": "cam-off"}, "a disabled thing"),
        ({"username": "CAM-A", "clientid": "CAM-A"}, "an invalid thing name"),
        ({"clientid": "cam-a"}, "no username"),
        ({"username": ["cam-a"], "clientid": "cam-a"}, "a username that is not a string"),
    ],
)
def test_emqx_authn_denies(client: HooksClient, body: dict[str, Any], why: str) -> None:
    assert emqx_authn(client, **body)["result"] == "deny", why


@pytest.mark.parametrize("body", [b"username=cam-a", b"\xff\xfe", b"[" * 30_000 + b"]" * 30_000, b'["cam-a"]'])
def test_emqx_denies_a_body_that_is_not_a_json_object(client: HooksClient, body: bytes) -> None:
    for hook in ("authn", "authz"):
        response = client.post(f"/hooks/emqx/{hook}", content=body, headers={"content-type": "application/json"})
        assert (response.status_code, response.json()["result"]) == (200, "deny")


def test_emqx_authz_answers_from_the_policy_engine(client: HooksClient) -> None:
    assert emqx_authz(client, "cam-a", "publish", "things/cam-a/telemetry") == "allow"
    assert emqx_authz(client, "cam-a", "publish", "things/cam-b/telemetry") == "deny"
    assert emqx_authz(client, "cam-a", "subscribe", "things/cam-a/commands/#") == "allow"
    assert emqx_authz(client, "cam-a", "subscribe", "things/cam-a/commands/reboot") == "allow"
    assert emqx_authz(client, "cam-a", "subscribe", "things/cam-b/commands/#") == "deny"
    assert emqx_authz(client, "cam-a", "subscribe", "#") == "deny"
    assert emqx_authz(client, "cam-a", "subscribe", "$SYS/#") == "deny"
    assert emqx_authz(client, "cam-a", "all", "things/cam-a/telemetry") == "deny"
    assert emqx_authz(client, "cam-revoked", "publish", "things/cam-revoked/telemetry") == "deny"


# -- VerneMQ -----------------------------------------------------------------------------------------------


def test_vernemq_register_ok_and_error_shapes(client: HooksClient) -> None:
    register = {"peer_addr": "127.0.0.1", "peer_port": 5000, "mountpoint": "", "clean_session": True}
    assert vernemq(client, "auth_on_register", {**register, "username": "cam-a", "client_id": "cam-a"}) == "ok"
    denied = vernemq(client, "auth_on_register", {**register, "username": "cam-a", "client_id": "cam-b"})
    assert denied == {"error": "not_allowed"}
    with_password = {**register, "username": "cam-a", "client_id": "cam-a", "password": "x"}
    assert vernemq(client, "auth_on_register", with_password) == {"error": "not_allowed"}
    m5 = {**register, "username": "cam-a", "client_id": "cam-a", "password": None, "properties": {}}
    assert vernemq(client, "auth_on_register_m5", m5) == "ok"
    other_mountpoint = {**register, "username": "cam-a", "client_id": "cam-a", "mountpoint": "tenant-b"}
    assert vernemq(client, "auth_on_register", other_mountpoint) == {"error": "not_allowed"}


def test_vernemq_publish_and_subscribe_with_its_topic_list(client: HooksClient) -> None:
    publish = {"username": "cam-a", "client_id": "cam-a", "mountpoint": "", "qos": 1, "retain": False}
    assert vernemq(client, "auth_on_publish", {**publish, "topic": "things/cam-a/telemetry"}) == "ok"
    assert vernemq(client, "auth_on_publish_m5", {**publish, "topic": "things/cam-b/x"}) == {"error": "not_allowed"}
    own = [{"topic": "things/cam-a/commands/#", "qos": 1}, {"topic": "things/cam-a/commands/ota", "qos": 0}]
    subscribe = {"username": "cam-a", "client_id": "cam-a", "mountpoint": ""}
    assert vernemq(client, "auth_on_subscribe", {**subscribe, "topics": own}) == "ok"
    mixed = [*own, {"topic": "things/cam-b/commands/#", "qos": 1}]
    assert vernemq(client, "auth_on_subscribe_m5", {**subscribe, "topics": mixed}) == {"error": "not_allowed"}
    assert vernemq(client, "auth_on_subscribe", {**subscribe, "topics": []}) == {"error": "not_allowed"}


def test_vernemq_a_hook_registered_at_the_wrong_endpoint_is_refused(client: HooksClient) -> None:
    # auth_on_publish sent to the register endpoint must not be answered as a connect question.
    body = {"username": "cam-a", "client_id": "cam-a", "mountpoint": ""}
    assert vernemq(client, "auth_on_register", body, header="auth_on_publish") == {"error": "not_allowed"}
    assert client.post("/hooks/vernemq/on_publish", json=body).status_code == 404


# -- RabbitMQ ----------------------------------------------------------------------------------------------


def test_routing_keys_map_back_to_mqtt_topics_as_rabbitmqs_mqtt_plugin_does() -> None:
    assert routing_key_to_mqtt("things.cam-a.telemetry") == "things/cam-a/telemetry"
    assert routing_key_to_mqtt("things.*.telemetry") == "things/+/telemetry"
    assert routing_key_to_mqtt("things.cam-a.commands.#") == "things/cam-a/commands/#"
    # A '.' inside an MQTT level is a level separator on RabbitMQ: decided as the level boundary it is there.
    assert routing_key_to_mqtt("things.cam-a.v1.2") == "things/cam-a/v1/2"


def test_rabbitmq_user_vhost_resource_and_topic(client: HooksClient) -> None:
    assert rabbit(client, "user", username="cam-a") == "allow"  # no tags: never management or administrator
    assert rabbit(client, "user", method="GET", username="cam-a") == "allow"
    assert rabbit(client, "user", username="cam-a", password="") == "deny"
    assert rabbit(client, "user", username="cam-a", password="guessed") == "deny"
    assert rabbit(client, "user", username="ghost") == "deny"
    assert rabbit(client, "vhost", username="cam-a", vhost="/", ip="127.0.0.1", client_id="cam-a") == "allow"
    assert rabbit(client, "vhost", username="cam-a", vhost="/", client_id="cam-b") == "deny"
    assert rabbit(client, "vhost", username="cam-a", vhost="other") == "deny"
    queue = {"username": "cam-a", "vhost": "/", "resource": "queue", "client_id": "cam-a"}
    for permission in ("configure", "read", "write"):
        assert rabbit(client, "resource", **queue, name="mqtt-subscription-cam-aqos1", permission=permission) == "allow"
    assert rabbit(client, "resource", **queue, name="mqtt-subscription-cam-bqos1", permission="read") == "deny"
    exchange = {"username": "cam-a", "vhost": "/", "resource": "exchange", "name": "amq.topic"}
    assert rabbit(client, "resource", **exchange, permission="write") == "allow"
    assert rabbit(client, "resource", **exchange, permission="configure") == "deny"
    assert rabbit(client, "resource", **{**exchange, "name": "amq.direct"}, permission="write") == "deny"
    topic = {"username": "cam-a", "vhost": "/", "resource": "topic", "name": "amq.topic"}
    assert rabbit(client, "topic", **topic, permission="write", routing_key="things.cam-a.telemetry") == "allow"
    assert rabbit(client, "topic", **topic, permission="write", routing_key="things.cam-b.telemetry") == "deny"
    assert rabbit(client, "topic", **topic, permission="read", routing_key="things.cam-a.commands.#") == "allow"
    assert rabbit(client, "topic", **topic, permission="read", routing_key="things.cam-b.commands.*") == "deny"
    spoofed = {**topic, "variable_map.client_id": "cam-b"}
    assert rabbit(client, "topic", **spoofed, permission="write", routing_key="things.cam-a.telemetry") == "deny"


def test_rabbitmq_a_parameter_sent_twice_with_two_values_denies(client: HooksClient) -> None:
    body = "username=cam-a&username=cam-b"
    response = client.post(
        "/hooks/rabbitmq/user", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.text == "deny"


# -- the door: secret and source address ---------------------------------------------------------------------


def test_the_hooks_need_the_secret(platform: Platform) -> None:
    app = create_app(platform, hook_decisions=decisions_for(platform))
    body = {"username": "cam-a", "clientid": "cam-a"}
    with hooks_client(app, secret=None) as anonymous:
        response = anonymous.post("/hooks/emqx/authn", json=body)
        assert response.status_code == 401
        assert "result" not in response.json()  # no decision leaks to a caller without the secret
    with hooks_client(app, secret=SECRET[:-1] + ("x" if SECRET[-1] != "x" else "y")) as wrong:
        assert wrong.post("/hooks/emqx/authn", json=body).status_code == 401
    with hooks_client(app, secret=None) as basic:
        good = base64.b64encode(f"hooks:{SECRET}".encode()).decode()
        response = basic.post(
            "/hooks/rabbitmq/user", data={"username": "cam-a"}, headers={"Authorization": f"Basic {good}"}
        )
        assert response.text == "allow"
        bad = base64.b64encode(b"hooks:guess").decode()
        response = basic.post(
            "/hooks/rabbitmq/user", data={"username": "cam-a"}, headers={"Authorization": f"Basic {bad}"}
        )
        assert response.status_code == 401


def test_the_hooks_answer_only_allowed_networks_even_with_the_secret(platform: Platform) -> None:
    app = create_app(platform, hook_decisions=decisions_for(platform))
    with hooks_client(app, address=("192.0.2.10", 40000)) as remote:
        response = remote.post("/hooks/emqx/authn", json={"username": "cam-a", "clientid": "cam-a"})
        assert response.status_code == 401


def test_no_secret_configured_means_no_hooks(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THINGWARD_HOOKS__SECRET_ENV", raising=False)
    opened = Platform.open(data_dir)
    try:
        with hooks_client(create_app(opened, hook_decisions=decisions_for(opened))) as test_client:
            assert test_client.post("/hooks/emqx/authn", json={"username": "cam-a"}).status_code == 404
    finally:
        opened.close()


@pytest.mark.parametrize("value", ["", "short-secret", "a" * 30 + " spaces!"])
def test_a_missing_or_weak_secret_is_a_clear_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("THINGWARD_HOOKS__SECRET_ENV", SECRET_ENV)
    monkeypatch.setenv(SECRET_ENV, value)
    opened = Platform.open(data_dir)
    try:
        with pytest.raises(ConfigError, match=SECRET_ENV):
            create_app(opened, hook_decisions=decisions_for(opened))
    finally:
        opened.close()


# -- failure means deny, and the cache ------------------------------------------------------------------------


class BrokenAuthorizer:
    """Fault injection: a policy decision that raises, as a bug or a dead dependency would."""

    def authorize(self, thing: str, action: str, topic: str) -> bool:
        raise RuntimeError("the policy store went away")


def test_a_failing_decision_denies_in_every_format(platform: Platform) -> None:
    with platform.db.read() as session:
        certified = load_certified_things(session)
    broken = HookDecisions(BrokenAuthorizer(), certified)
    with hooks_client(create_app(platform, hook_decisions=broken)) as test_client:
        assert emqx_authn(test_client, username="cam-a", clientid="cam-a")["result"] == "deny"
        assert emqx_authz(test_client, "cam-a", "publish", "things/cam-a/telemetry") == "deny"
        publish = {"username": "cam-a", "client_id": "cam-a", "mountpoint": "", "topic": "things/cam-a/t"}
        assert vernemq(test_client, "auth_on_publish", publish) == {"error": "not_allowed"}
        topic = {"username": "cam-a", "vhost": "/", "resource": "topic", "name": "amq.topic", "permission": "write"}
        assert rabbit(test_client, "topic", **topic, routing_key="things.cam-a.telemetry") == "deny"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_registry_not_confirmed_for_too_long_denies_everything(platform: Platform) -> None:
    clock = Clock()
    decisions = decisions_for(platform, clock=clock, max_staleness=30)
    assert decisions.may("cam-a", "publish", "things/cam-a/telemetry")
    clock.now += 31  # the watcher could not read the database for 31 s
    assert not decisions.may("cam-a", "publish", "things/cam-a/telemetry")
    decisions.confirm()
    assert decisions.may("cam-a", "publish", "things/cam-a/telemetry")


def test_the_cache_is_bounded_expires_and_is_emptied_by_a_refresh(platform: Platform) -> None:
    clock = Clock()
    decisions = decisions_for(platform, clock=clock, cache_size=3, ttl=10, max_staleness=3600)
    for n in range(5):
        decisions.may("cam-a", "publish", f"things/cam-a/t{n}")
    assert decisions.cached == 3
    decisions.may("cam-a", "publish", "things/cam-a/t4")
    assert decisions.hits == 1
    clock.now += 11
    decisions.may("cam-a", "publish", "things/cam-a/t4")
    assert decisions.hits == 1  # expired: asked the engine again
    with platform.db.read() as session:
        certified = load_certified_things(session)
    decisions.refresh({name: not_after for name, not_after in certified.items() if name != "cam-a"})
    assert decisions.cached == 0
    assert not decisions.may("cam-a", "publish", "things/cam-a/t4")


@pytest.mark.both_databases
def test_certified_things_are_read_alike_from_both_databases(tmp_path: Path, database_url: str | None) -> None:
    opened = Platform.open(make_data_dir(tmp_path / "data", database_url))
    try:
        decisions = decisions_for(opened)
    finally:
        opened.close()
    identified = {
        name for name in ("cam-a", "cam-b", "cam-new", "cam-revoked", "cam-off", "ghost") if decisions.identified(name)
    }
    assert identified == {"cam-a", "cam-b"}


def test_an_expired_certificate_denies_without_any_registry_change(platform: Platform) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    decisions = decisions_for(platform, now=lambda: later)
    assert not decisions.may_connect("cam-a", "cam-a")


def test_a_policy_change_reaches_the_hooks_of_a_running_server(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    env = {**os.environ, "THINGWARD_HOOKS__SECRET_ENV": SECRET_ENV, SECRET_ENV: SECRET}
    policy = tmp_path / "no-telemetry.json"
    statement = {"sid": "quiet", "effect": "deny", "actions": ["publish"], "resources": ["things/cam-b/telemetry"]}
    policy.write_text(json.dumps({"description": "cam-b may not send telemetry", "statements": [statement]}))
    with serving(data_dir, env) as server:
        client = httpx.Client(
            verify=server_context(server.ca), timeout=10, headers={"Authorization": f"Bearer {SECRET}"}
        )
        with client:

            def answer() -> str:
                body = {"username": "cam-b", "action": "publish", "topic": "things/cam-b/telemetry"}
                return client.post(f"{server.api}/hooks/emqx/authz", json=body).json()["result"]  # type: ignore[no-any-return]

            assert answer() == "allow"
            assert answer() == "allow"  # now cached (30 s time to live)
            for args in (
                ("policy", "add", "no-telemetry", str(policy)),
                ("policy", "attach", "no-telemetry", "--thing", "cam-b"),
            ):
                result = CliRunner().invoke(cli_app, [*args, "--data-dir", str(data_dir), "--json"])
                assert result.exit_code == 0, result.stderr
            assert wait_for(lambda: answer() == "deny", timeout=5, interval=0.1)
            metrics = client.get(f"{server.api}/metrics").text
            counted = {
                line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("thingward_hook_decisions_total{")
            }
            assert counted["allow"] >= 2 and counted["deny"] >= 1
