"""Topics: list, describe, create."""

from __future__ import annotations

from dataclasses import dataclass

from tidings.brokers.base import UNLIMITED, Broker, CanInspect, require
from tidings.records import TopicInfo


@dataclass(frozen=True, slots=True)
class CreatedTopic:
    """The topic after `create_topic`, and which settings asked for it does not have (an
    existing topic taken with `exist_ok` is left unchanged)."""

    info: TopicInfo
    mismatched: tuple[str, ...] = ()


async def list_topics(broker: Broker) -> list[TopicInfo]:
    """Every topic, with its partitions' offsets and its retention."""
    return await require(broker.admin, CanInspect, "list topics and groups").list_topics()


async def describe_topic(broker: Broker, name: str) -> TopicInfo:
    """One topic; UnknownTopicError if it does not exist."""
    return await broker.admin.describe_topic(name)


async def create_topic(
    broker: Broker,
    name: str,
    partitions: int | None = None,
    *,
    retention_ms: int | None = None,
    retention_bytes: int | None = None,
    exist_ok: bool = False,
) -> CreatedTopic:
    """Create a topic (`partitions` None means 1; retention None means the broker's default).

    TopicError for a bad name or partition count; TopicExistsError if it exists, unless
    `exist_ok`: then it is returned unchanged, with the settings it differs in."""
    info = await broker.admin.create_topic(
        name,
        1 if partitions is None else partitions,
        retention_ms=retention_ms,
        retention_bytes=retention_bytes,
        exist_ok=exist_ok,
    )
    asked = (
        ("partitions", partitions, len(info.partitions)),
        ("retention_ms", retention_ms, info.retention_ms),
        ("retention_bytes", retention_bytes, info.retention_bytes),
    )
    mismatched = tuple(setting for setting, wanted, actual in asked if not _agrees(wanted, actual))
    return CreatedTopic(info, mismatched)


def _agrees(wanted: int | None, actual: int | None) -> bool:
    if wanted is None or wanted == actual:
        return True
    return wanted == UNLIMITED and actual is None
