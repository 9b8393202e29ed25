"""The registry on SQLite beside PostgreSQL: the same service functions, the same work, in one run.

Three kinds of work the server does: registry changes (a thing added, with its audit event, one
transaction each; from one writer and from several at once), ingest (batches of 500 telemetry messages
with retention), and the watcher's look at the newest audit event id. PostgreSQL is a private server
started for the run (tests/lab/postgres.py: 127.0.0.1, fsync off, as in the tests), so its figures
are an upper bound for a real, durable server; SQLite runs in WAL mode on the local disk.

    python bench/registry_databases.py             # about a minute
    python bench/registry_databases.py --quick

Prints figures, asserts nothing. Run on an otherwise idle machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lab.postgres import postgres_server
from thingward.ingest.store import StoredMessage, store_messages
from thingward.platform import Platform, init_data_dir
from thingward.registry import things
from thingward.registry.audit_log import Actor, latest_event_id

ACTOR = Actor("bench", "bench")
BATCH = 500


def _timed(work: Callable[[], int]) -> float:
    """Operations per second of `work`, which returns how many it did."""
    started = time.perf_counter()
    done = work()
    return done / (time.perf_counter() - started)


def measure(platform: Platform, n_things: int, n_batches: int, n_polls: int, writers: int) -> dict[str, float]:
    def add_things(prefix: str, count: int) -> int:
        for i in range(count):
            with platform.db.session() as session:
                things.add_thing(session, ACTOR, f"{prefix}-{i}")
        return count

    def add_things_concurrently() -> int:
        per_writer = n_things // writers
        with ThreadPoolExecutor(writers) as pool:
            return sum(pool.map(lambda w: add_things(f"w{w}", per_writer), range(writers)))

    def ingest() -> int:
        now = dt.datetime.now(dt.UTC)
        stored = 0
        for b in range(n_batches):
            batch = [
                StoredMessage(
                    thing=f"one-{(b * BATCH + i) % n_things}",
                    topic=f"things/one-{(b * BATCH + i) % n_things}/telemetry",
                    kind="telemetry",
                    event_type=None,
                    payload=b'{"temperature_c":21.5,"battery":0.93}',
                    received_at=now,
                )
                for i in range(BATCH)
            ]
            with platform.db.session() as session:
                stored += store_messages(session, batch, retention_per_thing=100)
        return stored

    def poll() -> int:
        for _ in range(n_polls):
            with platform.db.read() as session:
                latest_event_id(session)
        return n_polls

    return {
        "thing added (1 writer), per s": _timed(lambda: add_things("one", n_things)),
        f"thing added ({writers} writers), per s": _timed(add_things_concurrently),
        "ingest, messages per s": _timed(ingest),
        "watcher look, per s": _timed(poll),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the work")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    sizes = {"n_things": 1000 // scale, "n_batches": 100 // scale, "n_polls": 5000 // scale, "writers": 4}
    results: dict[str, dict[str, float]] = {}
    with postgres_server() as pg, tempfile.TemporaryDirectory() as tmp:
        for backend, url in (("sqlite", None), ("postgresql", pg.url(pg.create_schema()))):
            init_data_dir(Path(tmp) / backend, database_url=url)
            platform = Platform.open(Path(tmp) / backend)
            try:
                results[backend] = measure(platform, **sizes)
            finally:
                platform.close()
    print(f"{'':40} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>10}")
    for name in results["sqlite"]:
        lite, pg_value = results["sqlite"][name], results["postgresql"][name]
        print(f"{name:40} {lite:>10,.0f} {pg_value:>11,.0f} {pg_value / lite:>10.2f}")
    print(f"({sizes['n_things']} things, {sizes['n_batches']} batches of {BATCH}, {sizes['n_polls']} looks)")


if __name__ == "__main__":
    main()
