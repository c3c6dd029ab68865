"""Reading records without a group: one consumer per broker, assigned partitions directly, on a
thread of its own. It never joins a group nor commits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import confluent_kafka as ck

from tidings.brokers.kafka._cluster import Cluster, ktp
from tidings.brokers.kafka._errors import UNKNOWN_TOPIC, describe
from tidings.brokers.kafka._records import to_record
from tidings.brokers.kafka._settings import rdkafka_log
from tidings.errors import ConfigError, StorageError, UnknownTopicError
from tidings.records import Record, TopicPartition


def consume(consumer: ck.Consumer, count: int, timeout: float) -> list[ck.Message]:
    """Up to `count` messages: what is there now, else wait up to `timeout` for the first one
    (librdkafka's consume() would wait the whole timeout for `count` messages)."""
    messages = consumer.consume(count, 0)
    if messages:
        return messages
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(count - 1, 0)] if count > 1 else [first]


class Reader:
    """Reads ranges of a partition. Starts at the oldest retained record if the offset asked
    for is gone; a read taking longer than the cluster's request timeout raises StorageError."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tidings-kafka-read")
        self._consumer: ck.Consumer | None = None

    async def read(
        self, tp: TopicPartition, offset: int, max_records: int, stop: int | None = None
    ) -> list[Record]:
        """Up to `max_records` records with offsets >= `offset` (and < `stop`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._read_blocking, tp, offset, max_records, stop
        )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._close_consumer)
        self._pool.shutdown(wait=False)

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close()

    def _get_consumer(self) -> ck.Consumer:
        if self._consumer is None:
            settings = self._cluster.settings
            config = {
                "logger": rdkafka_log,
                **settings.common,
                **settings.consumer,
                "group.id": f"tidings-reader-{os.getpid()}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 20,  # reach end-of-partition quickly
            }
            try:
                self._consumer = ck.Consumer(config)
            except (ck.KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(f"invalid kafka consumer settings: {describe(exc)}") from None
        return self._consumer

    def _read_blocking(
        self, tp: TopicPartition, offset: int, max_records: int, stop: int | None
    ) -> list[Record]:
        reader = self._get_consumer()
        timeout = self._cluster.timeout
        try:
            low, high = reader.get_watermark_offsets(ktp(tp), timeout=timeout)
        except ck.KafkaException as exc:
            raise self._cluster.error(exc, f"reading {tp}") from None
        end = high if stop is None else min(high, stop)
        if offset >= end:
            return []
        reader.assign([ktp(tp, max(offset, low))])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        try:
            while len(records) < max_records:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StorageError(
                        f"reading {tp} from Kafka at {self._cluster.bootstrap} timed out after "
                        f"{timeout:g}s"
                    )
                batch = consume(reader, min(1000, max_records - len(records)), min(remaining, 0.2))
                for message in batch:
                    err = message.error()
                    if err is not None:
                        if err.code() == ck.KafkaError._PARTITION_EOF:
                            return records
                        if err.code() in UNKNOWN_TOPIC:
                            raise UnknownTopicError(f"{tp} does not exist: {describe(err)}")
                        if err.fatal():
                            raise StorageError(f"reading {tp} failed: {describe(err)}")
                        continue
                    record = to_record(message)
                    if record.offset >= end and stop is not None:
                        return records
                    records.append(record)
                    if len(records) >= max_records or record.offset >= end - 1:
                        return records
            return records
        finally:
            reader.unassign()
