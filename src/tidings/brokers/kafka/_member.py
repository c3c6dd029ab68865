"""The polling thread of a Kafka consumer-group member.

One thread per consumer owns its librdkafka consumer (which is not thread-safe) and polls it all
the time, also while handlers are slow, so `max.poll.interval.ms` is never exceeded; heartbeats
run in librdkafka's own thread. It buffers the messages per partition, pauses partitions whose
buffer is full, commits acked offsets, applies seeks and serves rebalances. The asyncio side
(`KafkaConsumer`) shares the state with it under `_lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import confluent_kafka as ck

from tidings._wakeup import Wakeup
from tidings.brokers._inflight import InFlight
from tidings.brokers.base import check_subscription
from tidings.brokers.kafka._cluster import Cluster, ktp, tp_list, tp_of
from tidings.brokers.kafka._errors import COMMIT_FENCED, COMMIT_RETRY, describe, kafka_error
from tidings.brokers.kafka._reader import consume
from tidings.brokers.kafka._records import (
    PartitionBuffer,
    build_records,
    message_bytes,
    split_runs,
)
from tidings.errors import BrokerClosedError, CommitFailedError, ConfigError, StorageError
from tidings.records import OffsetReset, Record, TopicPartition

log = logging.getLogger("tidings.kafka")

COMMIT_INTERVAL: Final = 1.0
"""Seconds between the background commits of acked offsets."""
POLL_TIMEOUT: Final = 0.05
"""Seconds one poll may block: the latency of seeks, commits, resumes."""


class GroupMember:
    """The state a consumer shares between its asyncio side and its polling thread (under
    `_lock`, which also guards `_flight`), and the polling thread itself."""

    def __init__(
        self,
        cluster: Cluster,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str,
        max_batch: int,
        session_timeout: float,
    ) -> None:
        self._reset = check_subscription(
            group, topics, auto_offset_reset, max_batch, session_timeout
        )
        self._cluster = cluster
        self.group = group
        self.topics = tuple(dict.fromkeys(topics))
        self._max_batch = max_batch
        # Pausing a partition drops librdkafka's prefetched messages for it, so pause only when
        # far ahead of the application: a limit of one batch made consumption 4x slower.
        self._buffer_limit = max(8 * max_batch, 5000)
        self._max_buffer_bytes = cluster.settings.max_buffer_bytes
        self._partition_buffer_bytes = max(1, self._max_buffer_bytes // 4)
        self._session = session_timeout
        self._timeout = cluster.timeout
        self._revoke_timeout = cluster.settings.revoke_timeout
        self.member_id = ""

        self._flight = InFlight()
        self._lock = self._flight.lock
        self._cond = self._flight.changed
        self._owned: set[TopicPartition] = set()
        self._buffers: dict[TopicPartition, PartitionBuffer] = {}
        self._build_ahead = False
        """Whether the last acked batch's records were read: the polling thread then builds the
        records of what it buffers (see _records). Set on the loop, read by the thread."""
        self._seeks: dict[TopicPartition, int] = {}
        self._dropped: set[TopicPartition] = set()
        """Partitions that left with an acked offset not committed: the next commit() fails."""
        self._error: BaseException | None = None

        # polling thread only
        self._paused: set[TopicPartition] = set()
        self._commit_requests: queue.SimpleQueue[asyncio.Future[None]] = queue.SimpleQueue()
        self._waiting_commits: list[tuple[asyncio.Future[None], float]] = []
        self._last_error_log: dict[int, float] = {}

        self._closing = False
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: Wakeup | None = None
        self._joined: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None

    # the event loop's side ---------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the event loop (from the polling thread)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn, *args)

    def _settle(self, future: asyncio.Future[None] | None, error: BaseException | None) -> None:
        def settle() -> None:
            if future is None or future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self._call(settle)

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is not None:
            raise error

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._settle(self._joined, error)
        self._wake()

    # polling ---------------------------------------------------------------------------------

    def _run(self, config: dict[str, Any]) -> None:
        consumer: ck.Consumer | None = None
        try:
            try:
                consumer = ck.Consumer(config)
            except (ck.KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(f"invalid kafka consumer settings: {describe(exc)}") from None
            consumer.subscribe(
                list(self.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            next_commit = time.monotonic() + COMMIT_INTERVAL
            while not self._stop.is_set():
                self._serve_commits(consumer)
                self._apply_seeks(consumer)
                self._apply_pauses(consumer)
                messages = consume(consumer, 1000, POLL_TIMEOUT)
                if messages:
                    self._buffer(messages)
                if time.monotonic() >= next_commit:
                    next_commit = time.monotonic() + COMMIT_INTERVAL
                    with contextlib.suppress(CommitFailedError, StorageError):
                        self._commit_acked(consumer)
            self._final_commit(consumer)
        except BaseException as exc:
            if not isinstance(exc, ConfigError | StorageError):
                log.exception("group %s: the Kafka consumer failed", self.group)
                exc = StorageError(f"group {self.group!r}: the Kafka consumer failed: {exc}")
            self._fail(exc)
        finally:
            self._closing = True
            if consumer is not None:
                try:
                    # librdkafka (2.16) skips the LeaveGroup in close() for a cooperative member
                    # without partitions; an explicit unsubscribe first always leaves at once
                    consumer.unsubscribe()
                    consumer.close()
                except Exception as exc:
                    log.warning("group %s: closing the Kafka consumer: %s", self.group, exc)
            closed = BrokerClosedError("consumer is closed")
            for future, _ in self._waiting_commits:
                self._settle(future, self._error or closed)
            while True:
                try:
                    self._settle(self._commit_requests.get_nowait(), self._error or closed)
                except queue.Empty:
                    break
            self._settle(self._joined, None)
            self._settle(self._stopped, None)

    def _buffer(self, messages: list[ck.Message]) -> None:
        runs, errors = split_runs(messages, self.topics[0] if len(self.topics) == 1 else None)
        sizes = [message_bytes(run) for _, _, run in runs]
        items: Sequence[tuple[str, int, Sequence[ck.Message | Record]]] = runs
        if self._build_ahead:
            items = [(t, p, build_records(t, p, run)) for t, p, run in runs]
        appended = False
        with self._lock:
            for (topic, partition, run), size in zip(items, sizes, strict=True):
                tp = TopicPartition(topic, partition)
                buffer = self._buffers.get(tp)
                if buffer is None or tp in self._seeks or self._flight.is_revoking(tp):
                    continue
                buffer.add(run, size)
                appended = True
        if appended:
            self._wake()
        for err in errors:
            self._on_client_error(err)

    def _on_client_error(self, err: ck.KafkaError) -> None:
        code = err.code()
        if err.fatal():
            self._fail(StorageError(f"group {self.group!r}: fatal Kafka error: {describe(err)}"))
        elif code == ck.KafkaError.INVALID_SESSION_TIMEOUT:
            self._fail(ConfigError(f"group {self.group!r}: {describe(err)}"))
        elif time.monotonic() - self._last_error_log.get(code, 0.0) > 10:
            self._last_error_log[code] = time.monotonic()
            log.warning("group %s: %s", self.group, describe(err))

    def _apply_seeks(self, consumer: ck.Consumer) -> None:
        with self._lock:
            if not self._seeks:
                return
            seeks = dict(self._seeks)
        for tp, offset in seeks.items():
            try:
                consumer.seek(ktp(tp, offset))
            except ck.KafkaException:
                # e.g. not fetching yet right after assignment: re-assign at the new offset
                try:
                    consumer.incremental_unassign([ktp(tp)])
                    consumer.incremental_assign([ktp(tp, offset)])
                    self._paused.discard(tp)
                except ck.KafkaException as exc:
                    log.debug("group %s: seek %s to %d deferred: %s", self.group, tp, offset, exc)
                    continue
            with self._lock:
                if self._seeks.get(tp) == offset:
                    del self._seeks[tp]
                    buffer = self._buffers.get(tp)
                    if buffer is not None:
                        buffer.clear()
        self._wake()

    def _apply_pauses(self, consumer: ck.Consumer) -> None:
        """Pause the partitions whose buffer is full, resume the others. Full is 8 batches (at
        least 5000 messages), a quarter of `max_buffer_bytes` of key + value, or anything at all
        while the buffers of all partitions together hold `max_buffer_bytes`. A poll's messages
        are buffered whole, so a buffer may exceed that by what one poll brings (librdkafka's own
        prefetch, up to `queued.max.messages.kbytes`, comes on top in any case)."""
        with self._lock:
            buffers = self._buffers
            over = sum(b.bytes for b in buffers.values()) >= self._max_buffer_bytes
            full = {
                tp
                for tp, b in buffers.items()
                if len(b) >= self._buffer_limit
                or b.bytes >= self._partition_buffer_bytes
                or (over and b.bytes > 0)
            }
            self._paused &= self._owned
        pause = full - self._paused
        resume = self._paused - full
        try:
            if pause:
                consumer.pause([ktp(tp) for tp in pause])
                self._paused |= pause
            if resume:
                consumer.resume([ktp(tp) for tp in resume])
                self._paused -= resume
        except ck.KafkaException as exc:
            log.debug("group %s: pause/resume: %s", self.group, exc)

    # committing ------------------------------------------------------------------------------

    def _serve_commits(self, consumer: ck.Consumer) -> None:
        """Answer the commit() calls waiting: once every acked offset is committed (failing with
        CommitFailedError if a partition left with an acked offset that could not be), with
        StorageError if Kafka does not take them within `request_timeout`."""
        while True:
            try:
                future = self._commit_requests.get_nowait()
            except queue.Empty:
                break
            self._waiting_commits.append((future, time.monotonic() + self._timeout))
        if not self._waiting_commits:
            return
        try:
            done = self._commit_acked(consumer)
        except (CommitFailedError, StorageError) as exc:
            for future, _ in self._waiting_commits:
                self._settle(future, exc)
            self._waiting_commits.clear()
            return
        failure: CommitFailedError | None = None
        if done:
            with self._lock:
                dropped, self._dropped = self._dropped, set()
            if dropped:
                failure = CommitFailedError(
                    f"group {self.group!r}: partitions {tp_list(dropped)} are no longer "
                    "owned by this member; their acked offsets were not committed"
                )
        now = time.monotonic()
        keep = []
        for future, deadline in self._waiting_commits:
            if done:
                self._settle(future, failure)
            elif now > deadline:
                self._settle(
                    future,
                    StorageError(
                        f"group {self.group!r}: offsets could not be committed within "
                        f"{self._timeout:g}s"
                    ),
                )
            else:
                keep.append((future, deadline))
        self._waiting_commits = keep

    def _commit_acked(self, consumer: ck.Consumer) -> bool:
        """Commit every acked offset of the owned partitions once. True if nothing is left to
        commit, False after an error worth retrying (a rebalance in progress: retried until it
        is over); raises CommitFailedError when the member was fenced."""
        with self._lock:
            offsets = self._flight.acked(self._owned)
        if not offsets:
            return True
        err = self._commit(consumer, offsets)
        if err is None:
            self._flight.committed(offsets)
            return True
        if err.code() in COMMIT_FENCED:
            raise CommitFailedError(
                f"group {self.group!r}: this member lost its partitions ({describe(err)}); "
                f"offsets of {tp_list(offsets)} were not committed"
            )
        if err.code() in COMMIT_RETRY or err.retriable():
            log.debug("group %s: commit will be retried: %s", self.group, describe(err))
            return False
        raise StorageError(f"group {self.group!r}: committing offsets failed: {describe(err)}")

    def _commit(
        self, consumer: ck.Consumer, offsets: Mapping[TopicPartition, int]
    ) -> ck.KafkaError | None:
        try:
            results = consumer.commit(
                offsets=[ktp(tp, o) for tp, o in offsets.items()], asynchronous=False
            )
        except ck.KafkaException as exc:
            err = kafka_error(exc)
            if err is None:
                raise
            return None if err.code() == ck.KafkaError._NO_OFFSET else err
        for result in results or []:
            if result.error is not None:
                return result.error
        return None

    def _final_commit(self, consumer: ck.Consumer) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                if self._commit_acked(consumer):
                    return
            except (CommitFailedError, StorageError) as exc:
                log.warning("group %s: %s", self.group, exc)
                return
            if time.monotonic() > deadline:
                log.warning("group %s: acked offsets not committed at close", self.group)
                return
            consume(consumer, 1000, POLL_TIMEOUT)  # serve a rebalance in progress

    # rebalance callbacks (inside consume) ----------------------------------------------------

    def _on_assign(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        positioned = partitions
        if partitions:
            try:
                positioned = self._starting_offsets(consumer, partitions)
            except ck.KafkaException as exc:
                log.warning(
                    "group %s: could not read committed offsets (%s); librdkafka resolves them",
                    self.group,
                    describe(exc),
                )
                positioned = [ck.TopicPartition(p.topic, p.partition) for p in partitions]
        consumer.incremental_assign(positioned)
        with self._lock:
            for p in positioned:
                tp = tp_of(p)
                self._owned.add(tp)
                self._buffers[tp] = PartitionBuffer()
        self.member_id = consumer.memberid() or self.member_id
        log.debug("group %s: assigned %s", self.group, tp_list(tp_of(p) for p in partitions))
        self._settle(self._joined, None)
        self._wake()

    def _starting_offsets(
        self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]
    ) -> list[ck.TopicPartition]:
        """Committed offsets; else the start (earliest) or the end offset at this moment
        (latest)."""
        committed = consumer.committed(
            [ck.TopicPartition(p.topic, p.partition) for p in partitions], timeout=self._timeout
        )
        result = []
        for p in committed:
            if p.error is not None:
                raise ck.KafkaException(p.error)
            if p.offset >= 0:
                result.append(ck.TopicPartition(p.topic, p.partition, p.offset))
            elif self._reset is OffsetReset.EARLIEST:
                result.append(ck.TopicPartition(p.topic, p.partition, ck.OFFSET_BEGINNING))
            else:
                _, end = consumer.get_watermark_offsets(
                    ck.TopicPartition(p.topic, p.partition), timeout=self._timeout
                )
                result.append(ck.TopicPartition(p.topic, p.partition, end))
        return result

    def _on_revoke(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        """Stop delivering the partitions, wait up to `revoke_timeout` for their batches in
        flight to settle, commit what was acked, and only then let the rebalance go on (Kafka
        holds the whole group's rebalance meanwhile). A batch still unsettled then is delivered
        again to the new owner; its late ack changes nothing."""
        tps = {tp_of(p) for p in partitions}
        with self._lock:
            self._flight.revoke(tps & self._owned)
            for tp in tps:
                self._seeks.pop(tp, None)
                buffer = self._buffers.get(tp)
                if buffer is not None:
                    buffer.clear()
        self._wake()
        deadline = time.monotonic() + self._revoke_timeout
        while True:
            with self._lock:
                waiting = self._flight.in_flight(tps)
                if self._closing or not waiting:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "group %s: giving up %s with a batch still in flight after %.0fs "
                        "(revoke_timeout); the new owner receives it again",
                        self.group,
                        tp_list(waiting),
                        self._revoke_timeout,
                    )
                    break
                if self._commit_requests.empty():
                    self._cond.wait(min(remaining, 0.5))
            self._serve_commits(consumer)  # a handler may commit one batch before acking another
        self._commit_revoked(consumer, self._flight.acked(tps))
        with self._lock:
            for tp in tps:
                self._forget(tp)
        self._paused -= tps
        log.debug("group %s: revoked %s", self.group, tp_list(tps))
        self._wake()

    def _commit_revoked(self, consumer: ck.Consumer, offsets: dict[TopicPartition, int]) -> None:
        for attempt in range(3):
            if not offsets:
                return
            err = self._commit(consumer, offsets)
            if err is None:
                self._flight.committed(offsets)
                return
            if attempt == 2 or err.code() not in COMMIT_RETRY:
                log.warning(
                    "group %s: committing revoked %s failed: %s",
                    self.group,
                    tp_list(offsets),
                    describe(err),
                )
                return
            time.sleep(0.1)

    def _on_lost(self, consumer: ck.Consumer, partitions: list[ck.TopicPartition]) -> None:
        tps = {tp_of(p) for p in partitions}
        log.warning(
            "group %s: lost %s (the member missed its session timeout); acked offsets not yet "
            "committed are redelivered",
            self.group,
            tp_list(tps),
        )
        with self._lock:
            for tp in tps:
                self._forget(tp)
        self._paused -= tps
        self._wake()

    def _forget(self, tp: TopicPartition) -> None:
        self._owned.discard(tp)
        self._buffers.pop(tp, None)
        if self._flight.forget(tp):
            self._dropped.add(tp)
        self._seeks.pop(tp, None)
