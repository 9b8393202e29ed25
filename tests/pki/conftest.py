"""The SoftHSM2 token fixture, shared with tests/ota from tests/lab."""

from __future__ import annotations

from lab.softhsm import SoftHsmToken, softhsm_token

__all__ = ["SoftHsmToken", "softhsm_token"]
