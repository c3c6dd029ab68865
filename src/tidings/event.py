"""The event envelope and its codecs: CloudEvents 1.0 structured JSON and the Kafka binary binding.

Every codec is lossless for an `Event` whose `data` is JSON-native (dict with str keys, list,
str, int, float, bool, None) or `bytes`: decoding what a codec encoded gives an equal event.
Decoders raise `tidings.errors.DecodeError`, naming what is wrong, for anything that is not a
valid CloudEvent; they accept CloudEvents from other producers, which need none of the tidings
extension attributes.

Attribute mapping (CloudEvents name <- Event field):

* `specversion` "1.0"; `id`; `type`; `time` (RFC 3339, UTC, microseconds);
  `source` (CloudEvents requires a non-empty source, so an empty `source` is written as
  `urn:tidings:unknown` and read back as "");
* `datacontenttype` "application/json" and `data`, or `data_base64` when `data` is bytes;
* extensions: `traceparent` and `tracestate` (the Distributed Tracing extension: W3C trace
  context, so a trace follows the event across services; a malformed one is dropped, as W3C
  requires), `partitionkey` (Partitioning extension) <- `key`, `correlationid`, `causationid`,
  `typeversion` (integer) <- `version`, `tidingsheaders` (a JSON string of `headers`,
  written only when there are headers, since extension values must be primitive), `sequence`
  (the Sequence extension: a decimal String; the outbox stamps it, per producing service and
  key) <- `sequence`, and `dataref` (the Dataref extension: where a claim-checked payload is
  kept) <- `dataref`.

Attributes are CloudEvents Strings: no control characters (U+0000-U+001F, U+007F-U+009F) and
no surrogates; ids (`id`, `correlation_id`, `causation_id`) and `type` are at most
`MAX_ID_LENGTH` characters, `source` at most `MAX_SOURCE_LENGTH`, header names at most
`MAX_ID_LENGTH`; header values have no NUL or surrogates. `Event` enforces this when it is built,
so every decoder does, and no store can reject an event's id later.

Absent optional attributes are omitted. A CloudEvent without `typeversion` has version 1,
without `time` gets the decoding time (the record's append time in `event_from_record`), without
`correlationid` starts its own chain, one whose `sequence` is not a decimal integer has none.
Other attributes (`subject`, `dataschema`, unknown extensions) are ignored, and
`datacontenttype` is not kept: data is always written as JSON.

`event_from_record` also reads the envelope the article shows: a JSON object with `eventType`
and `data` and optionally `eventId`, `timestamp` (RFC 3339, or epoch milliseconds) and
`version` (no `specversion`), with `correlation-id`, `causation-id` and `source` in record
headers (other headers become event headers). Without `eventId` the id is derived from the
record's position (a redelivery is the same event); without `timestamp` the record's append
time is used; without `version` it is 1.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from msgspec.structs import force_setattr

from tidings._ids import uuid7
from tidings.errors import DecodeError
from tidings.records import UNREADABLE_HEADERS, Headers, Message, Record

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_SOURCE_LENGTH",
    "MAX_VERSION",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "UNKNOWN_SOURCE",
    "Event",
    "decode_event",
    "encode_event",
    "event_from_record",
    "event_to_message",
    "from_cloudevent",
    "from_kafka_binary",
    "to_cloudevent",
    "to_kafka_binary",
]

SPECVERSION = "1.0"
UNKNOWN_SOURCE = "urn:tidings:unknown"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_JSON_CONTENT_TYPE = "application/json"
_BYTES_CONTENT_TYPE = "application/octet-stream"
_CONTENT_TYPE_HEADER = "content-type"
_ATTRIBUTE_HEADER_PREFIX = "ce_"
_TRANSPORT_HEADER_PREFIX = "tidings-"
"""Headers tidings adds to records in transit (dead letters, replays); never event headers."""

MAX_ID_LENGTH = 256
"""Most characters of an event's id, correlation id, causation id, type and header names."""
MAX_SOURCE_LENGTH = 1024
MAX_VERSION = 2**31 - 1
MAX_SEQUENCE = 2**63 - 1
MAX_DATAREF_LENGTH = 4096
_NOT_A_STRING = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""What a CloudEvents String may not contain: control characters and surrogates."""
_NOT_A_VALUE = re.compile("[\x00\ud800-\udfff]")
_TRACEPARENT = re.compile("00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
"""A W3C traceparent of version 00 with a valid trace and parent id."""
MAX_TRACESTATE = 512


def _new_id() -> str:
    return uuid7()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable fact. Raises ValueError if a field is invalid.

    `correlation_id` defaults to the event's own `id` (also when empty): an event that
    continues no chain starts one; an empty `causation_id` is None. `time` must be
    timezone-aware and is stored in UTC. Header names `content-type` and `ce_*` are reserved
    by the Kafka binary binding.
    """

    type: str
    data: Any = None
    key: str | None = None
    version: int = 1
    id: str = msgspec.field(default_factory=_new_id)
    time: datetime = msgspec.field(default_factory=_utc_now)
    source: str = ""
    correlation_id: str | None = None
    causation_id: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    traceparent: str | None = None
    """W3C trace context of the span that published the event (set by tracing, if on)."""
    tracestate: str | None = None
    sequence: int | None = None
    """Its number among the events its producing service published with its key (1, 2, ...;
    stamped by the outbox when the transaction commits; None if not stamped)."""
    dataref: str | None = None
    """Where its payload is kept when it was claim-checked (`tidings-blob:NAME`); handlers
    receive the payload itself in `data`."""

    def __post_init__(self) -> None:
        _check_text("type", self.type, MAX_ID_LENGTH)
        _check_text("id", self.id, MAX_ID_LENGTH)
        version = self.version
        if type(version) is not int or not 1 <= version <= MAX_VERSION:
            raise ValueError(
                f"Event.version must be an integer >= 1 (at most {MAX_VERSION}), got {version!r}"
            )
        if self.key is not None:
            _check_text("key", self.key, None, optional=True)
        if self.correlation_id is not None:
            _check_text("correlation_id", self.correlation_id, MAX_ID_LENGTH, optional=True)
        if self.causation_id is not None:
            _check_text("causation_id", self.causation_id, MAX_ID_LENGTH, optional=True)
            if not self.causation_id:
                force_setattr(self, "causation_id", None)
        if self.source:
            _check_text("source", self.source, MAX_SOURCE_LENGTH)
        elif not isinstance(self.source, str):
            raise ValueError(f"Event.source must be a string, got {self.source!r}")
        time = self.time
        if time.__class__ is not datetime or time.tzinfo is not UTC:
            force_setattr(self, "time", _as_utc(time))
        headers = self.headers
        if headers or headers.__class__ is not dict:
            _check_headers(headers)
        if not self.correlation_id:
            force_setattr(self, "correlation_id", self.id)
        sequence = self.sequence
        if sequence is not None and (
            type(sequence) is not int or not 0 <= sequence <= MAX_SEQUENCE
        ):
            raise ValueError(f"Event.sequence must be an integer >= 0 or None, got {sequence!r}")
        if self.dataref is not None:
            _check_text("dataref", self.dataref, MAX_DATAREF_LENGTH)
        if self.traceparent is not None and not _TRACEPARENT.fullmatch(self.traceparent):
            force_setattr(self, "traceparent", None)
        if self.traceparent is None or (
            self.tracestate is not None
            and (
                len(self.tracestate) > MAX_TRACESTATE
                or not self.tracestate.isascii()
                or not self.tracestate.isprintable()
            )
        ):
            force_setattr(self, "tracestate", None)

    def to_message(self, *, binary: bool = False) -> Message:
        """This event as a message (`event_to_message`): what `Broker.publish_events` sends."""
        return event_to_message(self, binary=binary)

    def caused(
        self,
        type: str,
        data: Any = None,
        *,
        key: str | None = None,
        version: int = 1,
        source: str | None = None,
    ) -> Event:
        """A new event caused by this one: same correlation, `causation_id` = this event's id.

        `key` and `source` default to this event's; headers are not inherited.
        """
        return Event(
            type=type,
            data=data,
            key=self.key if key is None else key,
            version=version,
            source=self.source if source is None else source,
            correlation_id=self.correlation_id,
            causation_id=self.id,
        )


def _check_text(
    name: str, value: object, max_length: int | None, *, optional: bool = False
) -> None:
    """ValueError unless `value` is a CloudEvents String (non-empty unless `optional`) of at
    most `max_length` characters."""
    if value.__class__ is not str or not (value or optional):
        kind = "a string or None" if optional else "a non-empty string"
        raise ValueError(f"Event.{name} must be {kind}, got {value!r}")
    assert isinstance(value, str)
    if max_length is not None and len(value) > max_length:
        raise ValueError(
            f"Event.{name} is {len(value)} characters long; the maximum is {max_length}"
        )
    if not (value.isascii() and value.isprintable()) and _NOT_A_STRING.search(value):
        raise ValueError(
            f"Event.{name} {_shown(value)} contains a control character or a surrogate"
        )


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."


def _as_utc(time: object) -> datetime:
    if not isinstance(time, datetime) or time.utcoffset() is None:
        raise ValueError(f"Event.time must be a timezone-aware datetime, got {time!r}")
    return time.astimezone(UTC)


def _check_headers(headers: object) -> None:
    if not isinstance(headers, dict):
        raise ValueError(f"Event.headers must be a dict of str to str, got {headers!r}")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"Event.headers must map str to str, got {name!r}: {value!r}")
        _check_text("headers name", name, MAX_ID_LENGTH)
        if "\x00" in value if value.isascii() else _NOT_A_VALUE.search(value):
            raise ValueError(f"Event.headers[{_shown(name)}] contains NUL or a surrogate")
        lowered = name.lower()
        if (
            lowered == _CONTENT_TYPE_HEADER
            or lowered.startswith(_ATTRIBUTE_HEADER_PREFIX)
            or lowered.startswith(_TRANSPORT_HEADER_PREFIX)
        ):
            raise ValueError(
                f"Event.headers name {name!r} is reserved (content-type and ce_* carry "
                "CloudEvents attributes in Kafka headers; tidings-* is for tidings' own "
                "transport headers)"
            )


_NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
_AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_TypeVersion = Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]


class _CloudEventIn(msgspec.Struct):
    """A CloudEvent being decoded; field names are the attribute names."""

    specversion: str
    id: _NonEmptyStr
    source: _NonEmptyStr
    type: _NonEmptyStr
    time: _AwareDatetime | None = None
    data: Any = None
    data_base64: bytes | None = None
    partitionkey: str | None = None
    correlationid: str | None = None
    causationid: str | None = None
    typeversion: _TypeVersion | None = None
    tidingsheaders: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    sequence: str | None = None
    dataref: str | None = None


class _CloudEventOut(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A CloudEvent being encoded. `time` is a datetime only when msgspec writes it with
    microseconds (they are non-zero); otherwise the text, which then carries `.000000`."""

    specversion: str
    id: str
    source: str
    type: str
    time: datetime | str
    datacontenttype: str | None = None
    data: Any = None
    data_base64: bytes | None = None
    partitionkey: str | None = None
    correlationid: str | None = None
    causationid: str | None = None
    typeversion: int
    tidingsheaders: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    sequence: str | None = None
    dataref: str | None = None


class _ArticleIn(msgspec.Struct, rename="camel"):
    """The article's envelope: `{"eventType", "eventId", "timestamp", "version", "data"}`."""

    event_type: _NonEmptyStr
    data: Any
    event_id: _NonEmptyStr | None = None
    timestamp: _AwareDatetime | int | None = None
    version: _TypeVersion | None = None


_json_encoder = msgspec.json.Encoder()
_cloudevent_decoder = msgspec.json.Decoder(_CloudEventIn)
_headers_decoder = msgspec.json.Decoder(dict[str, str])
_article_decoder = msgspec.json.Decoder(_ArticleIn, strict=False)
_ARTICLE_HEADERS = {
    "correlation-id": "correlation_id",
    "causation-id": "causation_id",
    "source": "source",
}
_ARTICLE_IDS = uuid.UUID("5b0e4c1e-2f59-4b8e-9a59-6a1f1f6c7e00")
"""Namespace of the ids derived from a record's position for article events without one."""
_WHOLE_SECOND_TIME_LENGTH = len(b'"2000-01-01T00:00:00Z"')


def _time_text(time: datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. `2024-05-01T12:00:00.000000Z`."""
    quoted = _json_encoder.encode(time)
    if len(quoted) == _WHOLE_SECOND_TIME_LENGTH:
        return quoted[1:-2].decode() + ".000000Z"
    return quoted[1:-1].decode()


def _to_wire(event: Event) -> _CloudEventOut:
    data = event.data
    headers = event.headers
    time = event.time
    is_bytes = isinstance(data, bytes)
    return _CloudEventOut(
        specversion=SPECVERSION,
        id=event.id,
        source=event.source or UNKNOWN_SOURCE,
        type=event.type,
        time=time if time.microsecond else _time_text(time),
        datacontenttype=None if data is None or is_bytes else _JSON_CONTENT_TYPE,
        data=None if is_bytes else data,
        data_base64=data if is_bytes else None,
        partitionkey=event.key,
        correlationid=event.correlation_id,
        causationid=event.causation_id,
        typeversion=event.version,
        tidingsheaders=_json_encoder.encode(headers).decode() if headers else None,
        traceparent=event.traceparent,
        tracestate=event.tracestate,
        sequence=None if event.sequence is None else str(event.sequence),
        dataref=event.dataref,
    )


def _sequence(text: str | None) -> int | None:
    """A `sequence` attribute as a number, or None if it is none (other producers' Strings)."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    number = int(text)
    return number if number <= MAX_SEQUENCE else None


def _from_wire(wire: _CloudEventIn, headers: dict[str, str] | None, record: Record | None) -> Event:
    """The event in `wire`; a missing time or key falls back on `record`'s append time / key."""
    if wire.specversion != SPECVERSION:
        raise DecodeError(
            f"unsupported CloudEvents specversion {wire.specversion!r}, expected {SPECVERSION!r}"
        )
    if headers is None:
        headers = {} if wire.tidingsheaders is None else _decode_headers(wire.tidingsheaders)
    time = wire.time
    if time is None:
        time = _utc_now() if record is None else _record_time(record)
    key = wire.partitionkey
    if key is None and record is not None:
        key = _utf8_or_none(record.key)
    try:
        return Event(
            type=wire.type,
            data=wire.data if wire.data_base64 is None else wire.data_base64,
            key=key,
            version=1 if wire.typeversion is None else wire.typeversion,
            id=wire.id,
            time=time,
            source="" if wire.source == UNKNOWN_SOURCE else wire.source,
            correlation_id=wire.correlationid,
            causation_id=wire.causationid,
            headers=headers,
            traceparent=wire.traceparent,
            tracestate=wire.tracestate,
            sequence=_sequence(wire.sequence),
            dataref=wire.dataref,
        )
    except ValueError as exc:
        raise DecodeError(f"invalid event: {exc}") from None


def _from_article(data: bytes, record: Record, error: DecodeError) -> Event:
    """The event in a record in the article's envelope (see the module docstring); `error`
    says why it is no CloudEvent."""
    try:
        article = _article_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{error}; nor an event in the article's envelope: {exc}") from None
    attributes: dict[str, Any] = {}
    headers: dict[str, str] = {}
    for name, raw in record.headers:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"header {name!r} is not UTF-8") from None
        lowered = name.lower()
        if lowered in _ARTICLE_HEADERS:
            attributes[_ARTICLE_HEADERS[lowered]] = text
        elif not (
            lowered == _CONTENT_TYPE_HEADER
            or lowered.startswith((_ATTRIBUTE_HEADER_PREFIX, _TRANSPORT_HEADER_PREFIX))
        ):
            headers[name] = text
    time = article.timestamp
    if time is None:
        time = _record_time(record)
    elif not isinstance(time, datetime):
        time = _epoch_ms(time, "`timestamp`")
    position = f"{record.topic}/{record.partition}/{record.offset}"
    try:
        return Event(
            type=article.event_type,
            data=article.data,
            key=_utf8_or_none(record.key),
            version=article.version or 1,
            id=article.event_id or str(uuid.uuid5(_ARTICLE_IDS, position)),
            time=time,
            headers=headers,
            **attributes,
        )
    except ValueError as exc:
        raise DecodeError(f"invalid event: {exc}") from None


def _decode_headers(text: str) -> dict[str, str]:
    try:
        return _headers_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise DecodeError(
            f"bad `tidingsheaders`: expected a JSON object of strings to strings ({exc})"
        ) from None


def to_cloudevent(event: Event) -> dict[str, Any]:
    """`event` as a CloudEvents 1.0 structured-mode JSON object, made of JSON-ready builtins."""
    result: dict[str, Any] = msgspec.to_builtins(_to_wire(event))
    return result


def from_cloudevent(obj: Mapping[str, Any]) -> Event:
    """The event in a CloudEvents 1.0 structured-mode JSON object. Raises DecodeError, and
    nothing else, whatever `obj` holds."""
    if not isinstance(obj, Mapping):
        raise DecodeError(f"not a CloudEvent: expected a JSON object, got {type(obj).__name__}")
    try:
        wire = msgspec.convert(obj, _CloudEventIn)
        return _from_wire(wire, None, None)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"not a CloudEvent: {exc}") from None
    except DecodeError:
        raise
    except Exception as exc:
        raise _unexpected(exc) from exc


def encode_event(event: Event) -> bytes:
    """`event` as compact CloudEvents 1.0 structured-mode JSON."""
    return _json_encoder.encode(_to_wire(event))


def decode_event(data: bytes) -> Event:
    """The event in CloudEvents 1.0 structured-mode JSON. Raises DecodeError, and nothing
    else, whatever the bytes."""
    try:
        return _decode_structured(data, None)
    except DecodeError:
        raise
    except Exception as exc:
        raise _unexpected(exc) from exc


def _unexpected(exc: Exception) -> DecodeError:
    """What a decoder raises for an error other than DecodeError (hostile input can make
    msgspec or datetime raise RecursionError, ValueError, OverflowError...)."""
    if isinstance(exc, RecursionError):
        return DecodeError("the JSON is nested too deeply")
    return DecodeError(f"{type(exc).__name__}: {exc}")


def _decode_structured(data: bytes, record: Record | None) -> Event:
    try:
        wire = _cloudevent_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"not a CloudEvent: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    return _from_wire(wire, None, record)


def to_kafka_binary(event: Event) -> tuple[Headers, bytes]:
    """`event` in the CloudEvents Kafka protocol binding, binary mode: (headers, value).

    Attributes go to `ce_*` headers, each event header to a Kafka header of its own name, data
    to the value: JSON with `content-type: application/json`, raw bytes with
    `application/octet-stream`, or an empty value and no content-type when data is None.
    """
    headers: list[tuple[str, bytes]] = [
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", event.id.encode()),
        ("ce_source", (event.source or UNKNOWN_SOURCE).encode()),
        ("ce_type", event.type.encode()),
        ("ce_time", _time_text(event.time).encode()),
    ]
    if event.key is not None:
        headers.append(("ce_partitionkey", event.key.encode()))
    if event.correlation_id is not None:
        headers.append(("ce_correlationid", event.correlation_id.encode()))
    if event.causation_id is not None:
        headers.append(("ce_causationid", event.causation_id.encode()))
    headers.append(("ce_typeversion", str(event.version).encode()))
    if event.sequence is not None:
        headers.append(("ce_sequence", str(event.sequence).encode()))
    if event.dataref is not None:
        headers.append(("ce_dataref", event.dataref.encode()))
    if event.traceparent is not None:
        headers.append(("ce_traceparent", event.traceparent.encode()))
        if event.tracestate is not None:
            headers.append(("ce_tracestate", event.tracestate.encode()))
    data = event.data
    if data is None:
        value = b""
    elif isinstance(data, bytes):
        headers.append((_CONTENT_TYPE_HEADER, _BYTES_CONTENT_TYPE.encode()))
        value = data
    else:
        headers.append((_CONTENT_TYPE_HEADER, _JSON_CONTENT_TYPE.encode()))
        value = _json_encoder.encode(data)
    headers.extend((name, text.encode()) for name, text in event.headers.items())
    return tuple(headers), value


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == _JSON_CONTENT_TYPE or media_type.endswith("+json")


def from_kafka_binary(headers: Headers, value: bytes) -> Event:
    """The event in a binary-mode Kafka record (see `to_kafka_binary`). Raises DecodeError, and
    nothing else.

    Every header that is neither `ce_*`, `content-type` nor `tidings-*` (transport headers such
    as dead-letter reasons) becomes an event header. Data is the
    raw value if `content-type` names a non-JSON media type; otherwise the value is JSON, and an
    empty value means no data.
    """
    try:
        return _decode_binary(headers, value, None)
    except DecodeError:
        raise
    except Exception as exc:
        raise _unexpected(exc) from exc


def _decode_binary(headers: Headers, value: bytes, record: Record | None) -> Event:
    attributes: dict[str, str] = {}
    event_headers: dict[str, str] = {}
    content_type: str | None = None
    for name, raw in headers:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"header {name!r} is not UTF-8") from None
        if name.startswith(_ATTRIBUTE_HEADER_PREFIX):
            attributes[name[len(_ATTRIBUTE_HEADER_PREFIX) :]] = text
        elif name.lower() == _CONTENT_TYPE_HEADER:
            content_type = text
        elif not name.lower().startswith(_TRANSPORT_HEADER_PREFIX):
            event_headers[name] = text
    attributes.pop("data", None)
    attributes.pop("data_base64", None)
    try:
        wire = msgspec.convert(attributes, _CloudEventIn, strict=False)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"not a binary-mode CloudEvent (ce_* headers): {exc}") from None
    if not _is_json(content_type):
        wire.data_base64 = value
    elif value:
        try:
            wire.data = msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"value is not JSON: {exc}") from None
    return _from_wire(wire, event_headers, record)


def event_to_message(event: Event, *, binary: bool = False) -> Message:
    """A message carrying `event`, keyed by its UTF-8 encoded `key`.

    Structured mode (`content-type: application/cloudevents+json`) by default, the Kafka binary
    binding if `binary`.
    """
    key = None if event.key is None else event.key.encode()
    if binary:
        headers, value = to_kafka_binary(event)
        return Message(value=value, key=key, headers=headers)
    return Message(
        value=encode_event(event),
        key=key,
        headers=((_CONTENT_TYPE_HEADER, STRUCTURED_CONTENT_TYPE.encode()),),
    )


def event_from_record(record: Record) -> Event:
    """The event in `record`: binary mode if it has a `ce_specversion` header, else structured.

    A CloudEvent without time gets the record's append time, one without partition key the
    record's key (when it is a valid key). Total: whatever the record's bytes and headers, it
    returns an Event or raises DecodeError naming the topic, partition and offset - nothing
    else."""
    try:
        binary = False
        for name, value in record.headers:
            if name == "ce_specversion":
                binary = True
            elif name == UNREADABLE_HEADERS:
                raise DecodeError(
                    f"its headers could not be read ({value.decode('utf-8', 'replace')})"
                )
        if binary:
            return _decode_binary(record.headers, record.value, record)
        try:
            return _decode_structured(record.value, record)
        except DecodeError as exc:
            value = record.value
            if b'"eventType"' in value and b'"specversion"' not in value:
                return _from_article(value, record, exc)
            raise
    except Exception as exc:
        error = exc if isinstance(exc, DecodeError) else _unexpected(exc)
        raise DecodeError(
            f"cannot decode the event at {record.topic}[{record.partition}]@{record.offset}: "
            f"{error}"
        ) from exc


def _record_time(record: Record) -> datetime:
    return _epoch_ms(record.timestamp, "the event has no `time`, and the record's timestamp")


def _epoch_ms(ms: int, what: str) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        raise DecodeError(f"{what} {ms} is not a time between the years 1 and 9999") from None


def _utf8_or_none(raw: bytes | None) -> str | None:
    """`raw` as an event key, or None if it is not a valid one (not UTF-8, control
    characters: a binary record key)."""
    if raw is None:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    if not text or (not (text.isascii() and text.isprintable()) and _NOT_A_STRING.search(text)):
        return None
    return text
