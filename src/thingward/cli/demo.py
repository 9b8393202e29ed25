"""`thingward demo` and `thingward simulate`: the journey shown live with rich."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import func, select

from thingward.app.web.first_run import FirstAdmin, ensure_first_admin
from thingward.cli.common import console
from thingward.config import CONFIG_FILE
from thingward.device.simulator import SIMULATED_MODEL, SimulatedCamera, provision_cameras
from thingward.device.state import DeviceState, ListeningPorts
from thingward.platform import Platform, init_data_dir
from thingward.registry.models import Message, Thing

STORE_WAIT = 5.0  # seconds to wait for sent messages to be stored before the summary
DEMO_CAMERAS = ["front-door-cam", "backyard-cam"]
# The backyard camera runs old firmware that still opens Telnet: the audit at the end finds it.
DEMO_STATES = {
    "front-door-cam": DeviceState(SIMULATED_MODEL, "1.2.0", ListeningPorts(tcp=(443,), udp=(5353,))),
    "backyard-cam": DeviceState(SIMULATED_MODEL, "1.0.3", ListeningPorts(tcp=(23, 443), udp=(5353,))),
}
DEMO_ADVISORY = "TW-DEMO-2026-01"
# The camera of the app journey: it sees a person every few seconds, uploads the snapshot over its own
# mutual TLS, and the people it is shared with see the marked snapshot live on their open pages.
DEMO_MOTION_CAMERA = "front-porch-cam"
DEMO_MOTION_INTERVAL = 6.0
DEMO_HOUSEHOLD = "demo-household"


class EventLog:
    """The last lines of what happened, shared between device threads and the display."""

    def __init__(self, size: int = 12) -> None:
        self._lines: list[str] = []
        self._size = size
        self._lock = threading.Lock()
        self.refusals: list[dict[str, str]] = []

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(f"{time.strftime('%H:%M:%S')} {line}")
            del self._lines[: -self._size]

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)


def _render(cameras: list[SimulatedCamera], stored: dict[str, int], log: EventLog, header: str) -> Group:
    table = Table("camera", "connected", "telemetry sent", "motion events", "stored by cloud", "last event")
    for cam in cameras:
        table.add_row(
            cam.name,
            "[green]yes[/]" if cam.device.connected else "[red]no[/]",
            str(cam.stats.telemetry),
            str(cam.stats.events),
            str(stored.get(cam.name, 0)),
            cam.stats.last_event or "-",
        )
    return Group(Panel(header, title="thingward demo"), table, Panel("\n".join(log.lines()) or "-", title="what flows"))


def _newest_message_id(platform: Platform) -> int:
    with platform.db.read() as session:
        return session.execute(select(func.max(Message.id))).scalar() or 0


def _stored_counts(platform: Platform, names: list[str], after_id: int) -> dict[str, int]:
    """Messages stored for each camera in this run (a reused demo dir has older ones)."""
    with platform.db.read() as session:
        rows = session.execute(
            select(Thing.name, func.count(Message.id))
            .join(Message, Message.thing_id == Thing.id)
            .where(Thing.name.in_(names), Message.id > after_id)
            .group_by(Thing.name)
        ).all()
    counts = {name: 0 for name in names}
    counts.update({name: count for name, count in rows})
    return counts


def attempt_cross_device_read(attacker: SimulatedCamera, victim: str, log: EventLog, timeout: float = 5.0) -> str:
    """The attacker camera asks for the victim's topics; the broker must refuse (SUBACK 0x80)."""
    client = attacker.device.mqtt_client
    done = threading.Event()
    outcome: dict[str, str] = {}

    def on_subscribe(_c: Any, _u: Any, _mid: int, reason_codes: list[Any], _p: Any) -> None:
        outcome["result"] = "refused" if all(rc.is_failure for rc in reason_codes) else "GRANTED"
        done.set()

    previous = client.on_subscribe
    client.on_subscribe = on_subscribe
    topic_filter = f"things/{victim}/#"
    try:
        client.subscribe(topic_filter, qos=0)
        done.wait(timeout)
    finally:
        client.on_subscribe = previous
    result = outcome.get("result", "no answer")
    log.add(
        f"[bold]{attacker.name}[/] subscribes to [bold]{topic_filter}[/] -> "
        + ("[red]REFUSED by policy (SUBACK 0x80)[/]" if result == "refused" else f"[yellow]{result}[/]")
    )
    log.refusals.append({"thing": attacker.name, "action": "subscribe", "topic": topic_filter, "result": result})
    return result


def _run_cameras(
    platform: Platform,
    api: str,
    mqtt_url: str,
    names: list[str],
    duration: float,
    live: bool,
    header: str,
    log: EventLog,
    stop: threading.Event,
    with_attack: bool,
    states: dict[str, DeviceState] | None = None,
) -> dict[str, Any]:
    parsed = urlsplit(mqtt_url)
    provisioned = provision_cameras(platform, api, names)
    for name in names:
        if provisioned[name].enrolled_now:
            log.add(f"{name}: key made on the device, CSR sent over HTTPS, certificate issued")
        else:
            log.add(f"{name}: enrolled before; reusing its key and certificate")
    baseline = _newest_message_id(platform)
    cameras = [
        SimulatedCamera(
            n,
            provisioned[n].directory,
            parsed.hostname or "127.0.0.1",
            parsed.port or 8883,
            period=1.0,
            on_event=log.add,
            state=(states or {}).get(n),
        )
        for n in names
    ]
    try:
        for cam in cameras:
            cam.start()
            log.add(f"{cam.name}: connected over mutual TLS as itself")
        if with_attack and len(cameras) > 1:
            attempt_cross_device_read(cameras[0], cameras[1].name, log)
        deadline = time.monotonic() + duration if duration > 0 else None
        with (
            Live(_render(cameras, {}, log, header), console=console, refresh_per_second=4, transient=False)
            if live
            else contextlib.nullcontext() as display
        ):
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(0.5)
                if display is not None:
                    display.update(_render(cameras, _stored_counts(platform, names, baseline), log, header))
    finally:
        for cam in cameras:
            cam.stop()
    sent = {c.name: c.stats.telemetry + c.stats.events for c in cameras}
    # The ingest writer flushes every 0.1 s: wait (bounded) for the last QoS 1 messages to land.
    deadline = time.monotonic() + STORE_WAIT
    stored = _stored_counts(platform, names, baseline)
    while stored != sent and time.monotonic() < deadline:
        time.sleep(0.05)
        stored = _stored_counts(platform, names, baseline)
    return {
        "cameras": {
            c.name: {
                "telemetry_sent": c.stats.telemetry,
                "events_sent": c.stats.events,
                "stored": stored[c.name],
            }
            for c in cameras
        },
        "refused": log.refusals,
    }


def run_simulation(
    platform: Platform, api: str, mqtt_url: str, count: int, duration: float, prefix: str, live: bool
) -> dict[str, Any]:
    names = [f"{prefix}-{i + 1}" for i in range(count)]
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        return _run_cameras(
            platform,
            api,
            mqtt_url,
            names,
            duration,
            live,
            f"{count} simulated cameras -> {mqtt_url}",
            EventLog(),
            stop,
            with_attack=False,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _prepare_fleet_facts(platform: Platform) -> None:
    """The demo model's allowed ports and an advisory for its old firmware, as an operator would set them."""
    from thingward.errors import ConflictError
    from thingward.platform import cli_actor
    from thingward.registry import device_state

    with platform.db.session() as session:
        device_state.set_model(session, cli_actor(), SIMULATED_MODEL, [443], [5353], "the demo's simulated camera")
    with contextlib.suppress(ConflictError), platform.db.session() as session:
        device_state.add_advisory(
            session,
            cli_actor(),
            DEMO_ADVISORY,
            SIMULATED_MODEL,
            "<1.1.0",
            "high",
            "demo: the web UI of firmware before 1.1.0 accepts any session cookie",
        )


def _share_with_household(platform: Platform, email: str, things: list[str]) -> bool:
    """The demo household: the first admin in a user group the demo's cameras are shared with (as owner),
    so their pages list the cameras and get the motion notifications. False if that person is not there."""
    from thingward.accounts import sharing
    from thingward.accounts.service import user_by_email
    from thingward.errors import ConflictError, NotFoundError
    from thingward.platform import cli_actor
    from thingward.registry.things import get_thing

    with platform.db.session() as session:
        try:
            user = user_by_email(session, email)
        except NotFoundError:
            return False
        with contextlib.suppress(ConflictError):
            sharing.add_user_group(session, cli_actor(), DEMO_HOUSEHOLD, "the demo's household")
        with contextlib.suppress(ConflictError):
            sharing.add_member(session, cli_actor(), DEMO_HOUSEHOLD, user)
        for name in things:
            groups = {group for group, _role in sharing.shares_of(session, get_thing(session, name))}
            if DEMO_HOUSEHOLD not in groups:  # a second run of the demo writes no second audit event
                sharing.share_thing(session, cli_actor(), name, DEMO_HOUSEHOLD, "owner")
    return True


def _start_motion_camera(
    platform: Platform, endpoints: Any, stop: threading.Event, log: EventLog
) -> tuple[threading.Thread, dict[str, Any]]:
    """The motion camera in a thread of its own until `stop`; returns the thread and its running figures."""
    from thingward.device.camera import simulate_camera

    figures: dict[str, Any] = {"motion_events": 0, "errors": 0}
    parsed = urlsplit(endpoints.mqtt)

    def on_motion(last: dict[str, Any]) -> None:
        figures["motion_events"] += 1
        person = last.get("person", {})
        log.add(
            f"[bold]{DEMO_MOTION_CAMERA}[/]: someone at the door -> snapshot uploaded over mutual TLS, motion "
            f"published; the cloud compares it and notifies the household (person at {person.get('x')},"
            f"{person.get('y')})"
        )

    def run() -> None:
        try:
            stats = simulate_camera(
                platform,
                DEMO_MOTION_CAMERA,
                endpoints.api,
                endpoints.device_api,
                parsed.hostname or "127.0.0.1",
                parsed.port or 8883,
                interval=DEMO_MOTION_INTERVAL,
                stop=stop,
                on_motion=on_motion,
            )
            figures.update(snapshots=stats.snapshots, errors=stats.errors)
        except Exception as e:  # the rest of the demo goes on; say what failed
            figures["errors"] += 1
            figures["failure"] = str(e)
            log.add(f"[red]{DEMO_MOTION_CAMERA} stopped: {e}[/]")

    thread = threading.Thread(target=run, name="demo-motion-camera", daemon=True)
    thread.start()
    return thread, figures


def _audit_summary(platform: Platform) -> dict[str, Any]:
    """Run the fleet audit and keep what the demo shows: counts by severity and the worst findings."""
    import datetime as dt

    from thingward.audit.model import severity_rank
    from thingward.audit.service import run_audit

    results = run_audit(platform).results
    findings = sorted(
        ((f.severity, r.info.id, f.resource, f.message) for r in results for f in r.findings),
        key=lambda item: (severity_rank(item[0]), item[1], item[2]),
    )
    counts = {
        severity: sum(1 for f in findings if f[0] == severity) for severity in ("critical", "high", "medium", "low")
    }
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "findings": counts,
        "top": [{"severity": s, "check": c, "resource": r, "message": m} for s, c, r, m in findings[:5]],
    }


async def run_demo(data_dir: Path, duration: float, live: bool) -> dict[str, Any]:
    from thingward.server import ThingwardServer

    if not (data_dir / CONFIG_FILE).exists():
        init_data_dir(data_dir)
    platform = Platform.open(data_dir, check_schema_version=False)
    platform.upgrade_schema()  # a demo dir from an older thingward is brought up to date
    _prepare_fleet_facts(platform)
    first_admin = ensure_first_admin(platform)  # no default accounts: a random password, shown once
    server = ThingwardServer(platform, "127.0.0.1", 0, 0)
    endpoints = await server.start()
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    header = (
        f"MQTT (mutual TLS only): {endpoints.mqtt}\nHTTPS API: {endpoints.api}\n"
        f"Platform CA: {endpoints.ca_certificate}\nData dir: {platform.settings.data_dir}\n"
        + _web_app_lines(endpoints.api, first_admin)
        + ("Ctrl-C stops everything." if duration <= 0 else f"Stops after {duration:.0f} s.")
    )
    log = EventLog()
    web: dict[str, Any] = {"url": f"{endpoints.api}/login"}
    if first_admin is not None:
        web.update(admin_email=first_admin.email, admin_password=first_admin.password)
    motion_thread: threading.Thread | None = None
    motion: dict[str, Any] = {}

    try:
        from thingward.app.web.first_run import FIRST_ADMIN_EMAIL

        things = [*DEMO_CAMERAS, DEMO_MOTION_CAMERA]
        await asyncio.to_thread(provision_cameras, platform, endpoints.api, things)
        web["household"] = await asyncio.to_thread(_share_with_household, platform, FIRST_ADMIN_EMAIL, things)
        if not live:
            # Scripts (and the browser test) learn where to sign in before the run ends; stdout keeps the
            # one summary object.
            print(json.dumps({"event": "ready", "web": web}), file=sys.stderr, flush=True)
        motion_thread, motion = _start_motion_camera(platform, endpoints, stop, log)
        result = await asyncio.to_thread(
            _run_cameras,
            platform,
            endpoints.api,
            endpoints.mqtt,
            DEMO_CAMERAS,
            duration,
            live,
            header,
            log,
            stop,
            True,
            DEMO_STATES,
        )
        stop.set()
        await asyncio.to_thread(motion_thread.join, 30)
        audit = await asyncio.to_thread(_audit_summary, platform)
    finally:
        stop.set()
        if motion_thread is not None and motion_thread.is_alive():
            await asyncio.to_thread(motion_thread.join, 30)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
        platform.close()
    return {
        "data_dir": str(platform.settings.data_dir),
        **endpoints.to_dict(),
        **result,
        "motion_camera": {"name": DEMO_MOTION_CAMERA, **motion},
        "audit": audit,
        "web": web,
    }


def _web_app_lines(api: str, first_admin: FirstAdmin | None) -> str:
    lines = f"Web app: {api}/login\n"
    if first_admin is not None:
        lines += (
            f"First admin: {first_admin.email}  password (shown once, change it at the first sign-in): "
            f"[bold]{first_admin.password}[/]\n"
        )
    return lines + (
        f"Sign in there: {DEMO_MOTION_CAMERA} sees someone every {DEMO_MOTION_INTERVAL:.0f} s and the marked snapshot "
        "shows up live on your open page.\n"
    )
