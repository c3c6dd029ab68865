"""A corpus of hostile records: what a buggy or malicious producer can put on a topic.

`hostile_records(event_type)` returns messages to publish to a topic consumed by a handler of
`event_type` (version 1, any fields), each with the outcome a tidings service must reach: a
dead letter with that reason, or an acknowledgement as an event of no interest. None of them
may stop the partition, kill the service or lose the valid records around them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec

from tidings.event import MAX_ID_LENGTH, Event, event_to_message
from tidings.records import Message

UNDECODABLE = "undecodable"
INVALID = "invalid-event"
UNKNOWN_TYPE = "unknown-type"
"""Decoded, but no handler takes its type: acknowledged and counted as skipped."""


@dataclass(frozen=True, slots=True)
class Hostile:
    label: str
    message: Message
    outcome: str


def _cloudevent(**attributes: object) -> bytes:
    base: dict[str, object] = {"specversion": "1.0", "id": "hostile", "source": "s", "type": "T"}
    return msgspec.json.encode({**base, **attributes})


def hostile_records(
    event_type: str, *, max_message_bytes: int = 1024 * 1024, seed: int = 0
) -> list[Hostile]:
    """The corpus for a topic whose service handles `event_type` version 1 (a typed handler;
    its data model must accept an empty object). Ids are unique per call."""
    rng = random.Random(seed)
    unique = rng.getrandbits(48)
    serial = iter(range(1_000_000))

    def ident() -> str:
        return f"hostile-{unique:x}-{next(serial)}"

    def ce(**attributes: object) -> bytes:
        return _cloudevent(**{"id": ident(), "type": event_type, **attributes})

    binary = (("ce_specversion", b"1.0"), ("ce_source", b"s"), ("ce_type", event_type.encode()))
    deep = b"[" * 5000 + b"]" * 5000
    near_limit = event_to_message(Event(type=event_type, id=ident(), data={"pad": ""}, source="s"))
    pad = max_message_bytes - near_limit.size - 64
    corpus = [
        Hostile("random bytes", Message(rng.randbytes(64)), UNDECODABLE),
        Hostile("random bytes, long", Message(rng.randbytes(4096)), UNDECODABLE),
        Hostile("empty value", Message(b""), UNDECODABLE),
        Hostile("JSON, not an event", Message(b'{"hello": "world"}'), UNDECODABLE),
        Hostile("JSON array", Message(b"[1, 2, 3]"), UNDECODABLE),
        Hostile("JSON null", Message(b"null"), UNDECODABLE),
        Hostile("truncated JSON", Message(ce()[:-5]), UNDECODABLE),
        Hostile(
            "deep nesting",
            Message(ce(data={"x": 0}).replace(b'{"x":0}', deep)),
            UNDECODABLE,
        ),
        Hostile("huge id", Message(_cloudevent(id="i" * 100_000, type=event_type)), UNDECODABLE),
        Hostile(
            "id over the limit", Message(_cloudevent(id="i" * (MAX_ID_LENGTH + 1))), UNDECODABLE
        ),
        Hostile("NUL in id", Message(_cloudevent(id="a\x00b", type=event_type)), UNDECODABLE),
        Hostile("control character in type", Message(ce(type="T\x07")), UNDECODABLE),
        Hostile("specversion 2.0", Message(ce(specversion="2.0")), UNDECODABLE),
        Hostile("typeversion 0", Message(ce(typeversion=0)), UNDECODABLE),
        Hostile("typeversion huge", Message(ce(typeversion=2**70)), UNDECODABLE),
        Hostile("time not a time", Message(ce(time="yesterday")), UNDECODABLE),
        Hostile("tidingsheaders not JSON", Message(ce(tidingsheaders="{")), UNDECODABLE),
        Hostile(
            "binary mode, id not UTF-8",
            Message(b"{}", headers=(*binary, ("ce_id", b"\xff\xfe"))),
            UNDECODABLE,
        ),
        Hostile(
            "binary mode, header value not UTF-8",
            Message(b"{}", headers=(*binary, ("ce_id", ident().encode()), ("x", b"\xc3\x28"))),
            UNDECODABLE,
        ),
        Hostile(
            "binary mode, value not JSON",
            Message(b"\x00\x01", headers=(*binary, ("ce_id", ident().encode()))),
            UNDECODABLE,
        ),
        Hostile("version 99", Message(ce(typeversion=99, data={})), INVALID),
        Hostile("data not an object", Message(ce(data=[1, 2])), INVALID),
        Hostile("data as base64", Message(ce(data_base64="AAEC")), INVALID),
        Hostile(
            "unknown type", Message(_cloudevent(id=ident(), type="NO_SUCH_TYPE")), UNKNOWN_TYPE
        ),
    ]
    if pad > 0:
        near = event_to_message(
            Event(type=event_type, id=ident(), data={"pad": "p" * pad}, version=99, source="s")
        )
        corpus.append(Hostile("near the size limit, version 99", near, INVALID))
    return corpus
