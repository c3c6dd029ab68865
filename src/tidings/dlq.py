"""Dead letters: the headers that explain them.

A dead letter is the original record, unchanged (same value, key and headers, so the same
event id), published to the service's dead-letter topic (`<service>.dlq`) with these headers
added. Replaying one publishes it again to its original topic with `tidings-replay-for` naming
the one handler that should run it; every other handler and service ignores it.
"""

from __future__ import annotations

import time

from tidings.brokers.base import Headers, Record

PREFIX = "tidings-dlq-"
REASON = "tidings-dlq-reason"
EXCEPTION = "tidings-dlq-exception"
MESSAGE = "tidings-dlq-message"
TRACEBACK = "tidings-dlq-traceback"
TOPIC = "tidings-dlq-topic"
PARTITION = "tidings-dlq-partition"
OFFSET = "tidings-dlq-offset"
HANDLER = "tidings-dlq-handler"
ATTEMPTS = "tidings-dlq-attempts"
TIME = "tidings-dlq-time"
REPLAY_FOR = "tidings-replay-for"

REASON_UNDECODABLE = "undecodable"
REASON_INVALID = "invalid-event"
REASON_PERMANENT = "permanent-error"
REASON_EXHAUSTED = "retries-exhausted"

MAX_TEXT = 8192


def describe(
    record: Record,
    *,
    reason: str,
    error: BaseException,
    traceback_text: str,
    handler: str | None,
    attempts: int,
) -> Headers:
    """The headers added to a dead letter of `record`."""
    headers = [
        (REASON, reason),
        (EXCEPTION, f"{type(error).__module__}.{type(error).__qualname__}"),
        (MESSAGE, str(error)[:MAX_TEXT]),
        (TRACEBACK, traceback_text[-MAX_TEXT:]),
        (TOPIC, record.topic),
        (PARTITION, str(record.partition)),
        (OFFSET, str(record.offset)),
        (ATTEMPTS, str(attempts)),
        (TIME, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
    ]
    if handler is not None:
        headers.append((HANDLER, handler))
    return tuple((name, value.encode("utf-8", "replace")) for name, value in headers)


def strip(headers: Headers) -> Headers:
    """`headers` without dead-letter and replay headers (what the original record had)."""
    return tuple(
        (name, value)
        for name, value in headers
        if not name.startswith(PREFIX) and name != REPLAY_FOR
    )
