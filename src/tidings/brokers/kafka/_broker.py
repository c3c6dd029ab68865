"""The Kafka broker: publishing, reading and subscribing over one cluster connection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tidings.brokers.base import Admin, Broker, CanRead, Consumer, check_sizes
from tidings.brokers.kafka._admin import KafkaAdmin
from tidings.brokers.kafka._cluster import Cluster
from tidings.brokers.kafka._consumer import KafkaConsumer
from tidings.brokers.kafka._producer import Producer
from tidings.brokers.kafka._reader import Reader
from tidings.brokers.kafka._settings import parse_settings
from tidings.errors import BrokerClosedError, UnknownTopicError
from tidings.records import Message, OffsetReset, Published, Record, TopicPartition


class KafkaBroker(Broker, CanRead):
    """A connection to a Kafka cluster. Safe to share between the tasks of one event loop.

    Creating it does not contact Kafka; the first operation does, and raises StorageError naming
    the bootstrap servers if they do not answer within `request_timeout`."""

    def __init__(self, url: str, **options: Any) -> None:
        self.settings = parse_settings(url, options)
        self.url = self.settings.url
        self.bootstrap_servers = self.settings.bootstrap
        self.max_message_bytes = self.settings.max_message_bytes
        self.namespace = self.settings.group_prefix
        self.request_timeout = self.settings.request_timeout
        self.cluster = Cluster(self.settings)
        self.client = self.cluster.client
        self._reader = Reader(self.cluster)
        self._producer = Producer(self.cluster)
        self._admin = KafkaAdmin(self.cluster, self._reader)
        self._consumers: list[KafkaConsumer] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"KafkaBroker({self.url!r})"

    @property
    def admin(self) -> Admin:
        return self._admin

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Produce `messages` and wait until every one is acknowledged (`Producer.publish`)."""
        self._check_open()
        if not messages:
            return []
        check_sizes(topic, messages, self.max_message_bytes)
        return await self._producer.publish(topic, messages)

    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        """Up to `max_records` records from `offset` on, read without a group (`Reader`)."""
        self._check_open()
        count = await self.cluster.partition_count(tp.topic)
        if not 0 <= tp.partition < count:
            raise UnknownTopicError(f"{tp} does not exist (topic {tp.topic!r} has {count})")
        if max_records < 1:
            return []
        return await self._reader.read(tp, offset, max_records)

    def subscribe(
        self,
        group: str,
        topics: Sequence[str],
        *,
        auto_offset_reset: OffsetReset | str = OffsetReset.EARLIEST,
        max_batch: int = 1000,
        session_timeout: float = 10.0,
    ) -> Consumer:
        """A member of consumer group `group`. `session_timeout` is raised to the cluster's
        `group.min.session.timeout.ms` (`Cluster.session_timeout_ms`)."""
        self._check_open()
        consumer = KafkaConsumer(
            self.cluster,
            group,
            topics,
            auto_offset_reset=auto_offset_reset,
            max_batch=max_batch,
            session_timeout=session_timeout,
        )
        self._consumers = [c for c in self._consumers if not c.closed]
        self._consumers.append(consumer)
        return consumer

    async def close(self) -> None:
        """Close consumers (committing acked offsets), deliver pending publishes, release."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(c.close() for c in self._consumers), return_exceptions=True)
        await self._producer.close()
        await self._reader.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("broker is closed")
