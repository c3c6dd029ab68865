"""How the CLI shows ops results: JSON documents (the `--json` shapes) and text cells."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from tidings.ops import DeadLetter, GroupReset, GroupSummary, LogEntry, Replayed
from tidings.records import GroupInfo, Record, TopicInfo

MESSAGE_WIDTH = 60

# JSON ----------------------------------------------------------------------------------


def topic_json(info: TopicInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "records": info.records,
        "retention_ms": info.retention_ms,
        "retention_bytes": info.retention_bytes,
        "partitions": [
            {
                "partition": p.partition,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "records": p.records,
            }
            for p in info.partitions
        ],
    }


def group_summary_json(summary: GroupSummary) -> dict[str, Any]:
    return {"name": summary.name, "members": summary.members, "lag": summary.lag}


def group_json(info: GroupInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "lag": info.lag,
        "members": [
            {
                "member_id": m.member_id,
                "client": m.client,
                "topics": list(m.topics),
                "partitions": [
                    {"topic": tp.topic, "partition": tp.partition} for tp in m.partitions
                ],
            }
            for m in info.members
        ],
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "lag": p.lag,
                "owner": p.owner,
            }
            for p in info.partitions
        ],
    }


def reset_json(reset: GroupReset) -> dict[str, Any]:
    return {
        "group": reset.group,
        "offsets": [
            {"topic": o.topic, "partition": o.partition, "offset": o.offset} for o in reset.offsets
        ],
    }


def entry_json(entry: LogEntry) -> dict[str, Any]:
    """One `tail --json` line: the record's position and its event, or why it has none."""
    if entry.event is None:
        return {**_position(entry.record), "error": entry.error}
    return {**_position(entry.record), "event": entry.event}


def _position(record: Record) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    resolution = letter.resolution
    return {
        "id": letter.id,
        "dlq": {
            "topic": letter.dlq_topic,
            "partition": letter.dlq_partition,
            "offset": letter.dlq_offset,
        },
        "service": letter.service,
        "event_id": letter.event_id,
        "type": letter.event_type,
        "version": letter.event_version,
        "reason": letter.reason,
        "exception": letter.exception,
        "message": letter.message,
        "traceback": letter.traceback,
        "original": {
            "topic": letter.original_topic,
            "partition": letter.original_partition,
            "offset": letter.original_offset,
        },
        "handler": letter.handler,
        "attempts": letter.attempts,
        "time": letter.time,
        "status": status(letter),
        "resolved_at": None if resolution is None else resolution.at,
        "key": None if letter.record.key is None else text(letter.record.key),
        "headers": letter.headers,
        "event": letter.event,
        "decode_error": letter.decode_error,
    }


def replayed_json(replayed: Sequence[Replayed], skipped: Sequence[DeadLetter]) -> dict[str, Any]:
    return {
        "replayed": [
            {
                "id": r.letter.id,
                "dlq": r.letter.position,
                "handler": r.letter.handler,
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
            }
            for r in replayed
        ],
        "count": len(replayed),
        "skipped": [{"id": x.id, "reason": "does not decode into an event"} for x in skipped],
    }


def purged_json(purged: Sequence[DeadLetter]) -> dict[str, Any]:
    return {
        "purged": [{"id": x.id, "dlq": x.position, "handler": x.handler} for x in purged],
        "count": len(purged),
    }


# text ----------------------------------------------------------------------------------


def or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def size(count: int) -> str:
    for unit, bytes_ in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count % bytes_ == 0:
            return f"{count // bytes_} {unit}"
    return f"{count} B"


def retention(info: TopicInfo) -> str:
    limits = []
    if info.retention_ms is not None:
        limits.append(duration(info.retention_ms))
    if info.retention_bytes is not None:
        limits.append(size(info.retention_bytes))
    return ", ".join(limits) or "forever"


def data_text(data: object) -> str:
    if isinstance(data, bytes):
        return "base64:" + base64.b64encode(data).decode()
    return msgspec.json.encode(data).decode()


def text(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def printable(value: str) -> str:
    """`value` with control characters (other than newline and tab) escaped."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode("ascii")
        for c in value
    )


def short(value: str | None, width: int = MESSAGE_WIDTH) -> str:
    """The first line of `value`, marked if more follow, cut at `width` characters."""
    lines = (value or "").strip().splitlines()
    if not lines:
        return "-"
    line = lines[0] + (" …" if len(lines) > 1 else "")
    return line if len(line) <= width else line[: width - 1] + "…"


def status(letter: DeadLetter) -> str:
    return "dead" if letter.resolution is None else letter.resolution.action
