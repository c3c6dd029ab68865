"""Decoding is total: whatever bytes and headers a record has, `event_from_record` returns an
Event or raises DecodeError - nothing else - and an Event it returns can be stored anywhere
(ids, types and header names are CloudEvents Strings within their length limits)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings import DecodeError, Event, Record, event_from_record
from tidings.event import MAX_ID_LENGTH, encode_event, event_to_message
from tidings.records import UNREADABLE_HEADERS

CE = {"specversion": "1.0", "id": "e-1", "source": "s", "type": "T"}


def record(value: bytes, headers: tuple[tuple[str, bytes], ...] = (), timestamp: int = 0) -> Record:
    return Record("t", 0, 7, timestamp, value, None, headers)


def structured(**attributes: object) -> bytes:
    return msgspec.json.encode({**CE, **attributes})


def check_total(rec: Record) -> Event | None:
    """The decoding of `rec`, which must be an Event (then valid for every store) or a
    DecodeError naming the record's position."""
    try:
        event = event_from_record(rec)
    except DecodeError as exc:
        assert "t[0]@7" in str(exc)
        return None
    for text in (event.id, event.type, event.correlation_id, event.causation_id or "x"):
        assert text and len(text) <= MAX_ID_LENGTH
        assert "\x00" not in text
        text.encode()  # no surrogates
    for name, value in event.headers.items():
        name.encode()
        value.encode()
        assert "\x00" not in name + value
    return event


header_names = st.one_of(
    st.sampled_from(["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"]),
    st.sampled_from(["ce_partitionkey", "ce_correlationid", "ce_typeversion", UNREADABLE_HEADERS]),
    st.text(max_size=20),
)
header_values = st.one_of(
    st.sampled_from([b"1.0", b"T", b"e-1", b"s", b"2024-01-01T00:00:00Z", b"application/json"]),
    st.binary(max_size=40),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
attributes = st.dictionaries(
    st.sampled_from(
        [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "data",
            "data_base64",
            "partitionkey",
            "correlationid",
            "causationid",
            "typeversion",
            "tidingsheaders",
            "traceparent",
            "tracestate",
        ]
    ),
    json_values,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.binary(max_size=200),
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_arbitrary_bytes_and_headers_give_an_event_or_a_decode_error(
    value: bytes, headers: list[tuple[str, bytes]], timestamp: int
) -> None:
    check_total(record(value, tuple(headers), timestamp))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=attributes,
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    key=st.none() | st.binary(max_size=12),
)
def test_arbitrary_cloudevent_attributes_give_an_event_or_a_decode_error(
    extra: dict[str, object], timestamp: int, key: bytes | None
) -> None:
    attributes = {**CE, **extra}
    value = msgspec.json.encode(attributes)
    rec = Record("t", 0, 7, timestamp, value, key, ())
    check_total(rec)
    binary = tuple(
        (f"ce_{name}", msgspec.json.encode(v).strip(b'"'))
        for name, v in attributes.items()
        if name not in ("data", "data_base64")
    )
    check_total(Record("t", 0, 7, timestamp, b"[]", key, binary))


@pytest.mark.parametrize(
    ("value", "headers", "timestamp", "reason"),
    [
        (
            structured(data=[[[]]]).replace(b"[[[]]]", b"[" * 5000 + b"]" * 5000),
            (),
            0,
            "nested too deeply",
        ),
        (structured(), (), 2**62, "not a time between the years 1 and 9999"),
        (structured(), (), -(2**62), "not a time between the years 1 and 9999"),
        (structured(id="a\u0000b"), (), 0, "control character"),
        (structured(id="x" * (MAX_ID_LENGTH + 1)), (), 0, "characters long"),
        (structured(type="T\n"), (), 0, "control character"),
        (structured(correlationid="c" * 300), (), 0, "characters long"),
        (structured(typeversion=2**40), (), 0, "typeversion"),
        (structured(tidingsheaders='{"a\\u0000": "b"}'), (), 0, "control character"),
        (b"[]", ((UNREADABLE_HEADERS, b"a header name is not UTF-8"),), 0, "not UTF-8"),
        (b"[]", (("ce_specversion", b"1.0"), ("ce_id", b"\xff"), ("ce_source", b"s")), 0, "UTF-8"),
    ],
    ids=[
        "deep-nesting",
        "time-after-9999",
        "time-before-1",
        "nul-in-id",
        "long-id",
        "control-in-type",
        "long-correlation",
        "huge-version",
        "nul-in-header-name",
        "unreadable-headers",
        "binary-non-utf8",
    ],
)
def test_hostile_records_are_decode_errors_with_a_reason(
    value: bytes, headers: tuple[tuple[str, bytes], ...], timestamp: int, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason) as caught:
        event_from_record(record(value, headers, timestamp))
    assert "t[0]@7" in str(caught.value)


def test_a_record_key_that_is_no_valid_event_key_is_not_taken_as_one() -> None:
    event = event_from_record(Record("t", 0, 0, 0, structured(), b"\x00\x01binary", ()))
    assert event.key is None
    assert event_from_record(Record("t", 0, 0, 0, structured(), b"order-1", ())).key == "order-1"


def test_events_with_unstorable_attributes_cannot_be_built_or_published() -> None:
    for fields in (
        {"id": "x\x00"},
        {"id": "x" * (MAX_ID_LENGTH + 1)},
        {"key": "k\x00"},
        {"correlation_id": "\ud800"},
        {"source": "s\x7f"},
        {"headers": {"h": "v\x00"}},
        {"headers": {"h\x01": "v"}},
    ):
        with pytest.raises(ValueError):
            Event(type="T", **fields)  # type: ignore[arg-type]


def test_valid_events_still_round_trip_in_both_modes() -> None:
    event = Event(
        type="ORDER_PLACED",
        key="ключ-1",
        data={"deep": [[[[1]]]], "text": "tab\there"},
        headers={"tenant": "ü", "trace": "a b"},
        source="urn:shop:orders",
    )
    for binary in (False, True):
        message = event_to_message(event, binary=binary)
        rec = Record("t", 0, 0, 0, message.value, message.key, message.headers)
        assert event_from_record(rec) == event
    assert encode_event(event)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("binary", [False, True], ids=["structured", "binary"])
def test_trace_context_travels_with_the_event_and_a_malformed_one_is_dropped(
    binary: bool,
) -> None:
    event = Event(type="T", traceparent=TRACEPARENT, tracestate="vendor=abc")
    message = event_to_message(event, binary=binary)
    decoded = event_from_record(Record("t", 0, 0, 0, message.value, None, message.headers))
    assert decoded.traceparent == TRACEPARENT and decoded.tracestate == "vendor=abc"
    for bad in ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-xyz", TRACEPARENT.upper()):
        dropped = Event(type="T", traceparent=bad, tracestate="vendor=abc")
        assert dropped.traceparent is None and dropped.tracestate is None
    from_other = structured(traceparent="nonsense", tracestate="a=b")
    decoded = event_from_record(record(from_other))
    assert decoded.traceparent is None  # ignored, as W3C requires, not undecodable
