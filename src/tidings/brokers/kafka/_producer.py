"""Publishing: one idempotent producer per broker (`enable.idempotence`, `acks=all`).

A publish produces every message of the call, then waits for every delivery report; a thread
serves the reports and resolves the call on its event loop. Any delivery failure raises:
nothing is fire-and-forget. Records of one call that land on one partition keep their order
(idempotence keeps it across retries). "Durable when it returns" means acknowledged by all
in-sync replicas (Kafka itself does not fsync per write).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import confluent_kafka as ck

from tidings.brokers.kafka._cluster import Cluster
from tidings.brokers.kafka._errors import TOO_LARGE, UNKNOWN_TOPIC, describe, kafka_error
from tidings.brokers.kafka._settings import rdkafka_log
from tidings.errors import ConfigError, MessageTooLargeError, StorageError, UnknownTopicError
from tidings.partitioner import partition_for_key
from tidings.records import Message, Published

log = logging.getLogger("tidings.kafka")


class Producer:
    """The broker's publishing side. A producer that fails fatally is replaced by a new one."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._thread: _ProducerThread | None = None
        self._lock = threading.Lock()

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Produce `messages` (checked: not empty, none too large) and wait for every delivery
        report. A keyed message goes to `partition_for_key(key, partitions)` - where Kafka's
        Java client and librdkafka's `murmur2_random` put it -, one without key or partition
        where librdkafka's sticky partitioner puts it."""
        cluster = self._cluster
        count = await cluster.partition_count(topic)
        partitions: list[int] = []
        for message in messages:
            if message.partition is not None:
                if not 0 <= message.partition < count:
                    count = await cluster.partition_count(topic, refresh=True)
                    if not 0 <= message.partition < count:
                        raise UnknownTopicError(
                            f"topic {topic!r} has no partition {message.partition} (it has {count})"
                        )
                partitions.append(message.partition)
            elif message.key is not None:
                partitions.append(partition_for_key(message.key, count))
            else:
                partitions.append(-1)
        producer = self._producer()
        delivery = _Delivery(asyncio.get_running_loop(), len(messages))
        produced = 0
        try:
            for index, (message, partition) in enumerate(zip(messages, partitions, strict=True)):
                while True:
                    try:
                        producer.produce(
                            topic,
                            message.value,
                            message.key,
                            partition,
                            on_delivery=functools.partial(delivery.report, index),
                            headers=list(message.headers) if message.headers else None,
                        )
                        break
                    except BufferError:  # librdkafka's queue is full: let it drain
                        await asyncio.sleep(0.005)
                produced += 1
                if produced % 1000 == 0:
                    await asyncio.sleep(0)
        except BaseException as exc:
            delivery.abandon(len(messages) - produced)
            if produced:
                await asyncio.shield(delivery.future)
            if isinstance(exc, ck.KafkaException):
                raise self._error(topic, kafka_error(exc) or exc) from None
            raise
        await asyncio.shield(delivery.future)
        if delivery.error is not None:
            written = sum(p is not None for p in delivery.results)
            error = self._error(topic, delivery.error, written, len(messages))
            if not isinstance(error, UnknownTopicError):
                try:  # was the topic deleted meanwhile?
                    await cluster.partition_count(topic, refresh=True)
                except UnknownTopicError:
                    raise UnknownTopicError(
                        f"publish to topic {topic!r} failed: the topic does not exist "
                        f"({describe(delivery.error)}; {written} of {len(messages)} "
                        "messages were written)"
                    ) from None
                except StorageError:
                    pass
            raise error
        return [p for p in delivery.results if p is not None]

    async def close(self) -> None:
        """Deliver what is pending (bounded by the message timeout), then stop."""
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.close)

    def _error(
        self, topic: str, err: ck.KafkaError | BaseException, written: int = 0, total: int = 0
    ) -> Exception:
        code = err.code() if isinstance(err, ck.KafkaError) else None
        text = describe(err)
        if total:
            text += f"; {written} of {total} messages were written"
        if code in UNKNOWN_TOPIC:
            self._cluster.forget_topic(topic)
            return UnknownTopicError(f"publish to topic {topic!r} failed: {text}")
        if code in TOO_LARGE:
            return MessageTooLargeError(
                f"publish to topic {topic!r} failed: Kafka refused a message as too large: {text}"
            )
        return StorageError(
            f"publish to topic {topic!r} on Kafka at {self._cluster.bootstrap} failed: {text}"
        )

    def _producer(self) -> ck.Producer:
        with self._lock:
            current = self._thread
            if current is not None and current.fatal is None:
                return current.producer
            if current is not None:
                threading.Thread(target=current.close, daemon=True).start()
            settings = self._cluster.settings
            config: dict[str, Any] = {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 1,  # librdkafka's 5 ms is added to every hop of a flow
                "partitioner": "murmur2_random",
                "message.timeout.ms": 120_000,
                "message.max.bytes": max(1_000_000, settings.max_message_bytes + 65_536),
                "logger": rdkafka_log,
                **settings.common,
                **settings.producer,
            }
            timeout = float(config["message.timeout.ms"]) / 1000 + 5
            try:
                self._thread = _ProducerThread(config, timeout)
            except (ck.KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(f"invalid kafka producer settings: {describe(exc)}") from None
            return self._thread.producer


class _Delivery:
    """The delivery reports of one publish call. Reports arrive on the producer's polling
    thread; the call's future is resolved on its event loop once every report arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.results: list[Published | None] = [None] * count
        self.error: ck.KafkaError | None = None
        self._pending = count
        self._lock = threading.Lock()

    def report(self, index: int, err: ck.KafkaError | None, message: ck.Message) -> None:
        with self._lock:
            if err is not None:
                if self.error is None:
                    self.error = err
            else:
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None
                self.results[index] = Published(partition, offset)
            self._pending -= 1
            done = self._pending == 0
        if done:
            self._resolve()

    def abandon(self, count: int) -> None:
        """`count` messages were never produced: expect no report for them."""
        with self._lock:
            self._pending -= count
            done = self._pending == 0
        if done:
            self._resolve()

    def _resolve(self) -> None:
        def finish() -> None:
            if not self.future.done():
                self.future.set_result(None)

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(finish)


class _ProducerThread:
    """A producer and the thread that serves its delivery reports."""

    def __init__(self, config: dict[str, Any], flush_timeout: float) -> None:
        self.fatal: ck.KafkaError | None = None
        self._flush_timeout = flush_timeout
        self._last_error = 0.0
        self.producer = ck.Producer({**config, "error_cb": self._on_error})
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tidings-kafka-producer", daemon=True
        )
        self._thread.start()

    def _on_error(self, err: ck.KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.error("kafka producer: fatal error %s; a new producer is created", describe(err))
        elif time.monotonic() - self._last_error > 10:
            self._last_error = time.monotonic()
            log.warning("kafka producer: %s", describe(err))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.producer.poll(0.1)
            except Exception:
                log.exception("kafka producer: delivery report handling failed")
        left = self.producer.flush(self._flush_timeout)
        if left:
            log.error("kafka producer: %d message(s) still undelivered at close", left)

    def close(self) -> None:
        """Deliver what is pending (bounded by the message timeout), then stop."""
        self._stop.set()
        self._thread.join()
