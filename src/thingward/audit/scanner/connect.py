"""The TCP connect scan: a full handshake per port, as `nmap -sT` does, so no root and no raw sockets.

The sweep is a tight loop over an epoll set of its own in a worker thread, which the asyncio side awaits:
a coroutine, a future and an asyncio registration per port cost more than the connect itself (2.1 s against
4 s for 65,535 loopback ports). It keeps at most `concurrency` sockets in flight, closes the ones past
their deadline, and keeps to `rate`. The jobs can be dealt to several such shards, but two shards were
slower than one on two cores (the GIL and the kernel's socket locks), so one is the default.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import resource
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from thingward.audit.scanner.targets import IPAddress

ProgressCallback = Callable[[int, int], None]  # (done, total)

_REFUSED = frozenset({errno.ECONNREFUSED, errno.ECONNRESET})
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY})
_WATCH = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
_MAX_SHARDS = 1
_PROGRESS_EVERY = 4096


@dataclass
class ConnectResult:
    open: dict[IPAddress, set[int]] = field(default_factory=dict)
    answered: set[IPAddress] = field(default_factory=set)  # a SYN-ACK or a RST came back: the host is up
    probes: int = 0
    timeouts: int = 0
    errors: int = 0


def max_concurrency(wanted: int) -> int:
    """The in-flight socket count we can afford: the wish, capped by this process's file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(wanted, soft - 64))


def _connected_to_itself(sock: _socket.socket) -> bool:
    """A connect to a closed local port can meet itself (TCP simultaneous open, when the kernel picks that very
    port as our source port): the port looks open but nothing listens there."""
    try:
        return bool(sock.getsockname() == sock.getpeername())
    except OSError:
        return False


@dataclass
class _Shard:
    jobs: Sequence[tuple[str, int, int]]  # (address, ip version, port)
    concurrency: int
    timeout: float
    interval: float  # seconds between new connects; 0 for no rate limit
    stop: threading.Event
    tick: Callable[[int], None]
    open: list[tuple[str, int]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    probes: int = 0
    timeouts: int = 0
    errors: int = 0

    def _record(self, address: str, port: int, err: int) -> None:
        if err == 0:
            self.open.append((address, port))
            self.answered.add(address)
        elif err in _REFUSED:
            self.answered.add(address)
        elif err == errno.ETIMEDOUT:
            self.timeouts += 1
        else:
            self.errors += 1

    def run(self) -> None:
        # One hot loop, kept in one piece, with the names it uses bound to locals (measurably faster).
        epoll = select.epoll()
        register, poll = epoll.register, epoll.poll
        new_socket, stream = _socket.socket, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK
        sol_socket, so_error, refused, in_progress = (
            _socket.SOL_SOCKET,
            _socket.SO_ERROR,
            errno.ECONNREFUSED,
            errno.EINPROGRESS,
        )
        answered, record, monotonic = self.answered, self._record, time.monotonic
        pending: dict[int, tuple[_socket.socket, str, int, float]] = {}
        jobs, next_job, finished, probes = self.jobs, 0, 0, 0
        concurrency, interval = self.concurrency, self.interval
        next_slot = monotonic()
        try:
            while (next_job < len(jobs) or pending) and not self.stop.is_set():
                now = monotonic()
                deadline = now + self.timeout
                while next_job < len(jobs) and len(pending) < concurrency:
                    if interval:
                        if next_slot > now:
                            break
                        next_slot = max(next_slot, now - 1.0) + interval
                    address, version, port = jobs[next_job]
                    next_job += 1
                    try:
                        sock = new_socket(_socket.AF_INET6 if version == 6 else _socket.AF_INET, stream)
                    except OSError as e:
                        record(address, port, e.errno or errno.EMFILE)
                        finished += 1
                        continue
                    probes += 1
                    err = sock.connect_ex((address, port))
                    if err == in_progress or err in _IN_PROGRESS:
                        fd = sock.fileno()
                        pending[fd] = (sock, address, port, deadline)
                        register(fd, _WATCH)
                        continue
                    if err == 0 and _connected_to_itself(sock):
                        err = refused
                    sock.close()
                    finished += 1
                    if err == refused:
                        answered.add(address)
                    else:
                        record(address, port, err)
                wait = 0.05
                if interval and next_job < len(jobs) and len(pending) < concurrency:
                    wait = max(0.0, min(wait, next_slot - monotonic()))
                for fd, _ in poll(wait, 4096):
                    entry = pending.pop(fd, None)
                    if entry is None:
                        continue
                    sock, address, port, _ = entry
                    err = sock.getsockopt(sol_socket, so_error)
                    if err == 0 and _connected_to_itself(sock):
                        err = refused
                    sock.close()  # also leaves the epoll set
                    finished += 1
                    if err == refused:
                        answered.add(address)
                    else:
                        record(address, port, err)
                # Deadlines grow in insertion order, so the expired connects are at the front of the dict.
                now = monotonic()
                while pending:
                    fd, (sock, address, port, expires) = next(iter(pending.items()))
                    if expires > now:
                        break
                    del pending[fd]
                    sock.close()
                    record(address, port, errno.ETIMEDOUT)
                    finished += 1
                if finished >= _PROGRESS_EVERY:
                    self.tick(finished)
                    finished = 0
            self.tick(finished)
        finally:
            self.probes = probes
            for sock, *_ in pending.values():
                sock.close()
            epoll.close()


async def connect_scan(
    addresses: Sequence[IPAddress],
    ports: Sequence[int],
    *,
    concurrency: int = 1000,
    timeout: float = 1.0,
    rate: float = 0.0,
    progress: ProgressCallback | None = None,
) -> ConnectResult:
    """Try a TCP handshake with every port of every address: which ones accepted, which hosts answered.

    `concurrency` bounds the sockets in flight, `timeout` each connect (seconds), `rate` new connects per
    second (0: only the concurrency bound). Ports go port-major across hosts, so no host gets a burst.
    """
    total = len(addresses) * len(ports)
    by_name = {str(a): a for a in addresses}
    hosts = [(str(a), a.version) for a in addresses]  # str() of an address is slow: once per host
    jobs: list[tuple[str, int, int]] = [(name, version, port) for port in ports for name, version in hosts]
    shards_wanted = max(1, min(_MAX_SHARDS, os.cpu_count() or 1, total // 2048 or 1))
    concurrency = max_concurrency(concurrency)
    shard_concurrency = max(1, concurrency // shards_wanted)
    interval = shards_wanted / rate if rate > 0 else 0.0
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    done = 0

    def tick(count: int) -> None:
        def report() -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, total)

        loop.call_soon_threadsafe(report)

    shards = [
        _Shard(jobs[i::shards_wanted], shard_concurrency, timeout, interval, stop, tick) for i in range(shards_wanted)
    ]
    try:
        await asyncio.gather(*(asyncio.to_thread(shard.run) for shard in shards))
    finally:
        stop.set()  # a cancelled scan ends its threads at their next loop turn
    result = ConnectResult()
    for shard in shards:
        result.probes += shard.probes
        result.timeouts += shard.timeouts
        result.errors += shard.errors
        result.answered.update(by_name[a] for a in shard.answered)
        for address, port in shard.open:
            result.open.setdefault(by_name[address], set()).add(port)
    return result
