"""The embedded broker and its admin."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence

from tidings import _sqlite
from tidings.brokers import _groups
from tidings.brokers._admin import describe_group, resolve_reset
from tidings.brokers._local import LocalBroker, LocalConsumer
from tidings.brokers.base import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Admin,
    CanEnforceRetention,
    CanInspect,
    CanRead,
    CanResetOffsets,
    check_sizes,
)
from tidings.brokers.sqlite._group_rows import load_group
from tidings.brokers.sqlite._log import ROW_HEADROOM, SQLiteLog
from tidings.brokers.sqlite._writer import Writer
from tidings.errors import BrokerClosedError, ConfigError
from tidings.records import GroupInfo, Message, Published, Record, SeekTo, TopicInfo, TopicPartition


class SQLiteBroker(LocalBroker, CanRead):
    """The embedded broker. Safe to share between tasks and threads of one process; several
    processes may open the same file."""

    OPTIONS = {"synchronous", "max_message_bytes"}
    client = "sqlite"
    log: SQLiteLog

    def __init__(
        self,
        url: str,
        *,
        synchronous: str | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        parsed = _sqlite.parse_url(url, allowed=self.OPTIONS)
        self.url = url
        self.path = parsed.path
        self.synchronous = _sqlite.synchronous_option(
            synchronous or parsed.options.get("synchronous")
        )
        limit = max_message_bytes or parsed.options.get("max_message_bytes")
        try:
            self.max_message_bytes = int(limit) if limit is not None else DEFAULT_MAX_MESSAGE_BYTES
        except ValueError:
            raise ConfigError(f"max_message_bytes must be an integer, got {limit!r}") from None
        if self.max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        self.log = SQLiteLog(self.path, synchronous=self.synchronous)
        if self.max_message_bytes > self.log.length_limit - ROW_HEADROOM:
            self.log.close()
            raise ConfigError(
                f"max_message_bytes={self.max_message_bytes} cannot be stored: SQLite's limit on"
                f" one value is {self.log.length_limit} bytes here, so the largest possible"
                f" max_message_bytes is {self.log.length_limit - ROW_HEADROOM}"
            )
        self._writer = Writer(self.log, self.synchronous)
        self._admin = SQLiteAdmin(self.log, self.synchronous)
        self._consumers: list[LocalConsumer] = []
        self._closed = False

    @property
    def admin(self) -> Admin:
        return self._admin

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Safe to cancel (see `Writer`): what is cancelled is written whole or not at all."""
        if self._closed:
            raise BrokerClosedError("broker is closed")
        if not messages:
            return []
        check_sizes(topic, messages, self.max_message_bytes)
        return await asyncio.wrap_future(self._writer.submit(topic, messages))

    def publish_sync(self, topic: str, messages: Sequence[Message]) -> list[Published]:
        """Blocking publish for threads without an event loop."""
        if self._closed:
            raise BrokerClosedError("broker is closed")
        check_sizes(topic, messages, self.max_message_bytes)
        return self._writer.submit(topic, messages).result()

    async def read(self, tp: TopicPartition, offset: int, max_records: int) -> list[Record]:
        return await asyncio.to_thread(self.log.read, tp, offset, max_records)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_consumers()
        await asyncio.to_thread(self._writer.close)
        await asyncio.to_thread(self.log.close)


class SQLiteAdmin(Admin, CanInspect, CanResetOffsets, CanEnforceRetention):
    def __init__(self, log_: SQLiteLog, synchronous: str) -> None:
        self._log = log_
        self._synchronous = synchronous

    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        exist_ok: bool = False,
    ) -> TopicInfo:
        await asyncio.to_thread(
            self._log.create_topic, name, partitions, retention_ms, retention_bytes, exist_ok
        )
        return (await asyncio.to_thread(self._log.topic_infos, name))[0]

    async def durability_warnings(self, topics: Sequence[str]) -> list[str]:
        """One warning, for every topic alike, unless publishes are fsync'd before they are
        acknowledged (synchronous=full or extra)."""
        if self._synchronous in ("full", "extra"):
            return []
        return [
            f"the broker {self._log.path} runs with synchronous={self._synchronous}: a power cut"
            " can lose publishes it had acknowledged (synchronous=full keeps them)"
        ]

    async def list_topics(self) -> list[TopicInfo]:
        return await asyncio.to_thread(self._log.topic_infos)

    async def describe_topic(self, name: str) -> TopicInfo:
        return (await asyncio.to_thread(self._log.topic_infos, name))[0]

    async def list_groups(self) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT grp FROM group_members UNION SELECT grp FROM group_partitions ORDER BY 1"
            )
            return [r[0] for r in rows]

        return await asyncio.to_thread(self._log.db.read, query)

    async def describe_group(self, name: str) -> GroupInfo:
        def describe() -> GroupInfo:
            state = self._log.db.read(lambda conn: load_group(conn, name))
            if not state.members and not state.owners and not state.offsets:
                raise ConfigError(f"consumer group {name!r} does not exist")
            _groups.expire(state, _sqlite.now_ms())
            return describe_group(name, state, self._log.partition_counts, self._log.watermarks)

        return await asyncio.to_thread(describe)

    async def reset_offsets(
        self, group: str, topics: Sequence[str], to: SeekTo
    ) -> dict[TopicPartition, int]:
        def step(
            state: _groups.GroupState, conn: sqlite3.Connection
        ) -> tuple[dict[TopicPartition, int], bool]:
            offsets = resolve_reset(
                group,
                state,
                topics,
                to,
                self._log.partition_counts,
                self._log.watermarks,
                self._log.offset_for_timestamp,
            )
            state.offsets.update(offsets)
            return offsets, False

        return await asyncio.to_thread(self._log.update_group, group, step)

    async def enforce_retention(self) -> int:
        return await asyncio.to_thread(self._log.enforce_retention)
