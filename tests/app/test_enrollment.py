"""Enrollment over real HTTPS: a device makes its key, sends a CSR, and only a valid single-use token works."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
import stat
import warnings
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import update

from thingward.device.enroll import enroll, server_context
from thingward.errors import EnrollmentRefusedError, InvalidInputError, ThingwardError
from thingward.pki import ca as ca_mod
from thingward.platform import Platform
from thingward.registry import things
from thingward.registry.audit_log import Actor, list_events
from thingward.registry.models import EnrollmentToken

ACTOR = Actor("test", "pytest")

pytestmark = pytest.mark.both_databases


def _add(platform: Platform, name: str, ttl: dt.timedelta = dt.timedelta(hours=1)) -> str:
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, name)
        return things.create_enrollment_token(session, ACTOR, name, ttl).token


def _post(api, token: str, csr: bytes | str) -> httpx.Response:
    with httpx.Client(verify=server_context(api.platform.ca_certificate_path), timeout=10) as client:
        body = {"token": token, "csr": csr.decode() if isinstance(csr, bytes) else csr}
        return client.post(f"{api.url}/api/v1/enroll", json=body)


def _csr(key, cn: str) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_device_enrolls_with_own_key_and_gets_certificate(api, tmp_path: Path) -> None:
    token = _add(api.platform, "cam1")
    identity = enroll(api.url, token, api.platform.ca_certificate_path, tmp_path / "cam1")
    assert identity.name == "cam1"
    assert stat.S_IMODE(os.stat(identity.key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(identity.certificate.read_bytes())
    assert ca_mod.thing_name_from_certificate(cert) == "cam1"
    device_key = serialization.load_pem_private_key(identity.key.read_bytes(), None)
    assert cert.public_key() == device_key.public_key()
    days = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert 89 <= days <= 90
    with api.platform.db.read() as session:
        shown = things.get_thing(session, "cam1")
        assert [c.status for c in things.thing_certificates(session, shown)] == ["active"]


def test_token_reuse_refused(api, tmp_path: Path) -> None:
    token = _add(api.platform, "cam1")
    enroll(api.url, token, api.platform.ca_certificate_path, tmp_path / "a")
    with pytest.raises(EnrollmentRefusedError, match="enrollment refused"):
        enroll(api.url, token, api.platform.ca_certificate_path, tmp_path / "b")


def test_expired_token_refused(api, tmp_path: Path) -> None:
    token = _add(api.platform, "cam1")
    with api.platform.db.session() as session:
        session.execute(update(EnrollmentToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    with pytest.raises(EnrollmentRefusedError):
        enroll(api.url, token, api.platform.ca_certificate_path, tmp_path / "cam1")
    with api.platform.db.read() as session:
        assert "expired" in list_events(session, 1)[0].detail


def test_unknown_token_refused_with_the_same_message(api) -> None:
    _add(api.platform, "cam1")
    key = ec.generate_private_key(ec.SECP256R1())
    forged = _post(api, "cam1.not-the-secret", _csr(key, "cam1"))
    assert forged.status_code == 403
    assert forged.json()["error"].startswith("enrollment refused")


def test_token_for_another_thing_refused_and_not_spent(api, tmp_path: Path) -> None:
    token_cam1 = _add(api.platform, "cam1")
    _add(api.platform, "cam2")
    key = ec.generate_private_key(ec.SECP256R1())
    response = _post(api, token_cam1, _csr(key, "cam2"))
    assert response.status_code == 403
    with api.platform.db.read() as session:
        assert things.thing_certificates(session, things.get_thing(session, "cam2")) == []
    # The rightful device can still use its token.
    assert _post(api, token_cam1, _csr(key, "cam1")).status_code == 201


def test_rsa_1024_refused_with_reason_and_token_kept(api) -> None:
    token = _add(api.platform, "cam1")
    weak = _post(api, token, _csr(rsa.generate_private_key(public_exponent=65537, key_size=1024), "cam1"))
    assert weak.status_code == 400
    assert "too weak" in weak.json()["error"]
    good = _post(api, token, _csr(ec.generate_private_key(ec.SECP256R1()), "cam1"))
    assert good.status_code == 201


@pytest.mark.parametrize(
    "csr", ["not a csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----"]
)
def test_malformed_csr_is_400_with_message(api, csr: str) -> None:
    token = _add(api.platform, "cam1")
    response = _post(api, token, csr)
    assert response.status_code == 400
    assert "CSR" in response.json()["error"] or "certificate signing request" in response.json()["error"]


def test_device_cli_error_for_malformed_csr_is_invalid_input(api, tmp_path: Path) -> None:
    class BrokenStore:
        def has_key(self) -> bool:
            return True

        def build_csr(self, common_name: str) -> bytes:
            return b"garbage"

        def tls_key_file(self) -> None:
            return None

    token = _add(api.platform, "cam1")
    with pytest.raises(InvalidInputError, match="not a PEM"):
        enroll(api.url, token, api.platform.ca_certificate_path, tmp_path, key_store=BrokenStore())  # type: ignore[arg-type]


def test_oversized_body_refused_before_reading(api) -> None:
    with httpx.Client(verify=server_context(api.platform.ca_certificate_path), timeout=10) as client:
        response = client.post(
            f"{api.url}/api/v1/enroll", content=b"x" * 200_000, headers={"content-type": "application/json"}
        )
    assert response.status_code == 413


def test_enrollment_refuses_a_server_not_signed_by_our_ca(api, tmp_path: Path) -> None:
    other = ca_mod.build_root_ca("someone else")
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(ca_mod.certificate_pem(other.certificate))
    token = _add(api.platform, "cam1")
    with pytest.raises(ThingwardError, match="cannot reach"):
        enroll(api.url, token, other_ca, tmp_path / "cam1")


def test_repeated_failures_are_throttled(api) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    codes = [_post(api, f"cam{i}.guess", _csr(key, f"cam{i}")).status_code for i in range(11)]
    assert codes[:10] == [403] * 10
    assert codes[10] == 429


def test_api_serves_only_tls_1_2_or_newer(api) -> None:
    context = ssl.create_default_context(cafile=str(api.platform.ca_certificate_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.minimum_version = ssl.TLSVersion.TLSv1
    with contextlib.suppress(ssl.SSLError):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, httpx.ConnectError)), httpx.Client(verify=context, timeout=5) as client:
        client.get(f"{api.url}/api/v1/health")


def test_https_floor_is_set_in_code_not_left_to_system_policy(api) -> None:
    # The handshake test above may also be refused by the client's own OpenSSL policy; this one cannot be.
    assert api.server.config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2


def test_one_key_for_two_devices_refused_and_the_token_kept(api) -> None:
    """A key burned into every unit (or copied off one) must not give a second device an identity."""
    token_cam1, token_cam2 = _add(api.platform, "cam1"), _add(api.platform, "cam2")
    shared = ec.generate_private_key(ec.SECP256R1())
    assert _post(api, token_cam1, _csr(shared, "cam1")).status_code == 201
    again = _post(api, token_cam2, _csr(shared, "cam2"))
    assert again.status_code == 403 and again.json()["error"].startswith("enrollment refused")
    with api.platform.db.read() as session:
        assert things.thing_certificates(session, things.get_thing(session, "cam2")) == []
        reasons = [e.detail for e in list_events(session) if e.action == "enroll.refused"]
    assert any("already enrolled for cam1" in reason for reason in reasons)
    # cam2 with a key of its own still enrolls with the same token.
    assert _post(api, token_cam2, _csr(ec.generate_private_key(ec.SECP256R1()), "cam2")).status_code == 201
    # cam1 may renew with its own key: the key is only refused for another thing.
    with api.platform.db.session() as session:
        renewal = things.create_enrollment_token(session, ACTOR, "cam1", dt.timedelta(hours=1)).token
    assert _post(api, renewal, _csr(shared, "cam1")).status_code == 201
