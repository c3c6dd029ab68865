"""Kafka's default key partitioner, so the embedded brokers and Kafka place a key identically.

`murmur2` is bit-for-bit `org.apache.kafka.common.utils.Utils.murmur2` and `partition_for_key` is
`BuiltInPartitioner.partitionForKey`: `toPositive(murmur2(key)) % partitions`.

Pure Python on a hot path: the per-word mixing of all 4-byte words runs at once on one big
integer (each word in its own 64-bit lane: a 32-bit word times the 31-bit constant never
carries into the next lane, and reading a lane back keeps only its low 32 bits); only the
sequential fold into the hash is a Python loop.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SIGN_BIT = 0x80000000
_CHUNK_WORDS = 64

# unpack words, spread them into lanes, read lanes back, lane mask, lanes' byte size
_ChunkPlan = tuple[
    Callable[[bytes, int], tuple[int, ...]],
    Callable[..., bytes],
    Callable[[bytes], tuple[int, ...]],
    int,
    int,
]


def _chunk_plan(words: int) -> _ChunkPlan:
    """Precompiled codecs and lane mask for mixing `words` 4-byte words at once."""
    spread = struct.Struct("<" + "I4x" * words)
    lanes = sum(_MASK << (64 * lane) for lane in range(words))
    return struct.Struct(f"<{words}I").unpack_from, spread.pack, spread.unpack, lanes, words * 8


_PLANS: tuple[_ChunkPlan, ...] = tuple(_chunk_plan(words) for words in range(_CHUNK_WORDS + 1))


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` (seed 0x9747b28c), as a signed 32-bit Java int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length >> 2
    offset = 0
    while words:
        chunk = words if words < _CHUNK_WORDS else _CHUNK_WORDS
        unpack_words, pack_lanes, unpack_lanes, lanes, size = _PLANS[chunk]
        k = int.from_bytes(pack_lanes(*unpack_words(data, offset)), "little")
        k = (k * _M) & lanes
        k = ((k ^ (k >> 24)) & lanes) * _M
        for mixed in unpack_lanes(k.to_bytes(size, "little")):
            h = ((h * _M) ^ mixed) & _MASK
        offset += chunk << 2
        words -= chunk
    if length & 3:
        h = ((h ^ int.from_bytes(data[offset:], "little")) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - 0x100000000 if h & _SIGN_BIT else h


@functools.lru_cache(maxsize=65536)
def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions` (>= 1).

    Raises ValueError if `partitions` < 1. Results are cached (keys repeat).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
