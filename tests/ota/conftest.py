"""OTA fixtures: a key ceremony, a data dir with its TUF repository, and a device provisioned to trust it."""

from __future__ import annotations

from pathlib import Path

import pytest

from thingward.ota.keys import create_key_set
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform


@pytest.fixture
def ota_keys(tmp_path: Path) -> Path:
    out = tmp_path / "ota-keys"
    create_key_set(out, root_keys=3, root_threshold=2)
    return out


@pytest.fixture
def repo(platform: Platform, ota_keys: Path) -> OtaRepository:
    return OtaRepository.initialise(OtaRepository.for_data_dir(platform.settings.data_dir).path, ota_keys)


from lab.softhsm import SoftHsmToken, softhsm_token  # noqa: E402

__all__ = ["SoftHsmToken", "softhsm_token"]
