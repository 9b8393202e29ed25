"""A network-namespace lab for onboarding: a camera with an access point, a phone, and a home network
with the platform on it.

    twob<pid>-app  (the phone: `thingward onboard`)
        ap0p 10.232.6.2 ───veth─── ap0 10.232.6.1   twob<pid>-cam  (the camera: `device onboard-agent`)
        wlan0 10.232.7.20                            wlan0 (no address until the simulated Wi-Fi join)
          │                                            │
          └──── br0 10.232.7.1 in twob<pid>-home ──────┘  (`thingward serve --host 10.232.7.1`)

The camera's uplink has no address until its agent "joins" the simulated home Wi-Fi, so it can reach
the platform only after onboarding. Addresses exist only inside these namespaces. `OnboardingLab.close`
stops every process and deletes every namespace, and runs even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.netns import _ip, _kill_namespace_processes, remove_leftovers

PREFIX = "twob"
AP_NET, HOME_NET = "10.232.6", "10.232.7"
DEVICE_AP_ADDRESS = f"{AP_NET}.1"
APP_AP_ADDRESS = f"{AP_NET}.2"
PLATFORM_ADDRESS = f"{HOME_NET}.1"
DEVICE_HOME_ADDRESS = f"{HOME_NET}.10"
APP_HOME_ADDRESS = f"{HOME_NET}.20"
HTTP_PORT, MQTT_PORT = 8443, 8883  # inside the home namespace only
THINGWARD = [sys.executable, "-m", "thingward.cli.main"]
WAIT = 30.0


@dataclass
class OnboardingLab:
    workdir: Path
    run_id: str = field(default_factory=lambda: str(os.getpid()))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{PREFIX}{self.run_id}-{role}"

    @property
    def app(self) -> str:
        return self.ns("app")

    @property
    def cam(self) -> str:
        return self.ns("cam")

    @property
    def home(self) -> str:
        return self.ns("home")

    def __enter__(self) -> OnboardingLab:
        remove_leftovers(PREFIX)
        try:
            for role in ("home", "cam", "app"):
                _ip("netns", "add", self.ns(role))
                self._namespaces.append(self.ns(role))
                _ip("-n", self.ns(role), "link", "set", "lo", "up")
            _ip("-n", self.home, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.home, "addr", "add", f"{PLATFORM_ADDRESS}/24", "dev", "br0")
            _ip("-n", self.home, "link", "set", "br0", "up")
            # the camera's access point, seen by the phone
            _ip("link", "add", "ap0", "netns", self.cam, "type", "veth", "peer", "name", "ap0p", "netns", self.app)
            _ip("-n", self.cam, "addr", "add", f"{DEVICE_AP_ADDRESS}/24", "dev", "ap0")
            _ip("-n", self.app, "addr", "add", f"{APP_AP_ADDRESS}/24", "dev", "ap0p")
            _ip("-n", self.cam, "link", "set", "ap0", "up")
            _ip("-n", self.app, "link", "set", "ap0p", "up")
            # uplinks into the home network: the phone's is up, the camera's waits for the Wi-Fi join
            for role, port in (("cam", "vcam"), ("app", "vapp")):
                _ip("link", "add", "wlan0", "netns", self.ns(role), "type", "veth", "peer", "name", port, "netns",
                    self.home)  # fmt: skip
                _ip("-n", self.home, "link", "set", port, "master", "br0")
                _ip("-n", self.home, "link", "set", port, "up")
            _ip("-n", self.app, "addr", "add", f"{APP_HOME_ADDRESS}/24", "dev", "wlan0")
            _ip("-n", self.app, "link", "set", "wlan0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, namespace: str, argv: list[str], log_name: str, stdout_pipe: bool = False
              ) -> subprocess.Popen[bytes]:  # fmt: skip
        log = (self.workdir / f"{log_name}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            bufsize=0,  # unbuffered: a line read is never left in a buffer the selector cannot see
        )
        log.close()
        self.processes.append(process)
        return process

    def run(self, namespace: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def close(self) -> None:
        for process in self.processes:
            self.stop(process)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self.processes.clear()
        for namespace in reversed(self._namespaces):
            _kill_namespace_processes(namespace)
            _ip("netns", "del", namespace, check=False)
        self._namespaces.clear()

    # --- the parts ---

    def serve(self, data_dir: Path) -> subprocess.Popen[bytes]:
        """`thingward serve` on the home network; returns once it printed its endpoints."""
        process = self.start(self.home, [*THINGWARD, "serve", "--data-dir", str(data_dir), "--host",
                                         PLATFORM_ADDRESS, "--http-port", str(HTTP_PORT), "--mqtt-port",
                                         str(MQTT_PORT), "--json"], "serve", stdout_pipe=True)  # fmt: skip
        line = read_line(process.stdout, WAIT)  # type: ignore[arg-type]
        if not line:
            raise RuntimeError(f"thingward serve did not start; see {self.workdir / 'serve.log'}")
        return process

    def capture(self, namespace: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """tcpdump on every interface of a namespace, packet-buffered; returns when it listens."""
        pcap = self.workdir / f"{name}.pcap"
        process = self.start(namespace, ["tcpdump", "-i", "any", "-n", "-s", "0", "-U", "-w", str(pcap)],
                             f"tcpdump-{name}")  # fmt: skip
        log = self.workdir / f"tcpdump-{name}.log"
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if "listening on" in log.read_text(errors="replace"):
                return process, pcap
            if process.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError(f"tcpdump did not start within {WAIT} s")

    def write_home_wifi(self, ssid: str, passphrase: str) -> Path:
        """The simulated home access point the camera's agent checks its credentials against."""
        path = self.workdir / "home-ap.json"
        path.write_text(json.dumps({"ssid": ssid, "passphrase": passphrase, "interface": "wlan0",
                                    "address": f"{DEVICE_HOME_ADDRESS}/24"}))  # fmt: skip
        path.chmod(0o600)
        return path

    def start_agent(self, label_file: Path, state_dir: Path, data_dir: Path, home_ap: Path, name: str,
                    *extra: str) -> subprocess.Popen[bytes]:  # fmt: skip
        argv = [*THINGWARD, "device", "onboard-agent", "--label-file", str(label_file), "--model", "cam-x",
                "--ap-address", DEVICE_AP_ADDRESS, "--state-dir", str(state_dir), "--platform-url",
                f"https://{PLATFORM_ADDRESS}:{HTTP_PORT}", "--platform-ca", str(data_dir / "pki" / "ca.crt"),
                "--mqtt", f"{PLATFORM_ADDRESS}:{MQTT_PORT}", "--simulated-wifi", str(home_ap), "--json",
                *extra]  # fmt: skip
        return self.start(self.cam, argv, name, stdout_pipe=True)


def read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from a process's stdout within `timeout` (empty if none)."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            return ""
        return stream.readline().decode()
    finally:
        selector.close()


def wait_event(process: subprocess.Popen[bytes], kind: str, timeout: float = WAIT) -> dict[str, Any]:
    """The next event of `kind` the agent prints (one JSON object per line), within `timeout`."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = read_line(process.stdout, max(0.0, deadline - time.monotonic()))  # type: ignore[arg-type]
        if not line:
            if process.poll() is not None:
                break
            continue
        event: dict[str, Any] = json.loads(line)
        seen.append(event["event"])
        if event["event"] == kind:
            return event
    raise AssertionError(f"the agent did not report {kind!r} within {timeout} s (saw {seen})")


def connect_refused(lab: OnboardingLab, namespace: str, host: str, port: int) -> bool:
    """True if a TCP connect from `namespace` to host:port is refused (nothing listens)."""
    code = (
        "import socket,sys\ns=socket.socket();s.settimeout(5)\n"
        f"try:\n s.connect(({host!r},{port}))\nexcept ConnectionRefusedError:\n sys.exit(7)\nsys.exit(0)"
    )
    return lab.run(namespace, [sys.executable, "-c", code], timeout=20).returncode == 7
