"""The envelope's `sequence` and `dataref` attributes, and records in the article's envelope
(`{"eventType", "eventId", "timestamp", "version", "data"}` with correlation and source in
headers) read as events - decoding stays total."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_decode_total import check_total, json_values
from tidings import DecodeError, Event, Record, event_from_record, event_to_message
from tidings.event import from_cloudevent, to_cloudevent


def record(value: bytes, headers: tuple[tuple[str, bytes], ...] = (), **fields: object) -> Record:
    values: dict[str, object] = {"topic": "t", "partition": 0, "offset": 7, "timestamp": 0}
    values.update(fields)
    return Record(value=value, headers=headers, **values)  # type: ignore[arg-type]


def article(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# sequence and dataref --------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["structured", "binary"])
def test_sequence_and_dataref_travel_as_cloudevents_extensions(binary: bool) -> None:
    event = Event(type="T", key="k", data={"a": 1}, sequence=42, dataref="tidings-blob:s/x.json")
    message = event_to_message(event, binary=binary)
    if binary:
        assert ("ce_sequence", b"42") in message.headers
        assert ("ce_dataref", b"tidings-blob:s/x.json") in message.headers
    else:
        attributes = json.loads(message.value)
        assert attributes["sequence"] == "42"  # a CloudEvents String, as the extension says
        assert attributes["dataref"] == "tidings-blob:s/x.json"
    assert event_from_record(record(message.value, message.headers, key=message.key)) == event
    assert from_cloudevent(to_cloudevent(event)) == event


@pytest.mark.parametrize(
    ("text", "number"),
    [("1", 1), ("007", 7), ("9223372036854775807", 2**63 - 1), ("9223372036854775808", None)],
)
def test_a_sequence_is_read_as_a_number_when_it_is_one(text: str, number: int | None) -> None:
    value = msgspec.json.encode(
        {"specversion": "1.0", "id": "e", "source": "s", "type": "T", "sequence": text}
    )
    assert event_from_record(record(value)).sequence == number


@pytest.mark.parametrize("text", ["abc", "-1", "1.5", "", "١٢"])
def test_another_producers_sequence_that_is_no_number_is_ignored(text: str) -> None:
    value = msgspec.json.encode(
        {"specversion": "1.0", "id": "e", "source": "s", "type": "T", "sequence": text}
    )
    assert event_from_record(record(value)).sequence is None


def test_invalid_sequence_or_dataref_cannot_be_built() -> None:
    for fields in ({"sequence": -1}, {"sequence": True}, {"sequence": 2**63}, {"dataref": "a\nb"}):
        with pytest.raises(ValueError):
            Event(type="T", **fields)


# the article's envelope --------------------------------------------------------------------------


def test_the_articles_envelope_is_read_as_an_event() -> None:
    value = article(
        eventType="ORDER_PLACED",
        eventId="5b7c3c1e-7c1e-4a57-8d2a-3f1f0c0f6c11",
        timestamp="2024-05-01T12:00:00.123Z",
        version=2,
        data={"orderId": "o-1", "total": 42.5},
    )
    headers = (("correlation-id", b"checkout-9"), ("source", b"order-service"), ("tenant", b"eu"))
    event = event_from_record(record(value, headers, key=b"o-1"))
    assert event == Event(
        type="ORDER_PLACED",
        id="5b7c3c1e-7c1e-4a57-8d2a-3f1f0c0f6c11",
        time=datetime(2024, 5, 1, 12, 0, 0, 123000, UTC),
        version=2,
        data={"orderId": "o-1", "total": 42.5},
        key="o-1",
        source="order-service",
        correlation_id="checkout-9",
        headers={"tenant": "eu"},
    )


def test_what_the_article_leaves_out_is_filled_in_from_the_record() -> None:
    """The article's INVENTORY_RESERVED carries only eventType and data."""
    value = article(eventType="INVENTORY_RESERVED", data={"orderId": "o-1"})
    first = event_from_record(record(value, timestamp=1_714_564_800_000, offset=3))
    again = event_from_record(record(value, timestamp=1_714_564_800_000, offset=3))
    elsewhere = event_from_record(record(value, timestamp=1_714_564_800_000, offset=4))
    assert first.version == 1 and first.source == "" and first.correlation_id == first.id
    assert first.time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert first.id == again.id != elsewhere.id  # a redelivery is the same event
    epoch = article(eventType="T", data=None, timestamp=1_714_564_800_000, version="3")
    event = event_from_record(record(epoch))
    assert event.time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC) and event.version == 3


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (article(eventType="T"), "`specversion`; nor .* missing required field `data`"),
        (article(eventType=5, data={}), "Expected `str`"),
        (article(eventType="T", data={}, eventId=""), "length >= 1"),
        (article(eventType="T", data={}, version=0), ">= 1"),
        (article(eventType="T", data={}, timestamp="yesterday"), "datetime"),
        (article(eventType="T", data={}, timestamp=2**62), "years 1 and 9999"),
        (article(eventType="T\n", data={}), "control character"),
    ],
)
def test_a_broken_article_envelope_is_a_decode_error_saying_why(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as caught:
        event_from_record(record(value))
    assert "t[0]@7" in str(caught.value)


def test_a_cloudevent_mentioning_event_type_is_still_a_cloudevent() -> None:
    value = msgspec.json.encode(
        {"specversion": "1.0", "id": "e", "source": "s", "type": "T", "data": {"eventType": 1}}
    )
    assert event_from_record(record(value)).data == {"eventType": 1}
    broken = msgspec.json.encode({"specversion": "2.0", "eventType": "T", "data": {}})
    with pytest.raises(DecodeError, match="not a CloudEvent") as caught:
        event_from_record(record(broken))
    assert "article" not in str(caught.value)


def test_article_headers_must_be_utf8() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        event_from_record(record(article(eventType="T", data={}), (("source", b"\xff"),)))


article_fields = st.dictionaries(
    st.sampled_from(["eventType", "eventId", "timestamp", "version", "data", "other"]),
    json_values,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=article_fields,
    event_type=st.text(max_size=10),
    headers=st.lists(
        st.tuples(
            st.sampled_from(["correlation-id", "causation-id", "source", "x", "ce_id"]),
            st.binary(max_size=20),
        ),
        max_size=4,
    ),
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_arbitrary_article_envelopes_give_an_event_or_a_decode_error(
    fields: dict[str, object],
    event_type: str,
    headers: list[tuple[str, bytes]],
    timestamp: int,
) -> None:
    value = msgspec.json.encode({"eventType": event_type, **fields})
    check_total(Record("t", 0, 7, timestamp, value, b"k", tuple(headers)))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=json_values, dataref=json_values)
def test_arbitrary_sequence_and_dataref_give_an_event_or_a_decode_error(
    sequence: object, dataref: object
) -> None:
    attributes = {"specversion": "1.0", "id": "e", "source": "s", "type": "T"}
    value = msgspec.json.encode({**attributes, "sequence": sequence, "dataref": dataref})
    check_total(Record("t", 0, 7, 0, value, None, ()))
    binary = tuple(
        (f"ce_{name}", msgspec.json.encode(v).strip(b'"'))
        for name, v in {**attributes, "sequence": sequence, "dataref": dataref}.items()
    )
    check_total(Record("t", 0, 7, 0, b"", None, binary))
