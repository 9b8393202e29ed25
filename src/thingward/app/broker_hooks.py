"""HTTP hooks for clustered brokers: EMQX 5 HTTP authn/authz, VerneMQ webhooks, RabbitMQ's HTTP auth backend.

Each route only translates: the broker's request becomes a question to `HookDecisions` (the policy
engine's answer after an identity check) and the answer goes back in the broker's format. Identity is
the device certificate's common name, which brokers set up for certificate login pass as the username.
A password login is refused: devices authenticate with certificates.

The hooks are an oracle of the policy and a door into the data plane, so they answer only callers from
`[hooks] allowed_networks` (loopback by default) that present the shared secret, as a bearer token or as
the password of HTTP basic auth (`http://hooks:SECRET@host/...` in a broker's URL). A caller refused
there gets 401 and no decision. Anything that goes wrong inside a hook answers deny, in the broker's own
deny format (an error status would mean "ignore" to EMQX and "next authorizer" to some chains).

    EMQX      POST /hooks/emqx/authn, /hooks/emqx/authz                JSON {"result": "allow"|"deny"}
    VerneMQ   POST /hooks/vernemq/auth_on_register[_m5], ...publish, ...subscribe
                                                                       JSON {"result": "ok"|{"error": ...}}
    RabbitMQ  GET or POST /hooks/rabbitmq/user, vhost, resource, topic text "allow" | "deny"
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from thingward.broker.decisions import HookDecisions

__all__ = ["HOOKS_PREFIX", "hooks_router", "routing_key_to_mqtt"]

logger = logging.getLogger(__name__)

HOOKS_PREFIX = "/hooks"
MAX_TOPICS_PER_SUBSCRIBE = 100
VERNEMQ_HOOKS = frozenset(
    f"{hook}{suffix}" for hook in ("auth_on_register", "auth_on_publish", "auth_on_subscribe") for suffix in ("", "_m5")
)
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def routing_key_to_mqtt(routing_key: str) -> str:
    """The MQTT topic (or filter) behind a RabbitMQ routing (or binding) key: the MQTT plugin's own mapping.

    RabbitMQ 3.x maps MQTT to AMQP with `/` -> `.` and `+` -> `*` (`#` stays), and back with `*` -> `+`,
    `.` -> `/`. A `.` inside an MQTT topic level is therefore a level separator on RabbitMQ: the hook
    decides on the topic as RabbitMQ routes it, with every `.` read as `/` (thing names have no dots).
    """
    return routing_key.replace("*", "+").replace(".", "/")


def _presented_secret(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def _from_allowed_network(request: Request, networks: tuple[_Network, ...]) -> bool:
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    return value if isinstance(value, str) else None


def _no_password(params: Mapping[str, Any]) -> bool:
    """Devices log in with certificates: a non-empty password means a password login (EMQX sends "" for none)."""
    password = params.get("password")
    return password is None or password == ""


def _has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


async def _json_object(request: Request) -> dict[str, Any]:
    """The JSON object in the body, or {} (which every hook denies) if it is not one."""
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # RecursionError: a hostile body nested thousands deep
        return {}
    return body if isinstance(body, dict) else {}


def hooks_router(
    decisions: HookDecisions,
    secret: str,
    allowed_networks: tuple[str, ...],
    *,
    rabbitmq_vhost: str = "/",
    rabbitmq_exchange: str = "amq.topic",
) -> APIRouter:
    """The hook routes, answering only callers from `allowed_networks` that present `secret`."""
    if not secret:
        raise ValueError("the broker hooks need a secret")
    expected = secret.encode()
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks)
    router = APIRouter(prefix=HOOKS_PREFIX, include_in_schema=False)

    def refused(request: Request) -> Response | None:
        if not _from_allowed_network(request, networks):
            logger.warning("broker hook call from %s refused: not from an allowed network", request.client)
            return JSONResponse({"error": "not from an allowed network ([hooks] allowed_networks)"}, status_code=401)
        presented = _presented_secret(request)
        if presented is None or not hmac.compare_digest(presented.encode(), expected):
            logger.warning("broker hook call from %s refused: missing or wrong secret", request.client)
            return JSONResponse(
                {"error": "missing or wrong hook secret"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="thingward hooks"'},
            )
        return None

    def decide(what: str, question: Callable[[], bool]) -> bool:
        try:
            return bool(question())
        except Exception:
            logger.exception("broker hook %s failed; denying", what)
            return False

    def subscribe_allowed(thing: str, topic_filter: str) -> bool:
        # Brokers behind hooks check a subscription, not each delivery: for an exact topic the receive
        # right is checked too; a wildcard filter relies on the subscribe statements (docs/broker-hooks.md).
        if not decisions.may(thing, "subscribe", topic_filter):
            return False
        return _has_wildcard(topic_filter) or decisions.may(thing, "receive", topic_filter)

    # -- EMQX 5 ------------------------------------------------------------------------------------------

    def emqx_answer(allowed: bool, authn: bool = False) -> JSONResponse:
        # Always 200 with an explicit result: EMQX reads other statuses as "ignore". Never a superuser.
        body: dict[str, Any] = {"result": "allow" if allowed else "deny"}
        if authn:
            body["is_superuser"] = False
        return JSONResponse(body)

    @router.post("/emqx/authn")
    async def emqx_authn(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        body = await _json_object(request)

        def question() -> bool:
            username, client_id = _text(body, "username"), _text(body, "clientid")
            if username is None or client_id is None or not _no_password(body):
                return False
            if "cert_common_name" in body and body["cert_common_name"] != username:
                return False
            return decisions.may_connect(username, client_id)

        return emqx_answer(decide("emqx authn", question), authn=True)

    @router.post("/emqx/authz")
    async def emqx_authz(request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        body = await _json_object(request)

        def question() -> bool:
            username, action, topic = _text(body, "username"), _text(body, "action"), _text(body, "topic")
            if username is None or topic is None:
                return False
            if action == "publish":
                return decisions.may(username, "publish", topic)
            if action == "subscribe":
                return subscribe_allowed(username, topic)
            return False

        return emqx_answer(decide("emqx authz", question))

    # -- VerneMQ -----------------------------------------------------------------------------------------

    def vernemq_answer(allowed: bool) -> JSONResponse:
        return JSONResponse({"result": "ok"} if allowed else {"result": {"error": "not_allowed"}})

    @router.post("/vernemq/{hook}")
    async def vernemq(hook: str, request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        if hook not in VERNEMQ_HOOKS:
            return JSONResponse({"error": f"no VerneMQ hook {hook!r}: use one of {sorted(VERNEMQ_HOOKS)}"}, 404)
        body = await _json_object(request)
        # A hook registered at the wrong endpoint would be answered as another question: refuse it.
        sent = request.headers.get("vernemq-hook")

        def question() -> bool:
            username = _text(body, "username")
            if sent != hook or username is None or body.get("mountpoint", "") != "":
                return False
            if hook.startswith("auth_on_register"):
                client_id = _text(body, "client_id")
                return client_id is not None and _no_password(body) and decisions.may_connect(username, client_id)
            if hook.startswith("auth_on_publish"):
                topic = _text(body, "topic")
                return topic is not None and decisions.may(username, "publish", topic)
            topics = body.get("topics")
            if not isinstance(topics, list) or not 0 < len(topics) <= MAX_TOPICS_PER_SUBSCRIBE:
                return False
            # All or nothing: one topic refused refuses the SUBSCRIBE (no rewriting of the topic list).
            for item in topics:
                topic_filter = item.get("topic") if isinstance(item, dict) else None
                if not isinstance(topic_filter, str) or not subscribe_allowed(username, topic_filter):
                    return False
            return True

        return vernemq_answer(decide(f"vernemq {hook}", question))

    # -- RabbitMQ (rabbitmq_auth_backend_http) -------------------------------------------------------------

    async def rabbitmq_params(request: Request) -> dict[str, str]:
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        if request.method == "POST":
            pairs += parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        params: dict[str, str] = {}
        for key, value in pairs:
            if key in params and params[key] != value:
                params[key] = "\x00"  # a repeated key with two values: ambiguous, and no valid name or topic
            else:
                params[key] = value
        return params

    def rabbitmq_answer(allowed: bool) -> PlainTextResponse:
        # "allow" with no tags: a device is never a management user or an administrator.
        return PlainTextResponse("allow" if allowed else "deny")

    def rabbitmq_question(kind: str, params: dict[str, str]) -> bool:
        username = params.get("username")
        if username is None or not decisions.identified(username):
            return False
        if kind == "user":
            # A certificate login sends no password parameter at all; RabbitMQ prefers a username and
            # password over the certificate, so any password here is someone choosing their name.
            return "password" not in params and decisions.may_connect(username, params.get("client_id", username))
        if params.get("vhost") != rabbitmq_vhost:
            return False
        # A certificate login carries no client id; the MQTT plugin sends it with every later question.
        client_id = params.get("variable_map.client_id", params.get("client_id", username))
        if kind == "vhost":
            return decisions.may_connect(username, client_id)
        if client_id != username:
            return False
        resource, name, permission = params.get("resource"), params.get("name"), params.get("permission")
        if kind == "resource":
            if resource == "exchange":
                return name == rabbitmq_exchange and permission in {"read", "write"}
            if resource == "queue":
                own_queues = {f"mqtt-subscription-{username}qos0", f"mqtt-subscription-{username}qos1"}
                return name in own_queues and permission in {"configure", "read", "write"}
            return False
        if resource != "topic" or name != rabbitmq_exchange:
            return False
        routing_key = params.get("routing_key")
        if routing_key is None:
            return False
        topic = routing_key_to_mqtt(routing_key)
        if permission == "write":
            return decisions.may(username, "publish", topic)
        if permission == "read":
            return subscribe_allowed(username, topic)
        return False

    async def rabbitmq(kind: str, request: Request) -> Response:
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            params = await rabbitmq_params(request)
        except Exception:
            logger.exception("reading a RabbitMQ hook request failed; denying")
            return rabbitmq_answer(False)
        return rabbitmq_answer(decide(f"rabbitmq {kind}", lambda: rabbitmq_question(kind, params)))

    def rabbitmq_endpoint(kind: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            return await rabbitmq(kind, request)

        return endpoint

    for kind in ("user", "vhost", "resource", "topic"):
        router.add_api_route(f"/rabbitmq/{kind}", rabbitmq_endpoint(kind), methods=["GET", "POST"])

    return router
