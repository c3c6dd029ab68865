"""The consumer shared by the brokers that tidings coordinates itself (memory and sqlite).

A `LocalLog` gives blocking, thread-safe access to records and group state; `LocalConsumer`
turns it into the `Consumer` contract: per-partition positions, one batch in flight per
partition (`InFlight`), acks committed with each heartbeat, cooperative revocation and lease
checks.

Threads: the consumer's asyncio task calls fetch/ack/nack/commit/seek; one heartbeat thread per
consumer coordinates with the group and commits; blocking calls run on one worker thread per
consumer (reads too, unless the log says they are quick: `LocalLog`). Shared state is guarded
by `_lock`, the in-flight bookkeeping's lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from tidings._wakeup import Wakeup
from tidings.brokers import _groups
from tidings.brokers._inflight import InFlight
from tidings.brokers.base import (
    Broker,
    CanSeek,
    Consumer,
    check_subscription,
)
from tidings.errors import BrokerClosedError, CommitFailedError, ConfigError
from tidings.records import Batch, OffsetReset, Record, SeekTo, TopicPartition

log = logging.getLogger("tidings.consumer")

T = TypeVar("T")

Listener = Callable[[bytes], None]
"""Called from any thread with b"d" (records appended) or b"g" (a group changed). After b"d"
may come the names of the topics appended to (`appended`), each after a NUL byte; without
them, any topic may have records."""

DATA_APPENDED = b"d"
GROUP_CHANGED = b"g"
MAX_NOTICE_BYTES = 1024


def appended(topics: Collection[str]) -> bytes:
    """The wake-up for records appended to `topics`: consumers of other topics sleep on."""
    notice = DATA_APPENDED + b"".join(b"\0" + topic.encode() for topic in sorted(topics))
    return notice if len(notice) <= MAX_NOTICE_BYTES else DATA_APPENDED


class LocalLog(Protocol):
    """What LocalConsumer needs from a backend. All methods block and are thread-safe.

    A log whose `read` and `watermarks` are quick and never wait for a lock (in memory; SQLite
    in WAL mode, where readers do not wait for writers) may set `inline_reads = True`: the
    consumer then calls them on the event loop's thread instead of handing each fetch to its
    worker thread and back."""

    def partition_counts(self, topics: Collection[str]) -> dict[str, int]:
        """Partition count per topic; raises UnknownTopicError for a missing topic."""

    def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        """Up to `max_records` records with offsets >= `offset`, in order."""

    def watermarks(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(start offset, end offset) per partition."""

    def offset_for_timestamp(self, tp: TopicPartition, timestamp_ms: int) -> int:
        """The first offset whose timestamp is >= `timestamp_ms`, else the end offset."""

    def group_join(self, group: str, member: _groups.Member) -> None: ...

    def group_heartbeat(
        self,
        group: str,
        member_id: str,
        commit: Mapping[TopicPartition, int],
        release: Collection[TopicPartition],
    ) -> _groups.Heartbeat | None: ...

    def group_leave(
        self, group: str, member_id: str, commit: Mapping[TopicPartition, int]
    ) -> None: ...

    def committed(self, group: str, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Committed offsets of the group for those partitions that have one."""

    def add_listener(self, listener: Listener, topics: Collection[str] | None = None) -> None:
        """Call `listener` on wake-ups; `topics`: the data notices this process needs (None:
        all of them; a log may still send the others)."""
        ...

    def remove_listener(self, listener: Listener) -> None: ...


class LocalConsumer(Consumer, CanSeek):
    """A group member over a LocalLog. Create through `Broker.subscribe`."""

    def __init__(
        self,
        log_: LocalLog,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str,
        max_batch: int,
        session_timeout: float,
        client: str,
        poll_interval: float,
        max_poll_interval: float = 300.0,
    ) -> None:
        self._reset = check_subscription(
            group, topics, auto_offset_reset, max_batch, session_timeout
        )
        self._log = log_
        self.group = group
        self.topics = tuple(dict.fromkeys(topics))
        self._topic_names = frozenset(topic.encode() for topic in self.topics)
        self._max_batch = max_batch
        self._session = session_timeout
        self._heartbeat_every = max(0.02, min(1.0, session_timeout / 5))
        self._max_poll = max_poll_interval
        self._poll_interval = poll_interval
        self._client = client
        self.member_id = ""

        self._flight = InFlight()
        self._lock = self._flight.lock
        self._group_lock = threading.Lock()
        self._positions: dict[TopicPartition, int] = {}
        self._lease_until = 0.0
        self._ends: dict[TopicPartition, int] = {}
        self._ends_trusted_until = 0.0
        """`_ends` (as last read) hold until then (monotonic): `poll_interval` after the read,
        since a notice may be lost; a data notice for these topics or a poll ends it at once."""

        self._state = "new"
        self._wakeup: Wakeup | None = None
        self._tick_now = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"tidings-read-{group}")
        self._inline_reads = bool(getattr(log_, "inline_reads", False))
        self._start_lock: asyncio.Lock | None = None

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and claim partitions. Called by the first fetch if not before."""
        if self._state == "started":
            return
        if self._state == "closed":
            raise BrokerClosedError("consumer is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._state != "new":
                return
            self._wakeup = Wakeup()
            await self._io(self._log.partition_counts, self.topics)
            self._log.add_listener(self._on_signal, self.topics)
            await self._io(self._join)
            self._thread = threading.Thread(
                target=self._heartbeat_loop, name=f"tidings-heartbeat-{self.group}", daemon=True
            )
            self._thread.start()
            self._state = "started"

    async def close(self) -> None:
        if self._state == "closed":
            return
        started = self._state == "started"
        self._state = "closed"
        if not started:
            self._worker.shutdown(wait=False)
            return
        self._stop.set()
        self._tick_now.set()
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._log.remove_listener(self._on_signal)
        with self._lock:
            commit = self._flight.acked(self._positions)
            self._positions.clear()
            self._flight.clear()
        try:
            await self._io(self._log.group_leave, self.group, self.member_id, commit)
        finally:
            self._worker.shutdown(wait=False)

    # delivery ----------------------------------------------------------------------------

    async def fetch(self, timeout: float | None = None) -> Batch | None:
        await self.start()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._state == "closed":
                raise BrokerClosedError("consumer is closed")
            self._wakeup.clear()
            candidates = self._ready()
            if candidates and not self._drained(candidates):
                if self._inline_reads:
                    found = self._read_next(candidates)
                else:
                    found = await self._io(self._read_next, candidates)
                if found is not None:
                    batch, position = found
                    if self._take(batch, position):
                        return batch
                    await asyncio.sleep(0)
                    continue
            wait = self._poll_interval
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                wait = min(wait, remaining)
            if not await self._wakeup.wait(wait):
                self._ends_trusted_until = 0.0  # a notice may have been lost: read the log again

    def ack(self, batch: Batch) -> None:
        with self._lock:
            if not self._flight.ack(batch):
                return
            revoking = self._flight.is_revoking(batch.tp)
        if revoking:
            self._tick_now.set()
        self._wake()

    def nack(self, batch: Batch, offset: int | None = None) -> None:
        tp = batch.tp
        with self._lock:
            if not self._flight.nack(batch):
                return
            self._positions[tp] = batch.first_offset if offset is None else offset
            revoking = self._flight.is_revoking(tp)
        if revoking:
            self._tick_now.set()
        self._wake()

    async def commit(self, batch: Batch | None = None) -> None:
        if batch is not None:
            self.ack(batch)
        if self._state != "started":
            if self._state == "closed":
                raise BrokerClosedError("consumer is closed")
            return
        rejected = await self._io(self._tick)
        if rejected:
            names = ", ".join(sorted(str(tp) for tp in rejected))
            raise CommitFailedError(
                f"group {self.group!r}: partitions {names} are no longer owned by this member; "
                "their offsets were not committed"
            )

    async def seek(self, tp: TopicPartition, to: SeekTo) -> int:
        await self.start()
        offset = await self._io(self._resolve, tp, to)
        with self._lock:
            if tp not in self._positions:
                raise ConfigError(f"cannot seek {tp}: not owned by this member")
            self._positions[tp] = offset
            self._flight.drop(tp)
        self._wake()
        return offset

    def assignment(self) -> frozenset[TopicPartition]:
        with self._lock:
            return frozenset(self._positions)

    # internals: delivery -----------------------------------------------------------------

    def _ready(self) -> list[tuple[TopicPartition, int]]:
        """The partitions that may hand out a batch, in turn, with their positions."""
        with self._lock:
            if time.monotonic() > self._lease_until:
                return []
            return [(tp, self._positions[tp]) for tp in self._flight.ready(self._positions)]

    def _drained(self, candidates: list[tuple[TopicPartition, int]]) -> bool:
        """True if every candidate is known to be at its partition's end: no records were
        appended to its topics since the ends were read (so no read is needed)."""
        if time.monotonic() > self._ends_trusted_until:
            return False
        ends = self._ends
        return all(tp in ends and ends[tp] <= position for tp, position in candidates)

    def _read_next(self, candidates: list[tuple[TopicPartition, int]]) -> tuple[Batch, int] | None:
        """The next batch of the first candidate partition that has one, with the position it
        was read from."""
        # before reading: a notice arriving meanwhile ends the trust again
        self._ends_trusted_until = time.monotonic() + self._poll_interval
        marks = self._log.watermarks([tp for tp, _ in candidates])
        self._ends.update((tp, end) for tp, (_, end) in marks.items())
        for tp, position in candidates:
            if marks[tp][1] <= position:
                continue
            records = self._log.read(tp, position, self._max_batch)
            if records:
                return Batch(tp.topic, tp.partition, records), position
        return None

    def _take(self, batch: Batch, read_from: int) -> bool:
        """Make `batch` the partition's in-flight batch unless ownership or position moved
        while it was read."""
        tp = batch.tp
        with self._lock:
            if (
                self._positions.get(tp) != read_from
                or time.monotonic() > self._lease_until
                or not self._flight.begin(tp, batch)
            ):
                return False
            self._positions[tp] = batch.next_offset
            return True

    def _resolve(self, tp: TopicPartition, to: SeekTo) -> int:
        start, end = self._log.watermarks([tp])[tp]
        if to.earliest:
            return start
        if to.latest:
            return end
        if to.timestamp is not None:
            return self._log.offset_for_timestamp(tp, int(to.timestamp.timestamp() * 1000))
        if to.offset is not None:
            return min(max(to.offset, start), end)
        raise ConfigError("SeekTo needs earliest, latest, timestamp or offset")

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _on_signal(self, kind: bytes) -> None:
        if kind[:1] == GROUP_CHANGED:
            self._tick_now.set()
        elif len(kind) <= 1 or not self._topic_names.isdisjoint(kind[2:].split(b"\0")):
            self._ends_trusted_until = 0.0
            self._wake()

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, fn, *args)

    # internals: group --------------------------------------------------------------------

    def _join(self) -> None:
        with self._group_lock:
            self._register()
        self._tick()

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            self._tick_now.wait(self._heartbeat_every)
            self._tick_now.clear()
            if self._stop.is_set():
                return
            try:
                self._tick()
            except Exception:
                log.exception("group %s: heartbeat failed; retrying", self.group)
                self._stop.wait(self._heartbeat_every)

    def _tick(self) -> frozenset[TopicPartition]:
        """One heartbeat: commit acks, release revoked partitions, claim new ones.

        Returns the partitions whose commits were refused."""
        with self._group_lock:
            now = time.monotonic()
            with self._lock:
                commit = self._flight.acked()
                revoking = self._flight.revoking()
                busy = self._flight.in_flight(revoking)
            release = revoking - busy.keys()
            for tp, since in busy.items():
                if now - since > self._max_poll:
                    log.warning(
                        "group %s: releasing %s although its batch is still in flight "
                        "after %.0fs (max_poll_interval)",
                        self.group,
                        tp,
                        self._max_poll,
                    )
                    release.add(tp)
            sent = time.monotonic()
            result = self._log.group_heartbeat(self.group, self.member_id, commit, release)
            if result is None:
                self._rejoin()
                return frozenset(commit)
            with self._lock:
                self._lease_until = sent + self._session
                self._flight.committed(commit)
                for tp in release | (set(self._positions) - result.owned):
                    self._forget(tp)
                self._flight.set_revoking(result.revoke & set(self._positions))
                new = result.owned - set(self._positions)
            if result.rejected:
                log.warning(
                    "group %s: commit refused for %s (not owned)",
                    self.group,
                    sorted(map(str, result.rejected)),
                )
            if new:
                positions = self._initial_positions(new)
                with self._lock:
                    self._positions.update(positions)
            if new or release or result.revoke:
                self._wake()
            return result.rejected

    def _forget(self, tp: TopicPartition) -> None:
        self._positions.pop(tp, None)
        self._flight.forget(tp)

    def _rejoin(self) -> None:
        log.warning(
            "group %s: member %s missed its session timeout and was removed; rejoining",
            self.group,
            self.member_id,
        )
        with self._lock:
            for tp in list(self._positions):
                self._forget(tp)
            self._lease_until = 0.0
        self._register()

    def _register(self) -> None:
        self.member_id = f"{self._client}-{uuid.uuid4().hex[:12]}"
        member = _groups.Member(
            member_id=self.member_id,
            client=self._client,
            topics=self.topics,
            session_ms=int(self._session * 1000),
            heartbeat_ms=int(time.time() * 1000),
        )
        self._log.group_join(self.group, member)

    def _initial_positions(self, tps: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        committed = self._log.committed(self.group, tps)
        marks = self._log.watermarks(tps)
        positions = {}
        for tp in tps:
            start, end = marks[tp]
            offset = committed.get(tp)
            if offset is None:
                offset = start if self._reset is OffsetReset.EARLIEST else end
            elif offset < start:
                log.warning(
                    "group %s: committed offset %d of %s was removed by retention; resuming at %d",
                    self.group,
                    offset,
                    tp,
                    start,
                )
                offset = start
            positions[tp] = min(offset, end)
        return positions


class LocalBroker(Broker):
    """Base of the brokers whose consumer groups tidings coordinates itself (memory, sqlite):
    `subscribe` returns a LocalConsumer over `self.log`."""

    client = "local"
    log: LocalLog
    _closed: bool
    _consumers: list[LocalConsumer]

    def subscribe(
        self,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str = OffsetReset.EARLIEST,
        max_batch: int = 1000,
        session_timeout: float = 10.0,
    ) -> Consumer:
        if self._closed:
            raise BrokerClosedError("broker is closed")
        consumer = LocalConsumer(
            self.log,
            group,
            topics,
            auto_offset_reset=auto_offset_reset,
            max_batch=max_batch,
            session_timeout=session_timeout,
            client=self.client,
            poll_interval=1.0,
        )
        self._consumers.append(consumer)
        return consumer

    async def _close_consumers(self) -> None:
        await asyncio.gather(*(c.close() for c in self._consumers))
