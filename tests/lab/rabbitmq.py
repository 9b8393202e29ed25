"""A private RabbitMQ node on loopback (Debian's rabbitmq-server), for the broker hook tests.

Everything of the node lives in one temp dir: its own node name, Erlang cookie, HOME, database, logs,
config and plugin list, and its own epmd on an unused port (started here in the foreground, so it is
ours to stop). Only the MQTT plugin's TLS listener is open (no AMQP, no plaintext MQTT): client
certificate required, the certificate's CN as the username (`ssl_cert_login`), and every
authentication and authorization decision asked of the HTTP backend, over HTTPS with the hook secret
as basic auth in the URL. `stop()` kills the node's whole process group and the epmd; it runs even
when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0


def rabbitmq_missing() -> str | None:
    """Why a RabbitMQ node cannot be started here, or None."""
    if not RABBITMQ_SERVER.exists():
        return f"rabbitmq-server is not installed ({RABBITMQ_SERVER} missing): apt-get install rabbitmq-server"
    if shutil.which("epmd") is None and not Path("/usr/lib/erlang/bin/epmd").exists():
        return "epmd (Erlang) is not installed"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class RabbitTls:
    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass
class RabbitNode:
    directory: Path
    mqtt_port: int
    process: subprocess.Popen[bytes]
    epmd: subprocess.Popen[bytes]

    @property
    def log_text(self) -> str:
        parts = []
        for path in sorted((self.directory / "log").glob("*.log")):
            parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in (self.process, self.epmd):
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # Erlang helpers (erl_child_setup, inet_gethost) share the group: make sure none is left.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def _erlang_list(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(directory: Path, mqtt_port: int, tls: RabbitTls, hooks_url: str, hook_ca: Path) -> dict[str, Path]:
    """rabbitmq.conf, advanced.config and enabled_plugins for a node asking `hooks_url` about everything."""
    conf = directory / "rabbitmq.conf"
    conf.write_text(
        "\n".join(
            [
                "listeners.tcp = none",
                "mqtt.listeners.tcp = none",
                f"mqtt.listeners.ssl.default = 127.0.0.1:{mqtt_port}",
                "mqtt.allow_anonymous = false",
                "mqtt.ssl_cert_login = true",
                "mqtt.vhost = /",
                "mqtt.exchange = amq.topic",
                "ssl_cert_login_from = common_name",
                f"ssl_options.cacertfile = {tls.ca_file}",
                f"ssl_options.certfile = {tls.cert_file}",
                f"ssl_options.keyfile = {tls.key_file}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true",
                "ssl_options.versions.1 = tlsv1.3",
                "ssl_options.versions.2 = tlsv1.2",
                "auth_backends.1 = http",
                "auth_http.http_method = post",
                f"auth_http.user_path = {hooks_url}/user",
                f"auth_http.vhost_path = {hooks_url}/vhost",
                f"auth_http.resource_path = {hooks_url}/resource",
                f"auth_http.topic_path = {hooks_url}/topic",
                "auth_http.request_timeout = 5000",
                "auth_http.connection_timeout = 2000",
                "log.console = false",
                "log.file.level = info",
                "",
            ]
        )
    )
    advanced = directory / "advanced.config"
    # The HTTP backend's TLS options exist only in advanced.config on RabbitMQ 3.10: verify thingward's
    # certificate against the platform CA.
    advanced.write_text(
        "[{rabbitmq_auth_backend_http, [{ssl_options, ["
        f"{{cacertfile, {_erlang_list(hook_ca)}}}, {{verify, verify_peer}}, "
        "{versions, ['tlsv1.3', 'tlsv1.2']}]}]}].\n"
    )
    plugins = directory / "enabled_plugins"
    plugins.write_text("[rabbitmq_mqtt,rabbitmq_auth_backend_http].\n")
    return {"conf": conf, "advanced": advanced, "plugins": plugins}


@contextmanager
def rabbitmq_node(directory: Path, tls: RabbitTls, hooks_url: str, hook_ca: Path) -> Iterator[RabbitNode]:
    """A started node whose MQTT TLS listener accepts connections; stopped (process group killed) at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    home = directory / "home"
    home.mkdir(exist_ok=True)
    cookie = home / ".erlang.cookie"
    cookie.write_text(secrets.token_hex(20))
    cookie.chmod(0o400)
    mqtt_port, dist_port, epmd_port = free_port(), free_port(), free_port()
    files = write_config(directory, mqtt_port, tls, hooks_url, hook_ca)
    env_file = directory / "rabbitmq-env.conf"
    env_file.write_text("")
    node_name = f"hooks{secrets.token_hex(4)}@localhost"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "RABBITMQ_NODENAME": node_name,
        "RABBITMQ_USE_LONGNAME": "false",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(free_port()),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONF_ENV_FILE": str(env_file),
        "RABBITMQ_CONFIG_FILE": str(files["conf"]),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(files["advanced"]),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(files["plugins"]),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_PID_FILE": str(directory / "rabbit.pid"),
        "RABBITMQ_ALLOW_INPUT": "",
    }
    epmd_binary = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    epmd = subprocess.Popen(
        [epmd_binary, "-port", str(epmd_port), "-address", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    out = (directory / "stdout.txt").open("wb")
    process = subprocess.Popen(
        [str(RABBITMQ_SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory
    )
    node = RabbitNode(directory, mqtt_port, process, epmd)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(mqtt_port):
            if process.poll() is not None or time.monotonic() > deadline:
                out.flush()
                raise RuntimeError(
                    f"RabbitMQ did not open its MQTT listener (exit {process.poll()}):\n"
                    f"{(directory / 'stdout.txt').read_text(errors='replace')[-4000:]}\n{node.log_text[-4000:]}"
                )
            time.sleep(0.2)
        yield node
    finally:
        node.stop()
        out.close()
