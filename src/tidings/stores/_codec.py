"""Outbox rows' headers as both stores keep them (msgpack), cached: most events carry the same
few headers."""

from __future__ import annotations

import functools

import msgspec

from tidings.records import Headers

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Headers)


@functools.lru_cache(maxsize=256)
def encode_headers(headers: Headers) -> bytes | None:
    return _encoder.encode(headers) if headers else None


@functools.lru_cache(maxsize=256)
def decode_headers(stored: bytes) -> Headers:
    return _decoder.decode(stored)
