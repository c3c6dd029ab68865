"""The event envelope and its codecs: CloudEvents 1.0 structured JSON and the Kafka binding."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import msgspec
import pytest

from tidings.errors import DecodeError, TidingsError
from tidings.event import (
    STRUCTURED_CONTENT_TYPE,
    UNKNOWN_SOURCE,
    Event,
    decode_event,
    encode_event,
    event_from_record,
    event_to_message,
    from_cloudevent,
    from_kafka_binary,
    to_cloudevent,
    to_kafka_binary,
)
from tidings.records import Message, Record

FIXED_TIME = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
RECORD_TIMESTAMP_MS = 1_700_000_000_123


def full_event() -> Event:
    return Event(
        type="ORDER_PLACED",
        data={
            "orderId": "order-1001",
            "userId": "user-42",
            "items": [{"productId": "p-1", "quantity": 2}, {"productId": "p-2", "quantity": 1}],
            "total": 59.9,
            "gift": False,
            "note": None,
        },
        key="order-1001",
        version=2,
        id="6f1e8c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        time=FIXED_TIME,
        source="order-service",
        correlation_id="corr-1",
        causation_id="cause-1",
        headers={"tenant": "acme", "traceparent": "00-abc-def-01"},
    )


EVENTS: dict[str, Callable[[], Event]] = {
    "minimal": lambda: Event(type="PING"),
    "full": full_event,
    "unicode": lambda: Event(
        type="注文.作成",
        data={"名前": "注文 🚀", "emoji": "😀", "escape": 'quote " backslash \\ nl \n'},
        key="注文-42",
        source="сервис",
        headers={"región": "españa", "note": "naïve ☃"},
    ),
    "nested data": lambda: Event(
        type="DEEP",
        data={"a": [1, 2.5, -3, {"b": [True, None, {"c": "d"}]}], "big": 2**53, "empty": {}},
        key="k",
    ),
    "scalar data": lambda: Event(type="COUNT", data=42),
    "string data": lambda: Event(type="TEXT", data="plain text"),
    "list data": lambda: Event(type="LIST", data=[1, "two", None]),
    "false data": lambda: Event(type="FLAG", data=False),
    "bytes data": lambda: Event(type="BLOB", data=b"\x00\x01\xfe\xff binary", key="blob-1"),
    "empty bytes data": lambda: Event(type="BLOB", data=b""),
    "whole second time": lambda: Event(
        type="TICK", time=datetime(2024, 1, 1, tzinfo=UTC), source="clock"
    ),
    "empty key": lambda: Event(type="X", key=""),
    "caused": lambda: full_event().caused("INVENTORY_RESERVED", {"ok": True}),
}


@pytest.fixture(params=list(EVENTS.values()), ids=list(EVENTS))
def event(request: pytest.FixtureRequest) -> Event:
    factory: Callable[[], Event] = request.param
    return factory()


def record_of(message: Message, *, topic: str = "orders", partition: int = 3) -> Record:
    return Record(
        topic=topic,
        partition=partition,
        offset=17,
        timestamp=RECORD_TIMESTAMP_MS,
        value=message.value,
        key=message.key,
        headers=message.headers,
    )


# --- the envelope ---------------------------------------------------------------------------


def test_defaults() -> None:
    before = datetime.now(UTC)
    event = Event(type="ORDER_PLACED")
    after = datetime.now(UTC)
    assert str(uuid.UUID(event.id)) == event.id
    assert before <= event.time <= after
    assert event.time.tzinfo is UTC
    assert event.data is None
    assert event.key is None
    assert event.version == 1
    assert event.source == ""
    assert event.correlation_id == event.id
    assert event.causation_id is None
    assert event.headers == {}


def test_every_event_gets_its_own_id_and_headers() -> None:
    first, second = Event(type="A"), Event(type="A")
    assert first.id != second.id
    assert first.headers is not second.headers


def test_an_explicit_correlation_id_is_kept() -> None:
    assert Event(type="A", correlation_id="chain-7").correlation_id == "chain-7"


def test_events_are_immutable() -> None:
    event = Event(type="A")
    with pytest.raises(AttributeError):
        event.type = "B"  # type: ignore[misc]


def test_time_is_stored_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    event = Event(type="A", time=datetime(2024, 5, 1, 14, 0, tzinfo=paris))
    assert event.time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert event.time.tzinfo is UTC


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": ""}, "Event.type must be a non-empty string"),
        ({"type": 42}, "Event.type must be a non-empty string"),
        ({"type": "A", "version": 0}, "Event.version must be an integer >= 1"),
        ({"type": "A", "version": -3}, "Event.version must be an integer >= 1"),
        ({"type": "A", "version": True}, "Event.version must be an integer >= 1"),
        ({"type": "A", "version": "2"}, "Event.version must be an integer >= 1"),
        ({"type": "A", "version": 1.0}, "Event.version must be an integer >= 1"),
        ({"type": "A", "id": ""}, "Event.id must be a non-empty string"),
        ({"type": "A", "key": 42}, "Event.key must be a string or None"),
        ({"type": "A", "source": None}, "Event.source must be a string"),
        ({"type": "A", "correlation_id": 1}, "Event.correlation_id must be a string or None"),
        ({"type": "A", "causation_id": b"x"}, "Event.causation_id must be a string or None"),
        ({"type": "A", "time": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"type": "A", "time": "2024-01-01T00:00:00Z"}, "timezone-aware"),
        ({"type": "A", "headers": {"a": 1}}, "Event.headers must map str to str"),
        ({"type": "A", "headers": {1: "a"}}, "Event.headers must map str to str"),
        ({"type": "A", "headers": [("a", "b")]}, "Event.headers must be a dict"),
        ({"type": "A", "headers": None}, "Event.headers must be a dict"),
        ({"type": "A", "headers": {"ce_id": "x"}}, "is reserved"),
        ({"type": "A", "headers": {"Content-Type": "x"}}, "is reserved"),
    ],
)
def test_invalid_fields_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Event(**fields)


def test_caused_continues_the_chain() -> None:
    order = full_event()
    reserved = order.caused("INVENTORY_RESERVED", {"orderId": "order-1001"})
    assert reserved.type == "INVENTORY_RESERVED"
    assert reserved.data == {"orderId": "order-1001"}
    assert reserved.correlation_id == order.correlation_id == "corr-1"
    assert reserved.causation_id == order.id
    assert reserved.key == order.key
    assert reserved.source == order.source
    assert reserved.version == 1
    assert reserved.id != order.id
    assert reserved.headers == {}


def test_caused_overrides() -> None:
    order = full_event()
    paid = order.caused("PAYMENT_TAKEN", key="payment-9", version=3, source="payment-service")
    assert (paid.key, paid.version, paid.source) == ("payment-9", 3, "payment-service")
    assert paid.data is None
    assert paid.causation_id == order.id


def test_a_chain_keeps_the_root_correlation() -> None:
    root = Event(type="ORDER_PLACED", key="o-1")
    child = root.caused("INVENTORY_RESERVED")
    grandchild = child.caused("PAYMENT_TAKEN")
    assert root.correlation_id == root.id
    assert child.correlation_id == grandchild.correlation_id == root.id
    assert (child.causation_id, grandchild.causation_id) == (root.id, child.id)
    assert grandchild.key == "o-1"


# --- structured mode ------------------------------------------------------------------------


def test_to_cloudevent_maps_every_attribute() -> None:
    assert to_cloudevent(full_event()) == {
        "specversion": "1.0",
        "id": "6f1e8c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "source": "order-service",
        "type": "ORDER_PLACED",
        "time": "2024-05-01T12:30:45.123456Z",
        "datacontenttype": "application/json",
        "data": full_event().data,
        "partitionkey": "order-1001",
        "correlationid": "corr-1",
        "causationid": "cause-1",
        "typeversion": 2,
        "tidingsheaders": '{"tenant":"acme","traceparent":"00-abc-def-01"}',
    }


def test_to_cloudevent_omits_absent_attributes() -> None:
    event = Event(type="PING", id="e-1", time=datetime(2024, 1, 1, tzinfo=UTC))
    assert to_cloudevent(event) == {
        "specversion": "1.0",
        "id": "e-1",
        "source": UNKNOWN_SOURCE,
        "type": "PING",
        "time": "2024-01-01T00:00:00.000000Z",
        "correlationid": "e-1",
        "typeversion": 1,
    }


def test_bytes_data_is_written_as_data_base64() -> None:
    cloudevent = to_cloudevent(Event(type="BLOB", data=b"\x00\xff"))
    assert cloudevent["data_base64"] == "AP8="
    assert "data" not in cloudevent
    assert "datacontenttype" not in cloudevent


def test_to_cloudevent_is_json_ready(event: Event) -> None:
    cloudevent = to_cloudevent(event)
    assert json.loads(json.dumps(cloudevent)) == cloudevent
    assert msgspec.json.decode(encode_event(event)) == cloudevent


def test_dict_round_trip(event: Event) -> None:
    assert from_cloudevent(to_cloudevent(event)) == event


def test_bytes_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


def test_encoding_is_compact_utf8() -> None:
    encoded = encode_event(EVENTS["unicode"]())
    assert b": " not in encoded
    assert b", " not in encoded
    assert "注文 🚀".encode() in encoded


def test_an_empty_source_round_trips_through_the_placeholder() -> None:
    event = Event(type="A", source="")
    assert to_cloudevent(event)["source"] == "urn:tidings:unknown"
    assert decode_event(encode_event(event)).source == ""


def test_from_cloudevent_accepts_any_mapping_and_datetime_values() -> None:
    event = full_event()
    cloudevent = to_cloudevent(event)
    cloudevent["time"] = FIXED_TIME
    assert from_cloudevent(MappingProxyType(cloudevent)) == event


# --- other producers ------------------------------------------------------------------------

FOREIGN_CLOUDEVENT = {
    "specversion": "1.0",
    "type": "com.github.pull_request.opened",
    "source": "https://github.com/cloudevents/spec/pull",
    "subject": "123",
    "id": "A234-1234-1234",
    "time": "2018-04-05T17:31:00Z",
    "comexampleextension1": "value",
    "comexampleothervalue": 5,
    "datacontenttype": "text/xml",
    "data": '<much wow="xml"/>',
}


def test_a_foreign_cloudevent_decodes_with_defaults() -> None:
    event = decode_event(json.dumps(FOREIGN_CLOUDEVENT).encode())
    assert event == from_cloudevent(FOREIGN_CLOUDEVENT)
    assert event.type == "com.github.pull_request.opened"
    assert event.source == "https://github.com/cloudevents/spec/pull"
    assert event.id == "A234-1234-1234"
    assert event.time == datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
    assert event.data == '<much wow="xml"/>'
    assert event.version == 1
    assert event.key is None
    assert event.correlation_id == "A234-1234-1234"
    assert event.causation_id is None
    assert event.headers == {}


def test_a_foreign_cloudevent_with_only_required_attributes_decodes() -> None:
    before = datetime.now(UTC)
    event = from_cloudevent({"specversion": "1.0", "id": "x", "source": "/s", "type": "t"})
    assert event.data is None
    assert event.time >= before


def test_foreign_times_are_normalised_to_utc() -> None:
    cloudevent = {**FOREIGN_CLOUDEVENT, "time": "2018-04-05T19:31:00.123456789+02:00"}
    event = from_cloudevent(cloudevent)
    assert event.time == datetime(2018, 4, 5, 17, 31, 0, 123457, tzinfo=UTC)
    assert event.time.tzinfo is UTC


def test_foreign_data_base64_decodes_to_bytes() -> None:
    cloudevent = {"specversion": "1.0", "id": "x", "source": "/s", "type": "t"}
    assert from_cloudevent({**cloudevent, "data_base64": "aGVsbG8="}).data == b"hello"


def test_the_articles_json_is_not_a_cloudevent() -> None:
    article_event = {
        "eventType": "ORDER_PLACED",
        "eventId": "0b9f5d6e-4c1a-4f7e-9d2b-3a8c7e6f5d4c",
        "timestamp": "2024-05-01T12:00:00.000Z",
        "version": 1,
        "data": {"orderId": "order-1001", "userId": "user-42", "items": [], "total": 10},
    }
    with pytest.raises(DecodeError, match="missing required field `specversion`"):
        decode_event(json.dumps(article_event).encode())
    with pytest.raises(DecodeError, match="missing required field `specversion`"):
        from_cloudevent(article_event)


# --- decode errors --------------------------------------------------------------------------

VALID = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b'{"specversion": "1.0"', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a CloudEvent: Expected `object`, got `array`"),
        (b'"text"', "not a CloudEvent: Expected `object`, got `str`"),
        (b"42", "not a CloudEvent: Expected `object`, got `int`"),
        (b"null", "not a CloudEvent: Expected `object`, got `null`"),
    ],
)
def test_undecodable_bytes(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_event(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"specversion": None}, "missing required field `specversion`"),
        ({"specversion": "0.3"}, "unsupported CloudEvents specversion '0.3'"),
        ({"specversion": 1.0}, r"got `float` - at `\$.specversion`"),
        ({"id": None}, "missing required field `id`"),
        ({"id": ""}, r"length >= 1 - at `\$.id`"),
        ({"id": 7}, r"Expected `str`, got `int` - at `\$.id`"),
        ({"type": None}, "missing required field `type`"),
        ({"type": ""}, r"length >= 1 - at `\$.type`"),
        ({"source": None}, "missing required field `source`"),
        ({"source": ""}, r"length >= 1 - at `\$.source`"),
        ({"time": "yesterday"}, r"Invalid RFC3339 encoded datetime - at `\$.time`"),
        ({"time": "2018-04-05T17:31:00"}, r"with a timezone component - at `\$.time`"),
        ({"time": 1700000000}, r"at `\$.time`"),
        ({"typeversion": 0}, r"`int` >= 1 - at `\$.typeversion`"),
        ({"typeversion": "2"}, r"got `str` - at `\$.typeversion`"),
        ({"typeversion": 1.5}, r"got `float` - at `\$.typeversion`"),
        ({"typeversion": True}, r"got `bool` - at `\$.typeversion`"),
        ({"partitionkey": 5}, r"at `\$.partitionkey`"),
        ({"correlationid": ["x"]}, r"at `\$.correlationid`"),
        ({"tidingsheaders": "{"}, "bad `tidingsheaders`"),
        ({"tidingsheaders": "[1]"}, "bad `tidingsheaders`"),
        ({"tidingsheaders": '{"a": 1}'}, "bad `tidingsheaders`"),
        ({"tidingsheaders": {"a": "b"}}, r"at `\$.tidingsheaders`"),
        ({"tidingsheaders": '{"ce_id": "b"}'}, "invalid event: .* is reserved"),
        ({"data_base64": "%%%"}, r"at `\$.data_base64`"),
    ],
)
def test_invalid_cloudevents(changes: dict[str, Any], message: str) -> None:
    cloudevent = {**VALID, **changes}
    cloudevent = {name: value for name, value in cloudevent.items() if value is not None}
    with pytest.raises(DecodeError, match=message):
        decode_event(json.dumps(cloudevent).encode())
    with pytest.raises(DecodeError, match=message):
        from_cloudevent(cloudevent)


def test_from_cloudevent_refuses_non_mappings() -> None:
    with pytest.raises(DecodeError, match="expected a JSON object, got list"):
        from_cloudevent([("specversion", "1.0")])  # type: ignore[arg-type]


def test_decode_error_is_a_tidings_value_error() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(b"{}")
    assert isinstance(caught.value, TidingsError)
    assert isinstance(caught.value, ValueError)


# --- Kafka binary mode ----------------------------------------------------------------------


def test_binary_mode_headers_and_value() -> None:
    headers, value = to_kafka_binary(full_event())
    assert headers == (
        ("ce_specversion", b"1.0"),
        ("ce_id", b"6f1e8c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"),
        ("ce_source", b"order-service"),
        ("ce_type", b"ORDER_PLACED"),
        ("ce_time", b"2024-05-01T12:30:45.123456Z"),
        ("ce_partitionkey", b"order-1001"),
        ("ce_correlationid", b"corr-1"),
        ("ce_causationid", b"cause-1"),
        ("ce_typeversion", b"2"),
        ("content-type", b"application/json"),
        ("tenant", b"acme"),
        ("traceparent", b"00-abc-def-01"),
    )
    assert msgspec.json.decode(value) == full_event().data


def test_binary_mode_without_data_has_an_empty_value() -> None:
    headers, value = to_kafka_binary(Event(type="PING", time=datetime(2024, 1, 1, tzinfo=UTC)))
    assert value == b""
    names = [name for name, _ in headers]
    assert "content-type" not in names
    assert "ce_partitionkey" not in names
    assert "ce_causationid" not in names
    assert dict(headers)["ce_time"] == b"2024-01-01T00:00:00.000000Z"
    assert dict(headers)["ce_source"] == b"urn:tidings:unknown"


def test_binary_mode_bytes_data_is_the_raw_value() -> None:
    headers, value = to_kafka_binary(Event(type="BLOB", data=b"\x00\xff"))
    assert value == b"\x00\xff"
    assert dict(headers)["content-type"] == b"application/octet-stream"


def test_binary_round_trip(event: Event) -> None:
    assert from_kafka_binary(*to_kafka_binary(event)) == event


def test_a_foreign_binary_record_decodes() -> None:
    headers = (
        ("ce_specversion", b"1.0"),
        ("ce_id", b"f-1"),
        ("ce_source", b"/billing"),
        ("ce_type", b"com.example.invoice.paid"),
        ("content-type", b"application/json; charset=utf-8"),
        ("x-request-id", b"r-9"),
    )
    event = from_kafka_binary(headers, b'{"amount": 10}')
    assert event.data == {"amount": 10}
    assert event.version == 1
    assert event.key is None
    assert event.correlation_id == "f-1"
    assert event.headers == {"x-request-id": "r-9"}


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, {"a": 1}),
        (b"application/json", {"a": 1}),
        (b"application/vnd.acme+json", {"a": 1}),
        (b"text/plain", b'{"a": 1}'),
        (b"application/octet-stream", b'{"a": 1}'),
    ],
)
def test_binary_data_follows_the_content_type(content_type: bytes | None, expected: object) -> None:
    headers = tuple((f"ce_{name}", value.encode()) for name, value in VALID.items())
    if content_type is not None:
        headers += (("content-type", content_type),)
    assert from_kafka_binary(headers, b'{"a": 1}').data == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [(None, None), (b"application/json", None), (b"application/octet-stream", b"")],
)
def test_an_empty_binary_value(content_type: bytes | None, expected: object) -> None:
    headers = tuple((f"ce_{name}", value.encode()) for name, value in VALID.items())
    if content_type is not None:
        headers += (("content-type", content_type),)
    assert from_kafka_binary(headers, b"").data == expected


@pytest.mark.parametrize(
    ("changes", "value", "message"),
    [
        ({"ce_id": None}, b"", "missing required field `id`"),
        ({"ce_specversion": b"0.3"}, b"", "unsupported CloudEvents specversion"),
        ({"ce_typeversion": b"two"}, b"", r"at `\$.typeversion`"),
        ({"ce_typeversion": b"0"}, b"", r"at `\$.typeversion`"),
        ({"ce_time": b"noon"}, b"", r"at `\$.time`"),
        ({"ce_type": b"\xff"}, b"", "header 'ce_type' is not UTF-8"),
        ({"tenant": b"\xc3"}, b"", "header 'tenant' is not UTF-8"),
        ({}, b"{not json", "value is not JSON"),
    ],
)
def test_invalid_binary_records(
    changes: dict[str, bytes | None], value: bytes, message: str
) -> None:
    headers = {f"ce_{name}": text.encode() for name, text in VALID.items()}
    headers.update({name: raw for name, raw in changes.items() if raw is not None})
    for name, raw in changes.items():
        if raw is None:
            del headers[name]
    with pytest.raises(DecodeError, match=message):
        from_kafka_binary(tuple(headers.items()), value)


# --- messages and records -------------------------------------------------------------------


def test_structured_message() -> None:
    event = full_event()
    message = event_to_message(event)
    assert message.key == b"order-1001"
    assert message.headers == (("content-type", STRUCTURED_CONTENT_TYPE.encode()),)
    assert message.partition is None
    assert decode_event(message.value) == event


def test_binary_message() -> None:
    event = full_event()
    message = event_to_message(event, binary=True)
    assert message.key == b"order-1001"
    assert (message.headers, message.value) == to_kafka_binary(event)


def test_a_keyless_event_makes_a_keyless_message() -> None:
    assert event_to_message(Event(type="A")).key is None
    assert event_to_message(Event(type="A"), binary=True).key is None


def test_unicode_keys_are_utf8() -> None:
    assert event_to_message(Event(type="A", key="注文-42")).key == "注文-42".encode()


@pytest.mark.parametrize("binary", [False, True], ids=["structured", "binary"])
def test_record_round_trip(event: Event, binary: bool) -> None:
    assert event_from_record(record_of(event_to_message(event, binary=binary))) == event


def test_a_record_without_content_type_is_structured() -> None:
    event = full_event()
    message = Message(value=encode_event(event), key=b"order-1001")
    assert event_from_record(record_of(message)) == event


def test_a_foreign_record_takes_time_and_key_from_the_record() -> None:
    cloudevent = {"specversion": "1.0", "id": "x", "source": "/s", "type": "t"}
    message = Message(value=json.dumps(cloudevent).encode(), key=b"customer-7")
    event = event_from_record(record_of(message))
    assert event.key == "customer-7"
    assert event.time == datetime.fromtimestamp(RECORD_TIMESTAMP_MS / 1000, UTC)

    binary = tuple((f"ce_{name}", value.encode()) for name, value in cloudevent.items())
    event = event_from_record(record_of(Message(value=b"", key=b"customer-7", headers=binary)))
    assert event.key == "customer-7"
    assert event.time == datetime.fromtimestamp(RECORD_TIMESTAMP_MS / 1000, UTC)


def test_a_non_utf8_record_key_is_not_an_event_key() -> None:
    cloudevent = {"specversion": "1.0", "id": "x", "source": "/s", "type": "t"}
    message = Message(value=json.dumps(cloudevent).encode(), key=b"\xff\x00")
    assert event_from_record(record_of(message)).key is None


def test_the_event_key_wins_over_the_record_key() -> None:
    message = event_to_message(Event(type="A", key="mine"))
    record = record_of(Message(value=message.value, key=b"other", headers=message.headers))
    assert event_from_record(record).key == "mine"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Message(value=b"garbage"), "not JSON"),
        (Message(value=b'{"eventType": "ORDER_PLACED"}'), "missing required field `specversion`"),
        (
            Message(value=b"{}", headers=(("ce_specversion", b"1.0"), ("ce_id", b"x"))),
            "missing required field `source`",
        ),
    ],
)
def test_undecodable_records_name_where_they_are(message: Message, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        event_from_record(record_of(message, topic="payments", partition=5))
    text = str(caught.value)
    assert text.startswith("cannot decode the event at payments[5]@17: ")
    assert reason in text
    assert isinstance(caught.value.__cause__, DecodeError)


def test_tidings_transport_headers_are_reserved_and_never_become_event_headers() -> None:
    import pytest as _pytest

    from tidings.event import Event as _Event
    from tidings.event import from_kafka_binary, to_kafka_binary

    with _pytest.raises(ValueError, match="reserved"):
        _Event(type="X", headers={"tidings-replay-for": "svc.handler"})
    event = _Event(type="X", data={"a": 1}, headers={"trace": "1"})
    headers, value = to_kafka_binary(event)
    in_transit = (*headers, ("tidings-dlq-reason", b"retries-exhausted"))
    assert from_kafka_binary(in_transit, value) == event
