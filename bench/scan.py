"""Connect-scan speed: `thingward scan` beside Debian's `nmap -sT -T4`, all 65,535 TCP ports, same hosts,
same run, scanners alternating. Needs root (network namespaces).

    .venv/bin/python bench/scan.py --runs 3            # the lab: camera, hub, clean host
    .venv/bin/python bench/scan.py --runs 3 --loopback # also 127.0.0.1 of the lab's scanner namespace

Two figures per side: the connect-scan phase alone (our `connect_scan` in a fresh process, timed inside
it; nmap's own elapsed time from its XML), and the whole process as a user waits for it (`thingward scan
--ports all --no-udp --json`, which also identifies the open ports; `nmap -sT -T4` process wall time).
Agreement: the open-port sets must be equal. All traffic stays inside the lab's namespaces. The loopback
figure scans 127.0.0.1 of the scanner namespace, where only the listeners started here run (this machine's
own loopback has other programs' ports come and go during a run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab.netns import Lab, LabHost, build_home_lab, netns_unusable_reason, remove_leftovers  # noqa: E402

PHASE = """
import asyncio, ipaddress, json, sys, time
from thingward.audit.scanner.connect import connect_scan
hosts = [ipaddress.ip_address(a) for a in sys.argv[1:]]
started = time.perf_counter()
result = asyncio.run(connect_scan(hosts, range(1, 65536), concurrency=1000, timeout=1.0))
elapsed = time.perf_counter() - started
print(json.dumps({"elapsed": elapsed, "open": {str(a): sorted(p) for a, p in result.open.items()}}))
"""

Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def _timed(run: Runner, argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = run(argv)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed, result


def _nmap(run: Runner, hosts: list[str]) -> tuple[float, float, dict[str, set[int]]]:
    wall, result = _timed(run, ["nmap", "-sT", "-T4", "-n", "-Pn", "-p-", "-oX", "-", *hosts])
    tree = ET.fromstring(result.stdout)
    inner = float(tree.find("runstats/finished").get("elapsed"))
    found = {
        h.find("address").get("addr"): {
            int(p.get("portid")) for p in h.iter("port") if p.find("state").get("state") == "open"
        }
        for h in tree.iter("host")
    }
    return wall, inner, {a: p for a, p in found.items() if p}


def _ours_phase(run: Runner, hosts: list[str]) -> tuple[float, dict[str, set[int]]]:
    _, result = _timed(run, [sys.executable, "-c", PHASE, *hosts])
    data = json.loads(result.stdout)
    return data["elapsed"], {a: set(p) for a, p in data["open"].items()}


def _ours_cli(run: Runner, hosts: list[str]) -> tuple[float, dict[str, set[int]]]:
    argv = [sys.executable, "-m", "thingward.cli.main", "scan", *hosts, "--ports", "all", "--no-udp", "--json"]
    wall, result = _timed(run, argv)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    found = {h["address"]: {p["port"] for p in h["ports"] if p["protocol"] == "tcp"} for h in report["hosts"]}
    return wall, {a: p for a, p in found.items() if p}


def bench(name: str, run: Runner, hosts: list[str], runs: int) -> dict[str, object]:
    figures: dict[str, list[float]] = {"ours_phase": [], "ours_cli": [], "nmap_inner": [], "nmap_wall": []}
    agree = True
    for i in range(runs):
        order = ["ours", "nmap"] if i % 2 == 0 else ["nmap", "ours"]
        for side in order:
            if side == "nmap":
                wall, inner, nmap_open = _nmap(run, hosts)
                figures["nmap_wall"].append(wall)
                figures["nmap_inner"].append(inner)
            else:
                phase, phase_open = _ours_phase(run, hosts)
                cli, cli_open = _ours_cli(run, hosts)
                figures["ours_phase"].append(phase)
                figures["ours_cli"].append(cli)
        agree = agree and phase_open == nmap_open == cli_open
        print(
            f"{name} run {i + 1}: ours {figures['ours_phase'][-1]:.2f} s scan / {figures['ours_cli'][-1]:.2f} s "
            f"process; nmap {figures['nmap_inner'][-1]:.2f} s scan / {figures['nmap_wall'][-1]:.2f} s process; "
            f"open ports agree: {phase_open == nmap_open == cli_open} "
            f"{sorted((a, sorted(p)) for a, p in nmap_open.items())}",
            flush=True,
        )
    medians = {k: statistics.median(v) for k, v in figures.items()}
    return {"target": name, "hosts": len(hosts), "runs": runs, "agree": agree, **medians, "all": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, choices=range(1, 21), metavar="1..20")
    parser.add_argument("--loopback", action="store_true", help="also scan 127.0.0.1 from the host")
    args = parser.parse_args()
    reason = netns_unusable_reason()
    if reason is not None:
        raise SystemExit(f"the lab needs network namespaces: {reason}")
    remove_leftovers()
    results = []
    with tempfile.TemporaryDirectory(prefix="thingward-bench-scan-") as workdir, Lab(Path(workdir)) as lab:
        home = build_home_lab(lab)
        hosts = [home.camera.address, home.hub.address, home.clean.address]

        def in_lab(argv: list[str]) -> subprocess.CompletedProcess[str]:
            return lab.run_in_scanner(argv, timeout=600)

        if args.loopback:
            scanner = LabHost("scanner", lab.scanner_namespace, "127.0.0.1")
            www = Path(workdir) / "www"
            www.mkdir()
            for port in (80, 8080, 31337):
                lab.start(scanner, ["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(www)], f"{port}")
                lab.wait_for_tcp(scanner, port)
            results.append(bench("127.0.0.1 (namespace)", in_lab, ["127.0.0.1"], args.runs))
        results.append(bench("lab (3 hosts)", in_lab, hosts, args.runs))
    print()
    print(
        "| target | ports | ours: scan phase | nmap -sT -T4: scan | ratio | ours: whole process | nmap: process "
        "| agree |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        ports = 65535 * int(r["hosts"])  # type: ignore[call-overload]
        print(
            f"| {r['target']} | {ports:,} | {r['ours_phase']:.2f} s | {r['nmap_inner']:.2f} s | "
            f"{r['nmap_inner'] / r['ours_phase']:.2f}x | {r['ours_cli']:.2f} s | {r['nmap_wall']:.2f} s | "
            f"{'yes' if r['agree'] else 'NO'} |"
        )
    print("(ratio > 1: ours is faster; medians of", args.runs, "runs)")


if __name__ == "__main__":
    main()
