"""What the companion app does to onboard a device, as a service function (`thingward onboard` calls
it): get a claim token from the platform, talk to the device over its access point inside
the PoP-bound session, hand over the Wi-Fi credentials and the claim, apply, and wait until the platform
says the device enrolled and reported in. `hand_over` is the middle part alone, for a claim the web page
minted (the page, not the CLI, then follows the claim)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from thingward.device.onboarding.client import ProvisioningClient
from thingward.device.onboarding.label import DeviceLabel
from thingward.device.onboarding.wifi import check_credentials
from thingward.errors import ThingwardError

HTTP_TIMEOUT = 15.0
POLL_INTERVAL = 0.5

Progress = Callable[[str], None]


class OnboardingError(ThingwardError):
    """The device could not be onboarded; the message says at which step and what to do."""


@dataclass(frozen=True)
class OnboardingResult:
    device_id: str
    model: str
    thing: str
    claim_id: int
    online: bool

    def to_dict(self) -> dict[str, object]:
        return {"device_id": self.device_id, "model": self.model, "thing": self.thing, "claim": self.claim_id,
                "online": self.online}  # fmt: skip


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error") or body.get("detail") or body)


class PlatformClient:
    """The platform's claim API, as a person (a Bearer API token with the things:control scope)."""

    def __init__(self, url: str, api_token: str, ca_certificate: Path | None = None) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_certificate is not None:
            verify = ssl.create_default_context(cafile=str(ca_certificate))
            verify.minimum_version = ssl.TLSVersion.TLSv1_2
        self._http = httpx.Client(base_url=url.rstrip("/"), verify=verify, timeout=HTTP_TIMEOUT,
                                  headers={"Authorization": f"Bearer {api_token}"})  # fmt: skip

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        try:
            response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as e:
            raise OnboardingError(f"cannot reach the platform at {self._http.base_url}: {e}") from e
        if response.status_code >= 400:
            raise OnboardingError(f"the platform refused {method} {path} (HTTP {response.status_code}): "
                                  f"{_error_text(response)}")  # fmt: skip
        body: dict[str, object] = response.json()
        return body

    def create_claim(self, device_id: str) -> dict[str, object]:
        return self._call("POST", "/api/v1/claims", json={"device_id": device_id})

    def claim_status(self, claim_id: int) -> dict[str, object]:
        return self._call("GET", f"/api/v1/claims/{claim_id}")


def onboard_device(
    label: DeviceLabel,
    ssid: str,
    passphrase: str,
    platform: PlatformClient,
    ap_host: str,
    ap_port: int,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> OnboardingResult:
    say = progress or (lambda _text: None)
    check_credentials(ssid, passphrase)
    say("asking the platform for a claim token")
    claim = platform.create_claim(label.device_id)
    claim_id, token = int(str(claim["id"])), str(claim["token"])
    model = hand_over(label, ssid, passphrase, token, ap_host, ap_port, say)
    say("waiting for the device to enroll and come online")
    deadline = time.monotonic() + timeout
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = platform.claim_status(claim_id)
        if status.get("state") == "enrolled" and status.get("online") is True:
            return OnboardingResult(label.device_id, model, str(status.get("thing")), claim_id, True)
        if status.get("state") == "expired":
            raise OnboardingError("the claim expired before the device enrolled: check its network, press its "
                                  "button and run onboard again")  # fmt: skip
        time.sleep(POLL_INTERVAL)
    raise OnboardingError(
        f"the device joined the Wi-Fi but did not {'come online' if status.get('state') == 'enrolled' else 'enroll'}"
        f" within {timeout:g} s: check that it can reach the platform"
    )


def hand_over(label: DeviceLabel, ssid: str, passphrase: str, claim_token: str, ap_host: str, ap_port: int,
              progress: Progress | None = None) -> str:  # fmt: skip
    """The device's half only: Wi-Fi and a claim token minted elsewhere (the web page), over the PoP-bound
    session; the device's model. Whoever minted the claim follows it (`GET /api/v1/claims/{id}`)."""
    say = progress or (lambda _text: None)
    check_credentials(ssid, passphrase)
    say(f"talking to {label.device_id} on its access point {ap_host}:{ap_port}")
    return asyncio.run(_provision(label, ap_host, ap_port, ssid, passphrase, claim_token, say))


async def _provision(label: DeviceLabel, host: str, port: int, ssid: str, passphrase: str, token: str,
                     say: Progress) -> str:  # fmt: skip
    async with ProvisioningClient(label, host, port) as device:
        model = device.announcement.model if device.announcement else ""
        say(f"secure session with {label.device_id} ({model}) established; sending Wi-Fi credentials and claim")
        await device.set_wifi(ssid, passphrase)
        await device.set_claim(token)
        say("the device is joining the Wi-Fi")
        await device.apply()
        return model
