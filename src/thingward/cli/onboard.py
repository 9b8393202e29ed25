"""`thingward onboard` (the app's part: set a new device up over its access point and claim it) and the
device side: `thingward device onboard-agent` (run a simulated camera's onboarding) and
`thingward device label` (make a device id and label code at the factory)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from thingward.cli.common import JsonFlag, console, emit, handle_errors
from thingward.device.onboarding.label import DeviceLabel, new_label, parse_label
from thingward.device.onboarding.service import PROVISIONING_PORT
from thingward.device.onboarding.window import DEFAULT_WINDOW_MINUTES, window_from_minutes
from thingward.errors import InvalidInputError
from thingward.pki.files import write_secret

DEFAULT_AP_ADDRESS = "192.168.4.1"  # where a camera in AP mode is found on its own network


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip("\r\n")
    except OSError as e:
        raise InvalidInputError(f"cannot read the {what} from {path}: {e.strerror}") from None
    if not value:
        raise InvalidInputError(f"{path} is empty: it must hold the {what}")
    return value


def _address(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port given (an IPv6 address without brackets has colons of its own)
        return text.strip("[]"), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"{text!r}: give HOST or HOST:PORT, e.g. 192.168.4.1:{default_port}")
    return host.strip("[]"), int(port)


def onboard(
    label: Annotated[str, typer.Option("--label", help="The code on the device's label: TW1:<id>:<code>.")],
    wifi_ssid: Annotated[str, typer.Option("--wifi-ssid", help="The home Wi-Fi the device should join.")],
    wifi_passphrase_file: Annotated[
        Path, typer.Option("--wifi-passphrase-file", help="A file holding the Wi-Fi passphrase (kept off argv).")
    ],
    url: Annotated[str, typer.Option("--url", help="The platform's URL, e.g. https://iot.example.com:8443")],
    api_token_file: Annotated[
        Path | None,
        typer.Option(
            "--api-token-file",
            help="A file holding your API token (scope things:control): the CLI "
            "asks for a claim and waits until the device is online.",
        ),
    ] = None,
    claim_token_file: Annotated[
        Path | None,
        typer.Option(
            "--claim-token-file",
            help="A file holding a claim token from the web page (Devices > Add a "
            "device) instead of --api-token-file: the page shows when the device enrolled.",
        ),
    ] = None,
    ap_address: Annotated[
        str,
        typer.Option(
            "--ap-address",
            help=f"HOST or HOST:PORT of the device on its access point (port {PROVISIONING_PORT} if not given).",
        ),
    ] = DEFAULT_AP_ADDRESS,
    ca_certificate: Annotated[
        Path | None, typer.Option("--ca-certificate", help="The platform's CA certificate [default: system store].")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=5, max=900, help="Seconds to wait for the device.")] = 120,
    as_json: JsonFlag = False,
) -> None:
    """Set a new device up: claim it for your account, hand it your Wi-Fi over its access point (encrypted,
    bound to the label's code), and wait until it is enrolled and online."""
    from thingward.onboarding.companion import PlatformClient, onboard_device

    if (api_token_file is None) == (claim_token_file is None):
        raise InvalidInputError(
            "give either --api-token-file (the CLI asks the platform for a claim) or --claim-token-file "
            "(a claim token the web page showed you), " + ("not both" if api_token_file else "one of them")
        )
    parsed = parse_label(label)
    passphrase = _read_secret_file(wifi_passphrase_file, "Wi-Fi passphrase")
    host, port = _address(ap_address, PROVISIONING_PORT)
    if claim_token_file is not None:
        _hand_over_claim(parsed, wifi_ssid, passphrase, claim_token_file, host, port, as_json)
        return
    assert api_token_file is not None
    token = _read_secret_file(api_token_file, "API token")
    platform = PlatformClient(url, token, ca_certificate)
    try:
        if as_json:
            result = onboard_device(parsed, wifi_ssid, passphrase, platform, host, port, timeout)
        else:
            with console.status("onboarding") as status:
                result = onboard_device(parsed, wifi_ssid, passphrase, platform, host, port, timeout,
                                        progress=lambda text: status.update(text))  # fmt: skip
    finally:
        platform.close()

    def human() -> None:
        console.print(f"[green]{result.thing}[/green] ({result.model}) is enrolled, online and yours.")

    emit(as_json, result.to_dict(), human)


def _hand_over_claim(label: DeviceLabel, ssid: str, passphrase: str, claim_token_file: Path, host: str, port: int,
                     as_json: bool) -> None:  # fmt: skip
    from thingward.onboarding.claims import CLAIM_PREFIX
    from thingward.onboarding.companion import hand_over

    claim_token = _read_secret_file(claim_token_file, "claim token").strip()
    if not claim_token.startswith(CLAIM_PREFIX):
        raise InvalidInputError(
            f"{claim_token_file} does not hold a claim token ('{CLAIM_PREFIX}...'): copy the one the web page showed"
        )
    if as_json:
        model = hand_over(label, ssid, passphrase, claim_token, host, port)
    else:
        with console.status("onboarding") as status:
            model = hand_over(label, ssid, passphrase, claim_token, host, port, lambda text: status.update(text))
    result = {"device_id": label.device_id, "model": model, "handed_over": True}

    def human() -> None:
        console.print(f"[green]{label.device_id}[/green] ({model}) has the Wi-Fi and the claim and is joining: "
                      "the web page shows when it is enrolled.")  # fmt: skip

    emit(as_json, result, human)


def label_command(
    device_id: Annotated[str, typer.Option("--device-id", help="The device's id (its thing name later).")],
    pop_file: Annotated[Path, typer.Option("--pop-file", help="Where the device keeps its label secret (0600).")],
    as_json: JsonFlag = False,
) -> None:
    """Factory side: make a device's label code (id + 80 random bits) and store its secret for the agent."""
    if pop_file.exists():
        raise InvalidInputError(f"{pop_file} exists: a device keeps the label it was made with")
    made = new_label(device_id)
    write_secret(pop_file, made.code().encode() + b"\n")

    def human() -> None:
        import segno

        console.print(f"label code: [bold]{made.code()}[/bold]  (print it on the device, as text and QR)")
        segno.make(made.code(), error="m").terminal(compact=True)

    emit(as_json, {"device_id": made.device_id, "label": made.code(), "pop_file": str(pop_file)}, human)


def onboard_agent(
    label_file: Annotated[
        Path, typer.Option("--label-file", help="The device's label code (0600), from 'device label'.")
    ],
    model: Annotated[str, typer.Option("--model", help="The device's model, told before the session.")],
    ap_address: Annotated[str, typer.Option("--ap-address", help="The address of its access-point interface.")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="Where the device keeps Wi-Fi, key, certificate.")],
    platform_url: Annotated[str, typer.Option("--platform-url", help="The platform's URL (built into firmware).")],
    platform_ca: Annotated[Path, typer.Option("--platform-ca", help="The platform's CA certificate (firmware).")],
    mqtt: Annotated[str, typer.Option("--mqtt", help="HOST:PORT of the broker's TLS listener.")],
    simulated_ap: Annotated[
        Path | None,
        typer.Option(
            "--simulated-wifi",
            help="SIMULATION: a JSON file of the home AP (ssid, passphrase, interface, "
            "address[, gateway]); without it nmcli joins for real.",
        ),
    ] = None,
    wifi_interface: Annotated[str, typer.Option("--wifi-interface", help="nmcli: the Wi-Fi interface.")] = "wlan0",
    window_minutes: Annotated[
        float, typer.Option("--window-minutes", help="How long the onboarding window stays open: 3 to 15.")
    ] = DEFAULT_WINDOW_MINUTES,
    duration: Annotated[
        float, typer.Option("--duration", min=0, help="Stop after N seconds (0: on SIGTERM/Ctrl-C).")
    ] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Device side: onboarding mode for a device with no network (a simulated camera with --simulated-wifi).
    SIGUSR1 is the device's button: it re-opens the onboarding window. Prints one line per event."""
    from thingward.device.onboarding.agent import AgentConfig, OnboardingAgent
    from thingward.device.onboarding.wifi import NmcliWifiBackend, SimulatedAccessPoint, SimulatedWifiBackend

    parsed: DeviceLabel = parse_label(_read_secret_file(label_file, "label code"))
    window = window_from_minutes(window_minutes)
    mqtt_host, mqtt_port = _address(mqtt, 8883)
    config = AgentConfig(label=parsed, model=model, ap_host=ap_address, state_dir=state_dir,
                         platform_url=platform_url, platform_ca=platform_ca, mqtt_host=mqtt_host,
                         mqtt_port=mqtt_port, window=window)  # fmt: skip
    backend = (
        SimulatedWifiBackend(SimulatedAccessPoint.load(simulated_ap))
        if simulated_ap is not None
        else NmcliWifiBackend(interface=wifi_interface)
    )

    def event(kind: str, detail: dict[str, object]) -> None:
        line = {"event": kind, "at": dt.datetime.now(dt.UTC).isoformat(), **detail}
        if as_json:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        else:
            console.print(f"{line['at']} [bold]{kind}[/bold] " + " ".join(f"{k}={v}" for k, v in detail.items()))

    async def main() -> None:
        agent = OnboardingAgent(config, backend, event)
        stop, button = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, button.set)
        if duration:
            loop.call_later(duration, stop.set)
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run(stop, button)

    asyncio.run(main())


onboard = handle_errors(onboard)
label_command = handle_errors(label_command)
onboard_agent = handle_errors(onboard_agent)
