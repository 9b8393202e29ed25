"""bench/dataplane_brokers.py at its smallest: it must still run against the service functions it drives.

The figures are not checked (they belong to docs/benchmarks.md); that every message arrived, and that the
script still finds its way through init, enrollment and both Mosquittos, is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "dataplane_brokers.py"


def run_bench(*args: str) -> str:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_issuance_enrolls_real_csrs_through_the_service_function() -> None:
    out = run_bench("issuance", "--certificates", "3", "--https", "0", "--openssl-seconds", "1")
    service = re.search(r"service: Platform\.enroll.*?\s([\d,]+)\s+[\d.]+$", out, re.MULTILINE)
    assert service is not None, out
    assert int(service[1].replace(",", "")) > 0


def test_throughput_moves_every_qos1_message_through_raw_and_managed_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("Debian's mosquitto is not installed (scripts/install.sh installs it)")
    out = run_bench("throughput", "--pairs", "1", "--qos", "1", "--messages", "300", "--skip-embedded")
    row = re.search(r"^\s+1\s+1\s+([\d,]+)\s+([\d,]+)\s+[\d.]+(.*)$", out, re.MULTILINE)
    assert row is not None, out
    assert "not received" not in row[3], out
    assert int(row[1].replace(",", "")) > 0 and int(row[2].replace(",", "")) > 0


def test_no_qos1_message_is_lost_when_a_burst_outruns_managed_mosquittos_ingestion() -> None:
    """5,000 QoS 1 messages from 50 devices at once: more than one client queue of the old config (1,000) held,
    so Mosquitto acknowledged them and dropped the excess before ingestion read it; every one is stored now."""
    if shutil.which("mosquitto") is None:
        pytest.skip("Debian's mosquitto is not installed (scripts/install.sh installs it)")
    out = run_bench("noloss", "--devices", "50", "--messages", "100", "--broker", "mosquitto")
    row = re.search(r"^mosquitto\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    assert row is not None, out
    acked, stored, duplicates, missing, complete = (int(v) for v in row.groups())
    assert (acked, stored, duplicates, missing, complete) == (5000, 5000, 0, 0, 50), out
