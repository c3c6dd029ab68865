"""Dead letters: the headers that explain them (written by the runtime and the relay), and
reading them back, replaying and purging them (`tidings.ops` is the tooling's public face).

A dead letter is the original record, unchanged (same value, key and headers, so the same
event id), published to its service's dead-letter topic `<service>.dlq` with `describe`'s
headers added. A log cannot delete single records: replayed and purged letters stay in their
topic and are marked resolved by a record in `tidings.dlq.resolutions`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from tidings.brokers.base import UNLIMITED, Broker, CanInspect, CanRead, require
from tidings.errors import DeadLetterError as DeadLetterError
from tidings.errors import DecodeError, UnknownTopicError
from tidings.event import Event, event_from_record
from tidings.records import Headers, Message, Record, TopicInfo, TopicPartition

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
EVENT_ID = "tidings-dlq-event-id"
OMITTED = "tidings-dlq-omitted"
"""On an `unpublishable` dead letter whose value did not fit: where the whole event is kept."""
REPLAY_FOR = "tidings-replay-for"

REASON_UNDECODABLE = "undecodable"
REASON_INVALID = "invalid-event"
REASON_PERMANENT = "permanent-error"
REASON_EXHAUSTED = "retries-exhausted"
REASON_UNPROCESSABLE = "unprocessable"
"""The record failed outside its handlers (the store refused something about it) again and
again; see `tidings.runtime.dispatch`."""
REASON_UNPUBLISHABLE = "unpublishable"
"""An outbox row the broker refused for good (too large, no such topic): set aside by the
relay; see `tidings.runtime.relay`."""

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


_TRUNCATED = b"\n[truncated to fit the broker's message size limit]"


def fit(message: Message, max_bytes: int) -> Message:
    """`message` with its traceback, then its error message header shortened (marked as such)
    or emptied so that it fits in `max_bytes` if it can (a dead letter of a record near the
    limit); the other headers and the record are kept as they are."""
    excess = message.size - max_bytes
    if excess <= 0:
        return message
    headers = list(message.headers)
    for name in (TRACEBACK, MESSAGE):
        for index, (header, value) in enumerate(headers):
            if header != name or excess <= 0:
                continue
            room = len(value) - excess
            if room > len(_TRUNCATED):
                shortened = value[: room - len(_TRUNCATED)].decode("utf-8", "ignore").encode()
                shortened += _TRUNCATED
            else:
                shortened = b""
            excess -= len(value) - len(shortened)
            headers[index] = (header, shortened)
    return msgspec.structs.replace(message, headers=tuple(headers))


def unpublishable(
    topic: str, event_id: str, message: Message, error: BaseException, max_bytes: int
) -> Message:
    """The dead letter of an outbox row for `topic` that the broker refused for good: the
    message with headers saying why, or without its value (and key) when even that is too
    large, saying where the row is kept. A dead letter refused so (a record near the size
    limit with its dead-letter headers) keeps its own headers and loses only its value."""
    omitted = (
        OMITTED,
        f"the record ({message.size} bytes) is kept in the producing service's store, table "
        "tidings_outbox_unpublishable".encode(),
    )
    if any(name == REASON for name, _ in message.headers):
        return fit(Message(b"", None, (*message.headers, omitted)), max_bytes)
    headers = (
        (REASON, REASON_UNPUBLISHABLE),
        (EXCEPTION, f"{type(error).__module__}.{type(error).__qualname__}"),
        (MESSAGE, str(error)[:MAX_TEXT]),
        (TOPIC, topic),
        (EVENT_ID, event_id),
        (TIME, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
    )
    encoded = tuple((name, value.encode("utf-8", "replace")) for name, value in headers)
    letter = fit(Message(message.value, message.key, strip(message.headers) + encoded), max_bytes)
    if letter.size <= max_bytes:
        return letter
    return fit(Message(b"", None, (*encoded, omitted)), max_bytes)


def letter(
    record: Record, *, reason: str, error: BaseException, handler: str | None, attempts: int
) -> Message:
    """The dead letter of `record`: the record as it was, with `describe`'s headers."""
    headers = describe(
        record,
        reason=reason,
        error=error,
        traceback_text="".join(traceback.format_exception(error)),
        handler=handler,
        attempts=attempts,
    )
    return Message(value=record.value, key=record.key, headers=strip(record.headers) + headers)


def strip(headers: Headers) -> Headers:
    """`headers` without dead-letter and replay headers (what the original record had)."""
    return tuple(
        (name, value)
        for name, value in headers
        if not name.startswith(PREFIX) and name != REPLAY_FOR
    )


# reading back, replaying, purging (the tooling; its public face is tidings.ops) ----------

DLQ_SUFFIX = ".dlq"
RESOLUTIONS_TOPIC = "tidings.dlq.resolutions"
"""Where replays and purges are recorded, after the broker's namespace (`resolutions_topic`)."""


def replayed_for(record: Record) -> str | None:
    """The handler a replayed record is for (its REPLAY_FOR header), or None: not a replay."""
    value = record.header(REPLAY_FOR)
    return None if value is None else value.decode("utf-8", "replace")


def resolutions_topic(broker: Broker) -> str:
    """RESOLUTIONS_TOPIC in `broker`'s namespace (Kafka's `group_prefix`)."""
    return broker.namespace + RESOLUTIONS_TOPIC


REPLAYED = "replayed"
PURGED = "purged"
READ_PAGE = 1000


def is_dead_letter_topic(name: str) -> bool:
    """Dead-letter topics are the topics whose names end in `.dlq` (`<service>.dlq`)."""
    return name.endswith(DLQ_SUFFIX) and len(name) > len(DLQ_SUFFIX)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What was done with a dead letter, and when."""

    action: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic, with its headers read back.

    `event` is None (and `decode_error` says why) when the record does not decode into an
    event. Header fields are None when the header is missing (a record that tidings did not
    write). `time` is when it was dead-lettered (the header, else the record's append time)."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    event_id: str | None
    event_type: str | None
    event_version: int | None
    reason: str | None
    exception: str | None
    message: str | None
    traceback: str | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    handler: str | None
    attempts: int | None
    time: datetime
    record: Record
    event: Event | None = None
    decode_error: str | None = None
    resolution: Resolution | None = None

    @property
    def position(self) -> str:
        """`<dlq-topic>:<partition>:<offset>`: unique, and the key of its resolution."""
        return f"{self.dlq_topic}:{self.dlq_partition}:{self.dlq_offset}"

    @property
    def id(self) -> str:
        """What names it on the command line: the event id, or its position if undecodable.

        An event id is not unique when several handlers dead-lettered the same event (or a
        replay failed again); the position always is."""
        return self.event_id if self.event_id is not None else self.position

    @property
    def service(self) -> str:
        """The service whose dead-letter topic holds it (`<service>.dlq`)."""
        return self.dlq_topic.removesuffix(DLQ_SUFFIX)

    @property
    def origin(self) -> str:
        """`topic[partition]@offset` of the original record, or `-` if unknown."""
        if self.original_topic is None:
            return "-"
        return (
            f"{self.original_topic}[{_dash(self.original_partition)}]@{_dash(self.original_offset)}"
        )

    @property
    def headers(self) -> dict[str, str]:
        """Every header as text (the last value of a repeated name wins)."""
        return {name: _text(value) for name, value in self.record.headers}

    def matches(self, ident: str) -> bool:
        """True if `ident` is its event id or its position."""
        return ident in (self.event_id, self.position)


@dataclass(frozen=True, slots=True)
class Replayed:
    """A dead letter re-delivered to `topic[partition]@offset`."""

    letter: DeadLetter
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to take; every field None takes all, the given ones combine with AND.

    `service` (its topic is `<service>.dlq`), `reason` (e.g. `retries-exhausted`), `handler`
    (`service.handler`, or the handler's name), `event_type`, `topic` (the original topic)."""

    service: str | None = None
    reason: str | None = None
    handler: str | None = None
    event_type: str | None = None
    topic: str | None = None

    def given(self) -> bool:
        """True if any filter is set."""
        return any(
            value is not None
            for value in (self.service, self.reason, self.handler, self.event_type, self.topic)
        )

    def covers(self, dlq_topic: str) -> bool:
        """True if `dlq_topic` is a dead-letter topic these filters read."""
        return is_dead_letter_topic(dlq_topic) and (
            self.service is None or dlq_topic == self.service + DLQ_SUFFIX
        )

    def matches(self, letter: DeadLetter) -> bool:
        return (
            self.covers(letter.dlq_topic)
            and (self.reason is None or letter.reason == self.reason)
            and (self.handler is None or _handler_matches(letter.handler, self.handler))
            and (self.event_type is None or letter.event_type == self.event_type)
            and (self.topic is None or letter.original_topic == self.topic)
        )


def dead_letter_from_record(record: Record, resolution: Resolution | None = None) -> DeadLetter:
    """`record` (read from a dead-letter topic) as a DeadLetter."""
    event: Event | None = None
    decode_error: str | None = None
    try:
        # Without the dead-letter headers: binary-mode events would take them as event headers.
        event = event_from_record(msgspec.structs.replace(record, headers=strip(record.headers)))
    except DecodeError as exc:
        decode_error = str(exc)

    def header(name: str) -> str | None:
        value = record.header(name)
        return None if value is None else _text(value)

    return DeadLetter(
        dlq_topic=record.topic,
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        event_id=header(EVENT_ID) if event is None else event.id,
        event_type=None if event is None else event.type,
        event_version=None if event is None else event.version,
        reason=header(REASON),
        exception=header(EXCEPTION),
        message=header(MESSAGE),
        traceback=header(TRACEBACK),
        original_topic=header(TOPIC),
        original_partition=_int(header(PARTITION)),
        original_offset=_int(header(OFFSET)),
        handler=header(HANDLER),
        attempts=_int(header(ATTEMPTS)),
        time=_time(header(TIME)) or datetime.fromtimestamp(record.timestamp / 1000, UTC),
        record=record,
        event=event,
        decode_error=decode_error,
        resolution=resolution,
    )


async def read_resolutions(broker: Broker) -> dict[str, Resolution]:
    """Resolutions by dead-letter position (`<dlq-topic>:<partition>:<offset>`); the first one
    recorded for a position wins. Records that are not resolutions are ignored."""
    try:
        info = await broker.admin.describe_topic(resolutions_topic(broker))
    except UnknownTopicError:
        return {}
    resolutions: dict[str, Resolution] = {}
    for record in await _read_all(broker, info):
        try:
            entry = _resolution_decoder.decode(record.value)
        except msgspec.DecodeError:
            continue
        if entry.action not in (REPLAYED, PURGED):
            continue
        key = f"{entry.dlq}:{entry.partition}:{entry.offset}"
        resolutions.setdefault(key, Resolution(entry.action, entry.at))
    return resolutions


async def list_dead_letters(
    broker: Broker,
    *,
    service: str | None = None,
    reason: str | None = None,
    handler: str | None = None,
    event_type: str | None = None,
    topic: str | None = None,
    include_resolved: bool = False,
) -> list[DeadLetter]:
    """Dead letters of every dead-letter topic matching the filters (see `DeadLetterFilter`),
    oldest first, without the resolved ones unless `include_resolved`. Reads every dead-letter
    topic whole: `tidings.ops.dead_letter_page` reads one page."""
    where = DeadLetterFilter(service, reason, handler, event_type, topic)
    admin = require(broker.admin, CanInspect, "list topics, so it cannot find dead letters")
    infos = [info for info in await admin.list_topics() if where.covers(info.name)]
    resolutions = await read_resolutions(broker)
    letters: list[DeadLetter] = []
    for info in infos:
        for record in await _read_all(broker, info):
            resolution = resolutions.get(f"{record.topic}:{record.partition}:{record.offset}")
            if resolution is not None and not include_resolved:
                continue
            letter = dead_letter_from_record(record, resolution)
            if where.matches(letter):
                letters.append(letter)
    letters.sort(key=lambda x: (x.record.timestamp, x.dlq_topic, x.dlq_partition, x.dlq_offset))
    return letters


async def replay(broker: Broker, letters: Sequence[DeadLetter]) -> list[Replayed]:
    """Publish each letter's original record again to its original topic (same value, key and
    event id; the dead-letter headers removed; `tidings-replay-for` naming its handler, so only
    that handler runs it), then mark it replayed. Returns where each one landed.

    Checked before anything is published: every letter still decodes into an event (replaying
    an undecodable record would only dead-letter it again; an `unpublishable` one, never
    delivered, is published as it was committed, unless its value had to be left out), is not
    resolved yet, and its original topic exists. Otherwise DeadLetterError, and nothing is
    replayed. The resolution is recorded after the publish: a crash in between leaves the
    letter listed (replaying it again is harmless, the inbox skips it), never hides one."""
    await _check_unresolved(broker, letters)
    topics: dict[str, TopicInfo] = {}
    for letter in letters:
        omitted = letter.record.header(OMITTED)
        if omitted is not None:
            raise DeadLetterError(
                f"dead letter {letter.id} did not fit in the broker's size limit, so it cannot "
                f"be replayed through the broker: {_text(omitted)}"
            )
        if letter.event is None and letter.reason != REASON_UNPUBLISHABLE:
            raise DeadLetterError(
                f"dead letter {letter.id} does not decode into an event ({letter.decode_error}); "
                "replaying it would only dead-letter it again: inspect it with "
                "`tidings dlq show` and purge it"
            )
        original = letter.original_topic
        if original is None:
            raise DeadLetterError(
                f"dead letter {letter.id} has no {TOPIC} header: its original topic is unknown"
            )
        if original not in topics:
            try:
                topics[original] = await broker.admin.describe_topic(original)
            except UnknownTopicError:
                raise DeadLetterError(
                    f"cannot replay dead letter {letter.id}: its original topic {original!r} "
                    "no longer exists"
                ) from None
    by_topic: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        assert letter.original_topic is not None
        by_topic.setdefault(letter.original_topic, []).append(letter)
    replayed: list[Replayed] = []
    for original, group in by_topic.items():
        partitions = len(topics[original].partitions)
        published = await broker.publish(
            original, [_replay_message(letter, partitions) for letter in group]
        )
        await _resolve(broker, group, REPLAYED)
        replayed.extend(
            Replayed(letter, original, p.partition, p.offset)
            for letter, p in zip(group, published, strict=True)
        )
    return replayed


async def purge(broker: Broker, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """Mark `letters` purged: they are no longer listed or replayable. DeadLetterError (and
    nothing purged) if one of them is already resolved. Returns them."""
    await _check_unresolved(broker, letters)
    await _resolve(broker, letters, PURGED)
    return list(letters)


class _ResolutionRecord(msgspec.Struct):
    """A record of RESOLUTIONS_TOPIC (one partition), keyed by the letter's position."""

    dlq: str
    partition: int
    offset: int
    action: str
    at: datetime


_resolution_decoder = msgspec.json.Decoder(_ResolutionRecord)


async def _read_all(broker: Broker, info: TopicInfo) -> list[Record]:
    """Every retained record of a topic, partition by partition, up to its end offset in
    `info` (records appended since are left for the next call)."""
    reader = require(broker, CanRead, "read records without a consumer group")
    records: list[Record] = []
    for p in info.partitions:
        tp = TopicPartition(info.name, p.partition)
        offset = p.start_offset
        while offset < p.end_offset:
            page = await reader.read(tp, offset, min(READ_PAGE, p.end_offset - offset))
            page = [r for r in page if r.offset < p.end_offset]
            if not page:
                break
            records.extend(page)
            offset = page[-1].offset + 1
    return records


async def _check_unresolved(broker: Broker, letters: Sequence[DeadLetter]) -> None:
    """DeadLetterError naming letters resolved already (perhaps since they were listed)."""
    resolutions = await read_resolutions(broker)
    for letter in letters:
        resolution = letter.resolution or resolutions.get(letter.position)
        if resolution is not None:
            at = resolution.at.isoformat(timespec="seconds")
            raise DeadLetterError(
                f"dead letter {letter.id} ({letter.position}) was already {resolution.action} "
                f"at {at}"
            )


async def _resolve(broker: Broker, letters: Sequence[DeadLetter], action: str) -> None:
    if not letters:
        return
    await broker.admin.create_topic(
        resolutions_topic(broker),
        1,
        retention_ms=UNLIMITED,
        retention_bytes=UNLIMITED,
        exist_ok=True,
    )
    at = datetime.now(UTC)
    await broker.publish(
        resolutions_topic(broker),
        [
            Message(
                value=msgspec.json.encode(
                    _ResolutionRecord(
                        letter.dlq_topic, letter.dlq_partition, letter.dlq_offset, action, at
                    )
                ),
                key=letter.position.encode(),
                partition=0,
            )
            for letter in letters
        ],
    )


def _replay_message(letter: DeadLetter, partitions: int) -> Message:
    record = letter.record
    headers = strip(record.headers)
    if letter.handler is not None:
        headers += ((REPLAY_FOR, letter.handler.encode()),)
    # A key picks its partition as it did (per-key order with later events); a record without
    # key goes back to its original partition if that still exists.
    partition = None
    original = letter.original_partition
    if record.key is None and original is not None and 0 <= original < partitions:
        partition = original
    return Message(value=record.value, key=record.key, headers=headers, partition=partition)


def _handler_matches(handler: str | None, wanted: str) -> bool:
    return handler is not None and (handler == wanted or handler.endswith("." + wanted))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
