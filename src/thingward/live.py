"""The running server's view of live sessions, shared with other processes (the audit) through a file.

`thingward serve` rewrites `DATA_DIR/run/live.json` (mode 0600) every few seconds with the admitted
connections (thing, certificate serial, peer, since) and recent session takeovers. A reader trusts the
file only while it is fresh: a stale file means no server is running, and checks that need live state
are then not applicable rather than judged on old data.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from thingward.pki.files import write_secret

LIVE_STATE_FILE = "run/live.json"
WRITE_INTERVAL = 2.0  # seconds between rewrites by the server
MAX_AGE = dt.timedelta(seconds=15)  # older than this: no server is running
MAX_FUTURE = dt.timedelta(seconds=5)  # dated further ahead than this: not trusted either


@dataclass(frozen=True)
class SessionFacts:
    thing: str
    serial: str
    peer: str
    since: dt.datetime


@dataclass(frozen=True)
class TakeoverFacts:
    thing: str
    at: dt.datetime
    old_peer: str
    new_peer: str


@dataclass(frozen=True)
class LiveState:
    written_at: dt.datetime
    sessions: tuple[SessionFacts, ...]
    takeovers: tuple[TakeoverFacts, ...]

    @property
    def things(self) -> frozenset[str]:
        return frozenset(s.thing for s in self.sessions)


def write_live_state(
    path: Path,
    sessions: Sequence[Mapping[str, str]],
    takeovers: Mapping[str, Sequence[Mapping[str, str]]],
    now: dt.datetime | None = None,
) -> None:
    document = {
        "written_at": (now or dt.datetime.now(dt.UTC)).isoformat(),
        "sessions": list(sessions),
        "takeovers": {thing: list(events) for thing, events in takeovers.items()},
    }
    write_secret(path, json.dumps(document, separators=(",", ":")).encode())


def live_state(
    written_at: dt.datetime,
    sessions: Sequence[Mapping[str, str]],
    takeovers: Mapping[str, Sequence[Mapping[str, str]]],
) -> LiveState:
    """The live state from the broker's dicts (as `write_live_state` takes and the file holds them)."""
    return LiveState(
        written_at,
        tuple(
            SessionFacts(s["thing"], s["serial"], s["peer"], dt.datetime.fromisoformat(s["since"])) for s in sessions
        ),
        tuple(
            TakeoverFacts(thing, dt.datetime.fromisoformat(t["at"]), t["old_peer"], t["new_peer"])
            for thing, events in takeovers.items()
            for t in events
        ),
    )


def read_live_state(path: Path, now: dt.datetime | None = None) -> LiveState | None:
    """The live state if a server wrote it within MAX_AGE, else None."""
    try:
        document = json.loads(path.read_bytes())
        written_at = dt.datetime.fromisoformat(document["written_at"])
        age = (now or dt.datetime.now(dt.UTC)) - written_at
        # Dated ahead (a clock set back since, or a file not written by the server) is no proof of freshness.
        if age > MAX_AGE or age < -MAX_FUTURE:
            return None
        return live_state(written_at, document["sessions"], document["takeovers"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
