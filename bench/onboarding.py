"""What an onboarding session costs the device: the PoP-bound handshake plus a `status` command over
loopback, per second, beside a TLS 1.3 handshake plus one request/response over loopback (ECDHE with a
P-256 server certificate, Python's ssl module), same run. Bounded: --sessions each, --runs rounds.

    .venv/bin/python bench/onboarding.py --sessions 200 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ssl
import statistics
import tempfile
import time
from pathlib import Path

from thingward.device.onboarding.client import ProvisioningClient
from thingward.device.onboarding.label import new_label
from thingward.device.onboarding.service import DeviceInfo, ProvisioningRequest, ProvisioningService
from thingward.pki.ca import build_root_ca, certificate_pem, issue_server_certificate, private_key_pem

HOST = "127.0.0.1"


async def ours(sessions: int) -> float:
    label = new_label("cam-bench")

    async def never(_request: ProvisioningRequest) -> None:
        raise RuntimeError("not in a benchmark")

    service = ProvisioningService(DeviceInfo("cam-bench", "cam-x"), label.pop, HOST, never, port=0,
                                  window=dt.timedelta(minutes=15))  # fmt: skip
    await service.open()
    try:
        start = time.perf_counter()
        for _ in range(sessions):
            async with ProvisioningClient(label, HOST, service.port) as app:
                await app.status()
        return sessions / (time.perf_counter() - start)
    finally:
        await service.close_listener()


async def tls(sessions: int, directory: Path) -> float:
    ca = build_root_ca("bench CA")
    key, cert = issue_server_certificate(ca, [HOST])
    (directory / "ca.crt").write_bytes(certificate_pem(ca.certificate))
    (directory / "s.crt").write_bytes(certificate_pem(cert))
    (directory / "s.key").write_bytes(private_key_pem(key))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(directory / "s.crt", directory / "s.key")
    client_ctx = ssl.create_default_context(cafile=str(directory / "ca.crt"))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(16)
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.perf_counter()
        for _ in range(sessions):
            reader, writer = await asyncio.open_connection(HOST, port, ssl=client_ctx, server_hostname=HOST)
            writer.write(b"x" * 16)
            await reader.readexactly(16)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        return sessions / (time.perf_counter() - start)
    finally:
        server.close()
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ours_rates, tls_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(min(args.runs, 20)):
            ours_rates.append(asyncio.run(ours(min(args.sessions, 5000))))
            tls_rates.append(asyncio.run(tls(min(args.sessions, 5000), Path(tmp))))
    a, b = statistics.median(ours_rates), statistics.median(tls_rates)
    print(f"provisioning session (X25519+PoP, confirmations, AES-GCM status): {a:8.0f} sessions/s  "
          f"({1000 / a:.2f} ms each)")  # fmt: skip
    print(f"TLS 1.3 handshake + one exchange (P-256 certificate):             {b:8.0f} sessions/s  "
          f"({1000 / b:.2f} ms each)")  # fmt: skip
    print(f"ratio ours / TLS: {a / b:.2f}x  (median of {len(ours_rates)} runs of {args.sessions})")


if __name__ == "__main__":
    main()
