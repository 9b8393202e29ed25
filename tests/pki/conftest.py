"""A throwaway SoftHSM2 token per test, in tmp_path, with random PINs."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest

SOFTHSM2_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


@dataclass(frozen=True)
class SoftHsmToken:
    module_path: str
    label: str
    pin: str
    so_pin: str
    conf_path: Path


def _softhsm2_module() -> str | None:
    return next((p for p in SOFTHSM2_MODULE_CANDIDATES if Path(p).exists()), None)


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsmToken]:
    """An initialised SoftHSM2 token whose store lives in tmp_path, found through SOFTHSM2_CONF."""
    util = shutil.which("softhsm2-util")
    module = _softhsm2_module()
    if util is None or module is None:
        pytest.skip(
            "SoftHSM2 is not installed (apt-get install softhsm2): softhsm2-util or libsofthsm2.so missing"
        )
    token_dir = tmp_path / "tokens"
    token_dir.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    token = SoftHsmToken(
        module_path=module,
        label=f"tw-{secrets.token_hex(4)}",
        pin=secrets.token_hex(8),
        so_pin=secrets.token_hex(8),
        conf_path=conf,
    )
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            token.label,
            "--pin",
            token.pin,
            "--so-pin",
            token.so_pin,
        ],
        check=True,
        capture_output=True,
    )
    # python-pkcs11 keeps one initialised library per path for the whole process, and SoftHSM2 reads
    # SOFTHSM2_CONF only in C_Initialize: re-initialise so this test sees its own token directory.
    pkcs11.lib(module).reinitialize()
    yield token
    pkcs11.lib(module).finalize()
