"""The Kafka consumer: a group member with the semantics of the embedded broker's consumer.

Its asyncio side hands out the batches its polling thread (`GroupMember`) buffered, one batch
in flight per partition (`InFlight`). Offsets are committed only for acked batches - never past
an unprocessed record -: every second, on `commit`, when partitions are revoked and on `close`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tidings._wakeup import Wakeup
from tidings.brokers.base import CanSeek, Consumer
from tidings.brokers.kafka._cluster import Cluster
from tidings.brokers.kafka._member import GroupMember
from tidings.brokers.kafka._records import KafkaRecords, item_offset
from tidings.brokers.kafka._settings import rdkafka_log
from tidings.errors import BrokerClosedError, CommitFailedError, ConfigError
from tidings.instance import instance_id
from tidings.records import Batch, OffsetReset, SeekTo, TopicPartition

log = logging.getLogger("tidings.kafka")

MAX_POLL_INTERVAL_MS: Final = 300_000
CONSUMER_DEFAULTS: Final[Mapping[str, Any]] = {"fetch.queue.backoff.ms": 10}
"""librdkafka settings of every group consumer that options may override. librdkafka (2.4+)
waits `fetch.queue.backoff.ms` (default 1000) before fetching again once its local queue holds
`queued.min.messages`; a consumer slower than the fetcher then idles for most of each second
(consumption measured 2-2.5x slower with the default, see BENCHMARKS.md)."""


class KafkaConsumer(GroupMember, Consumer, CanSeek):
    """A member of a Kafka consumer group. Create through `KafkaBroker.subscribe`."""

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
        super().__init__(
            cluster,
            group,
            topics,
            auto_offset_reset=auto_offset_reset,
            max_batch=max_batch,
            session_timeout=session_timeout,
        )
        self._state = "new"
        self._thread: threading.Thread | None = None
        self._start_lock: asyncio.Lock | None = None

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    # lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the topics exist, join the group and wait for the first assignment, up to
        `revoke_timeout` + a session timeout (the group may be finishing a rebalance)."""
        if self._state == "started":
            return
        if self._state == "closed":
            raise BrokerClosedError("consumer is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._state != "new":
                self._raise_if_failed()
                return
            for topic in self.topics:
                await self._cluster.partition_count(topic, refresh=True)
            session_ms = await self._cluster.session_timeout_ms(self._session)
            config = self._config(session_ms)
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._wakeup = Wakeup()
            self._joined = loop.create_future()
            self._stopped = loop.create_future()
            self._thread = threading.Thread(
                target=self._run, args=(config,), name=f"tidings-kafka-{self.group}", daemon=True
            )
            self._state = "started"
            self._thread.start()
            join_timeout = self._revoke_timeout + session_ms / 1000
            try:
                await asyncio.wait_for(asyncio.shield(self._joined), join_timeout)
            except TimeoutError:
                log.warning(
                    "group %s: no assignment within %.0fs; partitions are claimed in the "
                    "background",
                    self.group,
                    join_timeout,
                )
            self._raise_if_failed()

    def _config(self, session_ms: int) -> dict[str, Any]:
        """The librdkafka consumer's settings: rebalancing is cooperative (a join or leave moves
        only the partitions that change owner), offsets are committed only by this class."""
        settings = self._cluster.settings
        config: dict[str, Any] = {
            "heartbeat.interval.ms": max(100, min(1000, session_ms // 10)),
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            **CONSUMER_DEFAULTS,
            "logger": rdkafka_log,
            **settings.common,
            **settings.consumer,
            "group.id": self._cluster.group_id(self.group),
            "group.protocol": "classic",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_ms,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            # a committed offset removed by retention resumes at the oldest retained record
            # whatever auto_offset_reset says, like the embedded broker (see _starting_offsets)
            "auto.offset.reset": "earliest",
            "error_cb": self._on_client_error,
        }
        instance = instance_id()
        if instance and "group.instance.id" not in config:
            config["group.instance.id"] = instance  # static membership (tidings.instance)
        max_poll = int(config["max.poll.interval.ms"])
        if max_poll < session_ms or self._revoke_timeout * 1000 >= max_poll:
            raise ConfigError(
                f"max.poll.interval.ms ({max_poll}) must be >= the session timeout "
                f"({session_ms} ms) and > revoke_timeout ({self._revoke_timeout:g}s)"
            )
        return config

    async def close(self) -> None:
        """Commit acked offsets, leave the group (its partitions move at once). Idempotent."""
        if self._state == "closed":
            return
        started = self._state == "started"
        self._state = "closed"
        self._wake()
        if not started:
            return
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        self._stop.set()
        assert self._stopped is not None
        limit = self._timeout + self._session + 5
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped), limit)
        except TimeoutError:
            log.warning(
                "group %s: the Kafka consumer did not close within %.0fs", self.group, limit
            )
        with self._lock:
            self._owned.clear()
            self._buffers.clear()
            self._flight.clear()

    # delivery --------------------------------------------------------------------------------

    async def fetch(self, timeout: float | None = None) -> Batch | None:
        await self.start()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # cleared before looking at any state (see _wake)
            self._wakeup.clear()
            if self._state == "closed":
                raise BrokerClosedError("consumer is closed")
            self._raise_if_failed()
            batch = self._take()
            if batch is not None:
                return batch
            if deadline is None:
                await self._wakeup.wait()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await self._wakeup.wait(remaining)

    def _take(self) -> Batch | None:
        with self._lock:
            seeks = self._seeks
            ready = self._flight.ready(
                [tp for tp, buffer in self._buffers.items() if buffer and tp not in seeks]
            )
            if not ready:
                return None
            tp = ready[0]
            items = self._buffers[tp].take(self._max_batch)
            batch = Batch(tp.topic, tp.partition, KafkaRecords(tp.topic, tp.partition, items))
            self._flight.begin(tp, batch)
            return batch

    def ack(self, batch: Batch) -> None:
        self._ack(batch)

    def _ack(self, batch: Batch) -> bool:
        records = batch.records
        if not isinstance(records, KafkaRecords):  # not a batch of this consumer's
            return False
        if not self._flight.ack(batch, records.next_offset):
            return False
        self._build_ahead = records.read
        self._wake()
        return True

    def nack(self, batch: Batch, offset: int | None = None) -> None:
        tp = batch.tp
        records = batch.records
        if not isinstance(records, KafkaRecords):  # not a batch of this consumer's
            return
        with self._lock:
            if not self._flight.nack(batch):
                return
            target = records.first_offset if offset is None else offset
            buffer = self._buffers.get(tp)
            if buffer is not None and records.first_offset <= target <= records.next_offset:
                # the batch's items and the buffer are consecutive: redeliver from memory
                # (offsets may have gaps: compaction, transaction markers)
                buffer.put_back([m for m in records.items if item_offset(m) >= target])
            elif buffer is not None:
                buffer.clear()
                self._seeks[tp] = target
        self._wake()

    async def commit(self, batch: Batch | None = None) -> None:
        """Ack `batch`, then commit every acked offset. Raises CommitFailedError if a partition
        left this member with an acked offset that could not be committed (its batch is
        delivered again to the new owner), StorageError if Kafka does not take the offsets
        within `request_timeout`."""
        if batch is not None and not self._ack(batch):
            with self._lock:
                owned = batch.tp in self._owned and not self._flight.is_revoking(batch.tp)
            if not owned:
                raise CommitFailedError(
                    f"group {self.group!r}: partition {batch.tp} is no longer owned by this "
                    f"member; offset {batch.next_offset} was not committed"
                )
        if self._state != "started":
            if self._state == "closed":
                raise BrokerClosedError("consumer is closed")
            return
        self._raise_if_failed()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_requests.put(future)
        with self._cond:
            self._cond.notify_all()  # a revocation waiting for acks serves commits meanwhile
        await future

    async def seek(self, tp: TopicPartition, to: SeekTo) -> int:
        await self.start()
        self._check_owned(tp)
        offset = (await self._cluster.resolve([tp], to))[tp]
        with self._lock:
            self._check_owned(tp)
            self._flight.drop(tp)
            self._buffers[tp].clear()
            self._seeks[tp] = offset
        self._wake()
        return offset

    def _check_owned(self, tp: TopicPartition) -> None:
        if tp not in self._owned or self._flight.is_revoking(tp):
            raise ConfigError(f"cannot seek {tp}: not owned by this member")

    def assignment(self) -> frozenset[TopicPartition]:
        with self._lock:
            return frozenset(self._owned)
