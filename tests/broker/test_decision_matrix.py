"""One decision, every broker: a table of identities, actions and topics, run through real paho clients over
mutual TLS against the embedded broker and managed Mosquitto; each answer must be the policy engine's.

How an answer is observed (MQTT 3.1.1 refuses a publish only by not delivering it):
- connect: CONNACK accepted and the session still open after a round trip and a short wait (Mosquitto
  cannot refuse a CONNECT by name; the adapter closes a session the policy refuses right after it opens);
- publish: an observer with every right (the `observer` thing) sees the row's unique payload, or sees the
  publisher's sentinel (on a topic it may publish) without it;
- subscribe: the SUBACK, and whether a probe published inside the filter reaches the subscriber;
- receive: the identity subscribes a filter, the observer publishes the topic (live, or retained before
  the subscription), then a sentinel the identity may receive; the probe must arrive before it or never.

The one place the two brokers differ by design: an acl_file never refuses a SUBSCRIBE (Mosquitto 2.0.11
answers SUBACK 0), and checks each delivery instead. So on Mosquitto a refused subscription shows as
"nothing it may not receive arrives through it", and the subscribe answer compared is the delivery's.
Each broker is started once for the module; every client is fresh, so no row sees another's subscriptions.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.conftest import MqttDevice, Received
from lab.mosquitto import MosquittoHarness, require_mosquitto
from lab.mqtt import Creds, Pki, broker_harnesses
from thingward.audit.mitigate import QUARANTINE_POLICY_DOCUMENT
from thingward.policy.document import DEFAULT_POLICY, parse_policy_document
from thingward.policy.engine import PolicyEngine
from thingward.policy.world import GroupFacts, PolicyWorld, ThingFacts

GRACE = 0.01  # seconds after a sentinel: ordered delivery brings a message sent before it first
LINGER = 0.4  # seconds a refused session takes at most to be closed on Mosquitto

DOORS_POLICY = parse_policy_document(
    {
        "statements": [
            {
                "sid": "group-channel",
                "effect": "allow",
                "actions": ["publish", "subscribe", "receive"],
                "resources": ["groups/${group.name}/#"],
            },
            {
                "sid": "locked-channel",
                "effect": "deny",
                "actions": ["publish", "receive"],
                "resources": ["groups/${group.name}/locked/#"],
            },
            {
                "sid": "fleet-telemetry",
                "effect": "allow",
                "actions": ["subscribe", "receive"],
                "resources": ["things/+/telemetry"],
            },
        ]
    }
)
OBSERVER_POLICY = parse_policy_document(
    {
        "statements": [
            {"effect": "allow", "actions": ["connect"], "resources": ["${thing.name}"]},
            {"effect": "allow", "actions": ["publish", "subscribe", "receive"], "resources": ["#"]},
            {"effect": "allow", "actions": ["subscribe", "receive"], "resources": ["$SYS/#"]},
        ]
    }
)


def matrix_world() -> PolicyWorld:
    return PolicyWorld.from_facts(
        things=[
            ThingFacts("cam1", groups=("default",)),
            ThingFacts("cam2", groups=("default",)),
            ThingFacts("lock1", groups=("doors",)),
            ThingFacts("qcam", groups=("quarantine",)),
            ThingFacts("observer"),
        ],
        groups=[GroupFacts("default"), GroupFacts("doors", parent="default"), GroupFacts("quarantine")],
        policies={"default-device": DEFAULT_POLICY, "doors": DOORS_POLICY, "quarantine": QUARANTINE_POLICY_DOCUMENT},
        group_policies={"default": ["default-device"], "doors": ["doors"], "quarantine": ["quarantine"]},
        thing_policies={"observer": ["observer"]},
    )


WORLD = matrix_world()
WORLD_POLICIES = {**WORLD.policies, "observer": OBSERVER_POLICY}
WORLD = PolicyWorld(
    things=WORLD.things,
    groups=WORLD.groups,
    policies=WORLD_POLICIES,
    group_policies=WORLD.group_policies,
    thing_policies=WORLD.thing_policies,
)
ENGINE = PolicyEngine(WORLD)


@dataclass(frozen=True)
class Identity:
    label: str
    thing: str  # the certificate's name
    revoked: bool = False

    def allowed(self, action: str, topic: str) -> bool:
        return not self.revoked and ENGINE.authorize(self.thing, action, topic)  # type: ignore[arg-type]

    @property
    def sentinel_publish(self) -> str | None:
        """A topic this identity may publish, for the publish rows' sentinel."""
        for topic in (f"things/{self.thing}/telemetry", f"things/{self.thing}/update/status"):
            if self.allowed("publish", topic):
                return topic
        return None


IDENTITIES = {
    identity.label: identity
    for identity in (
        Identity("cam1", "cam1"),
        Identity("cam2", "cam2"),
        Identity("lock1", "lock1"),  # in group doors (child of default), with a group policy
        Identity("qcam", "qcam"),  # quarantined
        Identity("ghost", "ghost"),  # a CA-signed certificate of a name that is no thing
        Identity("revoked", "cam1", revoked=True),  # cam1's older certificate, in the CRL
    )
}


@dataclass(frozen=True)
class Row:
    who: str
    action: str
    topic: str
    probe: str = ""  # subscribe rows: a topic inside the filter; receive rows: the filter subscribed
    retained: bool = False

    @property
    def id(self) -> str:
        extra = f" via {self.probe}" if self.probe else ""
        return f"{self.who} {self.action}{' retained' if self.retained else ''} {self.topic}{extra}"


def _rows() -> list[Row]:
    rows: list[Row] = []
    for who in IDENTITIES:
        me = IDENTITIES[who].thing
        other = "cam2" if me != "cam2" else "cam1"
        rows.append(Row(who, "connect", me))
        for topic in (
            f"things/{me}/telemetry",
            f"things/{me}/update/status",
            f"things/{other}/telemetry",
            f"things/{other}/commands/open",
            "groups/doors/news",
            "groups/doors/locked/code",
            "$SYS/broker/uptime",
        ):
            rows.append(Row(who, "publish", topic))
        for topic_filter, probe in (
            (f"things/{me}/commands/#", f"things/{me}/commands/reboot"),
            (f"things/{me}/#", f"things/{me}/commands/reboot"),
            (f"things/{other}/#", f"things/{other}/telemetry"),
            ("#", f"things/{other}/telemetry"),
            ("+/cam1/telemetry", "things/cam1/telemetry"),
            ("things/+/telemetry", f"things/{other}/telemetry"),
            ("things/+/commands/open", f"things/{other}/commands/open"),
            ("groups/doors/#", "groups/doors/news"),
            ("$SYS/#", "$SYS/broker/uptime"),
        ):
            rows.append(Row(who, "subscribe", topic_filter, probe))
        for topic, via, retained in (
            (f"things/{me}/commands/open", f"things/{me}/commands/#", False),
            (f"things/{me}/update/firmware", f"things/{me}/update/#", True),
            (f"things/{other}/telemetry", "things/+/telemetry", False),
            (f"things/{other}/telemetry", "things/+/telemetry", True),
            (f"things/{other}/commands/open", "#", True),
            ("groups/doors/news", "groups/doors/#", False),
            ("groups/doors/locked/code", "groups/doors/#", False),
            ("groups/doors/locked/code", "groups/doors/#", True),
        ):
            rows.append(Row(who, "receive", topic, via, retained))
    return rows


ROWS = _rows()


class Lab:
    """Clients of one broker: the observer (every right) and one session per identity, made on first use."""

    def __init__(self, name: str, port: int, pki: Pki, creds: dict[str, Creds]) -> None:
        self.name = name
        self.port = port
        self.pki = pki
        self.creds = creds
        self.nonce = itertools.count()
        self.made: list[MqttDevice] = []
        self.sessions: dict[str, MqttDevice | None] = {}
        self.observer = self.client(creds["observer"])
        assert self.observer.connect().accepted
        assert self.observer.subscribe("#") != 128
        self.observer.subscribe("$SYS/#")  # refused by the embedded broker, granted by Mosquitto

    def client(self, creds: Creds) -> MqttDevice:
        made = MqttDevice(port=self.port, ca_file=self.pki.ca_file, creds=creds, client_id=creds.name)
        self.made.append(made)
        return made

    def session(self, who: str) -> MqttDevice | None:
        """`who`'s session, or None when the broker refused it (or closed it right after opening it)."""
        if who not in self.sessions:
            client = self.client(self.creds[who])
            outcome = client.connect()
            accepted = outcome.accepted and not client.disconnected.wait(LINGER)
            if accepted:
                sentinel = f"things/{IDENTITIES[who].thing}/commands/sentinel"
                assert client.subscribe(sentinel) != 128
            self.sessions[who] = client if accepted else None
        return self.sessions[who]

    def payload(self) -> bytes:
        return f"{self.name}-{next(self.nonce)}".encode()

    def close(self) -> None:
        for made in self.made:
            made.close()


def drain(messages: queue.Queue[Received]) -> None:
    while not messages.empty():
        messages.get_nowait()


def seen_before(messages: queue.Queue[Received], wanted: bytes, sentinel: bytes | None, wait: float) -> bool:
    """True if a message with payload `wanted` arrives before the sentinel's (plus GRACE), or within `wait`."""
    deadline = time.monotonic() + wait
    found = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return found
        try:
            message = messages.get(timeout=remaining)
        except queue.Empty:
            return found
        if message.payload == wanted:
            found = True
            if sentinel is None:
                return True
        if sentinel is not None and message.payload == sentinel:
            deadline = min(deadline, time.monotonic() + GRACE)


def unsubscribe(client: MqttDevice, topic_filter: str, sentinel_topic: str) -> None:
    """Unsubscribe, and wait until the broker has handled it (a SUBACK sent after it comes after it)."""
    client.client.unsubscribe(topic_filter)
    assert client.subscribe(sentinel_topic) != 128


def observe(lab: Lab, row: Row) -> bool:
    identity = IDENTITIES[row.who]
    session = lab.session(row.who)
    if session is None:
        return False
    if row.action == "connect":
        return session.client.is_connected()
    if row.action == "publish":
        drain(lab.observer.messages)
        wanted, sentinel = lab.payload(), lab.payload()
        session.publish(row.topic, wanted)
        if identity.sentinel_publish is not None:
            session.publish(identity.sentinel_publish, sentinel)
            return seen_before(lab.observer.messages, wanted, sentinel, wait=5.0)
        return seen_before(lab.observer.messages, wanted, None, wait=0.5)
    # subscribe and receive: what reaches the identity through a filter
    topic_filter, topic = (row.topic, row.probe) if row.action == "subscribe" else (row.probe, row.topic)
    sentinel_topic = f"things/{identity.thing}/commands/sentinel"
    drain(session.messages)
    wanted = lab.payload()
    if row.retained:
        lab.observer.publish(topic, wanted, retain=True)
    try:
        granted = session.subscribe(topic_filter) != 128
        if row.action == "subscribe" and lab.name == "mosquitto":
            assert granted, "an acl_file never refuses a SUBSCRIBE in Mosquitto 2.0.11: has that changed?"
        if not row.retained:
            lab.observer.publish(topic, wanted)
        sentinel = lab.payload()
        lab.observer.publish(sentinel_topic, sentinel)
        delivered = seen_before(session.messages, wanted, sentinel, wait=5.0)
        if row.action == "subscribe" and lab.name == "embedded":
            assert delivered <= granted
            return granted
        return delivered
    finally:
        unsubscribe(session, topic_filter, sentinel_topic)  # the next row must not see this row's subscription
        if row.retained:
            lab.observer.publish(topic, b"", retain=True)


def expected(lab: Lab, row: Row) -> bool:
    identity = IDENTITIES[row.who]
    if row.action in ("connect", "publish"):
        return identity.allowed(row.action, row.topic)
    topic_filter, topic = (row.topic, row.probe) if row.action == "subscribe" else (row.probe, row.topic)
    if not identity.allowed("connect", identity.thing):
        return False
    if lab.name == "mosquitto":
        # SUBSCRIBE is not refused; every delivery is checked (and the subscribe answer is its delivery's).
        return identity.allowed("receive", topic)
    if row.action == "subscribe":
        return identity.allowed("subscribe", topic_filter)
    return identity.allowed("subscribe", topic_filter) and identity.allowed("receive", topic)


# -- the brokers, once each --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, dict[str, Creds]]:
    pki = Pki(tmp_path_factory.mktemp("matrix-pki"))
    creds = {label: pki.device(i.thing, label=label) for label, i in IDENTITIES.items()}
    creds["observer"] = pki.device("observer")
    pki.write_crl(creds["revoked"].serial)
    return pki, creds


@pytest.fixture(scope="module", params=["embedded", "mosquitto"])
def lab(request: pytest.FixtureRequest, matrix_pki: tuple[Pki, dict[str, Creds]]) -> Iterator[Lab]:
    pki, creds = matrix_pki
    if request.param == "embedded":
        with broker_harnesses(pki, ENGINE) as start:
            harness = start()
            made = Lab("embedded", harness.port, pki, creds)
            yield made
            made.close()
    else:
        require_mosquitto()
        work_dir: Path = request.getfixturevalue("tmp_path_factory").mktemp("matrix-mosquitto")
        mosquitto = MosquittoHarness(pki, ENGINE, work_dir)
        try:
            made = Lab("mosquitto", mosquitto.port, pki, creds)
            yield made
            made.close()
        finally:
            mosquitto.close()


def test_the_matrix_covers_every_identity_action_and_both_answers() -> None:
    covered = {(row.who, row.action) for row in ROWS}
    assert covered == {(who, action) for who in IDENTITIES for action in ("connect", "publish", "subscribe", "receive")}
    answers = {ENGINE.authorize(IDENTITIES[r.who].thing, "publish", r.topic) for r in ROWS if r.action == "publish"}
    assert answers == {True, False}


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_broker_answers_as_the_policy_engine(lab: Lab, row: Row) -> None:
    assert observe(lab, row) == expected(lab, row), f"{lab.name}: {row.id}"


def test_every_row_is_decided(lab: Lab, request: pytest.FixtureRequest) -> None:
    """A guard on the observation itself: the observer really sees an allowed publish on this broker."""
    cam1 = lab.session("cam1")
    assert cam1 is not None
    drain(lab.observer.messages)
    wanted = lab.payload()
    cam1.publish("things/cam1/telemetry", wanted)
    assert seen_before(lab.observer.messages, wanted, None, wait=5.0)
