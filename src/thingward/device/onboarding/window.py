"""The onboarding window: when the provisioning service may answer. Pure (time is passed in).

It opens once when the device starts with no network credentials, and closes after its time (10 minutes by default,
3 to 15 allowed), after `MAX_FAILED_PROOFS` wrong proofs of possession (then only a button press opens
it again), and after a successful setup. It never opens by itself while the device is online.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from thingward.errors import ConfigError

DEFAULT_WINDOW_MINUTES = 10
MIN_WINDOW_MINUTES = 3
MAX_WINDOW_MINUTES = 15
MAX_FAILED_PROOFS = 5


def window_from_minutes(minutes: float) -> dt.timedelta:
    """The window length a user or config asked for, refused outside 3..15 minutes."""
    if not MIN_WINDOW_MINUTES <= minutes <= MAX_WINDOW_MINUTES:
        raise ConfigError(
            f"the onboarding window is {minutes:g} minutes: choose {MIN_WINDOW_MINUTES} to {MAX_WINDOW_MINUTES}"
        )
    return dt.timedelta(minutes=minutes)


class WindowState(StrEnum):
    CLOSED = "closed"  # not yet opened (or provisioned and closed after success)
    OPEN = "open"
    EXPIRED = "expired"  # its time ran out
    LOCKED = "locked"  # too many wrong proofs: only a button press re-opens
    DONE = "done"  # set up successfully


@dataclass
class OnboardingWindow:
    length: dt.timedelta
    state: WindowState = WindowState.CLOSED
    opened_at: dt.datetime | None = None
    failed_proofs: int = 0

    def open(self, now: dt.datetime, *, online: bool, button: bool = False) -> bool:
        """Open the window; True if it is open afterwards. Without the button it opens only once, at the
        start of an offline device: after it expired, locked or succeeded, only the button re-opens it."""
        if self.state is WindowState.OPEN:
            return True
        if not button and (online or self.state is not WindowState.CLOSED):
            return False
        self.state, self.opened_at, self.failed_proofs = WindowState.OPEN, now, 0
        return True

    def is_open(self, now: dt.datetime) -> bool:
        self.tick(now)
        return self.state is WindowState.OPEN

    def deadline(self) -> dt.datetime | None:
        return self.opened_at + self.length if self.opened_at is not None and self.state is WindowState.OPEN else None

    def tick(self, now: dt.datetime) -> None:
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            self.state = WindowState.EXPIRED

    def failed_proof(self) -> None:
        if self.state is not WindowState.OPEN:
            return
        self.failed_proofs += 1
        if self.failed_proofs >= MAX_FAILED_PROOFS:
            self.state = WindowState.LOCKED

    def succeeded(self) -> None:
        self.state = WindowState.DONE
