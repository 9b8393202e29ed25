"""Logging keeps working after an in-process command swapped and closed stderr (as typer's CliRunner does)."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from thingward.logs import configure_logging


def test_handler_follows_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    borrowed = io.StringIO()
    monkeypatch.setattr(sys, "stderr", borrowed)
    configure_logging("info", "text")
    logging.getLogger("thingward.test").info("while borrowed")
    assert "while borrowed" in borrowed.getvalue()
    borrowed.close()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("thingward.test").info("after the borrowed stream closed")
    assert "after the borrowed stream closed" in later.getvalue()
