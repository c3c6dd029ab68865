"""Small helpers shared by the service tests (the `running` fixture is in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tidings import testing
from tidings.brokers.base import Broker
from tidings.records import Record, TopicPartition


def server_setting(variable: str, start: str) -> str:
    """The value of `variable` (a running server's address); skips the test when it is unset,
    except under CI=true, where a missing server is a failure."""
    value = os.environ.get(variable)
    if not value:
        message = f"{variable} is not set; start the server with `scripts/services start {start}`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return value


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    await testing.eventually(check, timeout, interval=0.02)


async def read_topic(broker: Broker, topic: str) -> list[Record]:
    """Every retained record of `topic`, partition by partition."""
    info = await broker.admin.describe_topic(topic)
    records: list[Record] = []
    for p in info.partitions:
        tp = TopicPartition(topic, p.partition)
        records.extend(await broker.read(tp, p.start_offset, 10_000))
    return records


@contextlib.contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A store URL on the test PostgreSQL server in a new schema, dropped afterwards."""
    import psycopg
    from psycopg import sql

    dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
