"""A network-namespace lab for the LAN scanner: a "scanner" namespace joined by a bridge to test hosts.

Every host is its own namespace (`ip netns add`) with one veth into a bridge that lives inside the scanner
namespace, so no lab packet can reach this machine's own interfaces or leave it. Addresses come from one
private /24 that exists only inside the lab. Services run with `ip netns exec`; a host that needs accounts
(telnetd, sshd) gets its own /etc/passwd and /etc/shadow bind-mounted in a private mount namespace
(`unshare --mount`), so this machine's accounts are never touched.

Namespace names carry a prefix and the pid of the test process; `remove_leftovers` deletes those of earlier
runs whose process is gone. `Lab.close` stops every process and deletes every namespace, and is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "twlab"
SUBNET = "10.231.7"  # the lab's /24, inside the namespaces only
SCANNER_ADDRESS = f"{SUBNET}.1"
WAIT = 10.0  # seconds: the bound on every wait for a lab service to come up
SCAN_TIMEOUT = 120  # seconds for one scanner or nmap run in the lab


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def netns_unusable_reason() -> str | None:
    """None if `ip netns` works here (root, iproute2, a kernel that allows it), else why not."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"{PREFIX}probe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        return f"'ip netns add' failed: {e.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def remove_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete lab namespaces of earlier runs (their test process is gone); returns the names removed."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix):
            continue
        owner = name[len(prefix) :].split("-", 1)[0]
        if owner.isdigit() and Path(f"/proc/{owner}").exists():
            continue  # a live run's lab
        _kill_namespace_processes(name)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _kill_namespace_processes(namespace: str) -> None:
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class LabHost:
    name: str
    namespace: str
    address: str


@dataclass
class Lab:
    """The lab of one test run. Use as a context manager; `close` runs even when the body raises."""

    workdir: Path
    prefix: str = PREFIX
    run_id: str = field(default_factory=lambda: str(os.getpid()))
    hosts: dict[str, LabHost] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @property
    def scanner_namespace(self) -> str:
        return f"{self.prefix}{self.run_id}-scan"

    def __enter__(self) -> Lab:
        try:
            self._add_namespace(self.scanner_namespace)
            ns = self.scanner_namespace
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", ns, "addr", "add", f"{SCANNER_ADDRESS}/24", "dev", "br0")
            _ip("-n", ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def add_host(self, role: str, last_octet: int) -> LabHost:
        namespace = f"{self.prefix}{self.run_id}-{role}"
        address = f"{SUBNET}.{last_octet}"
        self._add_namespace(namespace)
        port = f"v{last_octet}"
        _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", port, "netns",
            self.scanner_namespace)  # fmt: skip
        _ip("-n", self.scanner_namespace, "link", "set", port, "master", "br0")
        _ip("-n", self.scanner_namespace, "link", "set", port, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = LabHost(role, namespace, address)
        self.hosts[role] = host
        return host

    def start(self, host: LabHost, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """Run a service in the host's namespace, in its own process group, output to a log file."""
        log = (self.workdir / f"{host.name}-{log_name}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", host.namespace, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def start_with_accounts(
        self, host: LabHost, argv: list[str], log_name: str, passwd: Path, shadow: Path, group: Path
    ) -> subprocess.Popen[bytes]:
        """Like `start`, but the service sees the lab's passwd/shadow/group (and a private /run) only."""
        script = (
            "set -e; mount --make-rprivate /; "
            f"mount --bind {passwd} /etc/passwd; mount --bind {shadow} /etc/shadow; mount --bind {group} /etc/group; "
            "mount -t tmpfs -o mode=0755 lab-run /run; mkdir -m 0755 /run/sshd; "
            'exec "$@"'
        )
        return self.start(host, ["unshare", "--mount", "sh", "-c", script, "lab", *argv], log_name)

    def run_in_scanner(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.scanner_namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_for_tcp(self, host: LabHost, port: int) -> None:
        """Wait (bounded) until something listens on host:port, seen from inside the host's namespace."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            listening = _ip("netns", "exec", host.namespace, "ss", "-Hltn", f"sport = :{port}", check=False)
            if listening.stdout.strip():
                return
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a lab service exited early (code {process.returncode}); logs in {self.workdir}"
                    )
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {host.address}:{port} after {WAIT} s; logs in {self.workdir}")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()
        for namespace in reversed(self._namespaces):
            _kill_namespace_processes(namespace)  # children that left the process group (telnet sessions)
            _ip("netns", "del", namespace, check=False)
        self._namespaces.clear()


def free_port_in_loopback() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The home lab of issue 5: what exists, so tests can say exactly what the scanner must find.
CAMERA_TELNET_LOGIN = ("support", "support")  # a Mirai pair, in the scanner's shipped list
CAMERA_WEB_LOGIN = ("admin", "password")  # busybox httpd with basic auth; a Mirai pair
HUB_SSH_LOGIN = ("admin", "admin")  # a common vendor default, in the shipped list


@dataclass(frozen=True)
class HomeLab:
    lab: Lab
    camera: LabHost  # telnetd (busybox) with a default login; a web UI with basic auth; anonymous mosquitto
    hub: LabHost  # openssh-server with a user whose password is a default
    clean: LabHost  # only MQTTS on 8883, no anonymous access, a strong password
    ca_file: Path  # the lab CA that issued the clean host's certificate

    @property
    def expected_open_ports(self) -> dict[str, set[int]]:
        return {self.camera.address: {23, 80, 1883}, self.hub.address: {22}, self.clean.address: {8883}}


def _hash_password(password: str) -> str:
    return subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def _account_files(directory: Path, user: str, password: str, uid: int) -> tuple[Path, Path, Path]:
    """passwd/shadow/group of a lab host: root locked, one user with the given password."""
    directory.mkdir(parents=True, exist_ok=True)
    passwd, shadow, group = directory / "passwd", directory / "shadow", directory / "group"
    passwd.write_text(
        "root:x:0:0:root:/root:/bin/sh\nsshd:x:101:65534::/run/sshd:/usr/sbin/nologin\n"
        f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n{user}:x:{uid}:{uid}:lab user:/tmp:/bin/sh\n"
    )
    group.write_text(f"root:x:0:\nnogroup:x:65534:\n{user}:x:{uid}:\n")
    shadow.write_text(
        "root:!:19000:0:99999:7:::\nsshd:!:19000::::::\nnobody:!:19000::::::\n"
        f"{user}:{_hash_password(password)}:19000:0:99999:7:::\n"
    )
    shadow.chmod(0o600)
    return passwd, shadow, group


def build_home_lab(lab: Lab) -> HomeLab:
    """Start camera, hub and clean hosts with their services; returns when every port listens."""
    from thingward.pki.ca import build_root_ca, certificate_pem, issue_server_certificate, private_key_pem
    from thingward.pki.files import write_atomic, write_secret

    work = lab.workdir
    camera, hub, clean = lab.add_host("camera", 10), lab.add_host("hub", 11), lab.add_host("clean", 12)

    # camera: busybox telnetd whose login program is busybox's own login (a symlink named "login")
    login = work / "bin" / "login"
    login.parent.mkdir(parents=True, exist_ok=True)
    login.symlink_to(shutil.which("busybox") or "/bin/busybox")
    files = _account_files(work / "camera-etc", *CAMERA_TELNET_LOGIN, uid=4242)
    lab.start_with_accounts(
        camera, ["busybox", "telnetd", "-F", "-p", "23", "-b", camera.address, "-l", str(login)], "telnetd", *files
    )
    www = work / "camera-www"
    www.mkdir()
    (www / "index.html").write_text("<html><body>camera</body></html>\n")
    httpd_conf = work / "camera-httpd.conf"
    httpd_conf.write_text("/:{}:{}\n".format(*CAMERA_WEB_LOGIN))
    lab.start(camera, ["busybox", "httpd", "-f", "-p", f"{camera.address}:80", "-h", str(www), "-c", str(httpd_conf)],
              "httpd")  # fmt: skip
    anonymous = work / "camera-mosquitto.conf"
    anonymous.write_text(
        f"listener 1883 {camera.address}\nallow_anonymous true\npersistence false\nlog_dest stderr\nuser root\n"
    )
    lab.start(camera, ["mosquitto", "-c", str(anonymous)], "mosquitto")

    # hub: openssh-server with password logins, its own host key and the lab's accounts
    host_key = work / "hub-ssh" / "ssh_host_ed25519_key"
    host_key.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, timeout=30)
    sshd_config = work / "hub-ssh" / "sshd_config"
    sshd_config.write_text(
        f"ListenAddress {hub.address}:22\nHostKey {host_key}\nPidFile none\nUsePAM no\nPasswordAuthentication yes\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin no\nStrictModes no\nMaxStartups 100:30:200\n"
        f"AuthorizedKeysFile none\nPrintMotd no\n"
    )
    files = _account_files(work / "hub-etc", *HUB_SSH_LOGIN, uid=4243)
    lab.start_with_accounts(hub, [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)],
                            "sshd", *files)  # fmt: skip

    # clean: MQTTS only, certificate from a lab CA, no anonymous access, one user with a strong password
    ca = build_root_ca("thingward scanner lab CA")
    key, cert = issue_server_certificate(ca, [clean.address])
    ca_file, cert_file, key_file = work / "lab-ca.crt", work / "clean.crt", work / "clean.key"
    write_atomic(ca_file, certificate_pem(ca.certificate))
    write_atomic(cert_file, certificate_pem(cert))
    write_secret(key_file, private_key_pem(key))
    password_file = work / "clean-passwords"
    strong = os.urandom(18).hex()
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(password_file), "sensor", strong], check=True, timeout=30)
    clean_conf = work / "clean-mosquitto.conf"
    clean_conf.write_text(
        f"listener 8883 {clean.address}\nallow_anonymous false\npassword_file {password_file}\n"
        f"certfile {cert_file}\nkeyfile {key_file}\ncafile {ca_file}\ntls_version tlsv1.2\n"
        "persistence false\nlog_dest stderr\nuser root\n"
    )
    lab.start(clean, ["mosquitto", "-c", str(clean_conf)], "mosquitto")

    for host, port in ((camera, 23), (camera, 80), (camera, 1883), (hub, 22), (clean, 8883)):
        lab.wait_for_tcp(host, port)
    return HomeLab(lab=lab, camera=camera, hub=hub, clean=clean, ca_file=ca_file)


def run_thingward_scan(lab: Lab, *args: str) -> dict[str, Any]:
    """`thingward scan ... --json` as a real process inside the lab's scanner namespace."""
    result = lab.run_in_scanner(
        [sys.executable, "-m", "thingward.cli.main", "scan", *args, "--json"], timeout=SCAN_TIMEOUT
    )
    if result.returncode not in (0, 1):
        raise RuntimeError(f"thingward scan failed ({result.returncode}): {result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def nmap_open_ports(lab: Lab, ports: str, *hosts: str, timing: str = "-T4") -> dict[str, set[int]]:
    """Open ports per host from Debian's `nmap -sT`, run in the same namespace as our scanner."""
    result = lab.run_in_scanner(
        ["nmap", "-sT", timing, "-n", "-Pn", "-p", ports, "-oX", "-", *hosts], timeout=SCAN_TIMEOUT
    )
    if result.returncode != 0:
        raise RuntimeError(f"nmap failed ({result.returncode}): {result.stderr}")
    found: dict[str, set[int]] = {}
    for host in ET.fromstring(result.stdout).iter("host"):
        address = host.find("address").get("addr")
        found[address] = {int(p.get("portid")) for p in host.iter("port") if p.find("state").get("state") == "open"}
    return found
