"""Time-ordered unique ids (UUID version 7, RFC 9562) for events.

Ids created later sort later (to the millisecond), so the indexes keyed by event id (inbox,
outbox) grow at their end instead of splitting random B-tree pages. The 74 random bits of each
id come from the OS's CSPRNG, read 4 KiB at a time into a buffer per thread (each id uses its
own 10 bytes of it, never shared); the buffers are dropped in a forked child, so parent and
child never hand out the same bytes. Thread- and fork-safe.
"""

from __future__ import annotations

import os
import threading
import time

_CHUNK = 4090
"""Bytes of randomness read at once: a multiple of the 10 each id takes."""
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""A random hex digit -> the variant digit 10xx carrying its two low bits."""


class _Randomness(threading.local):
    def __init__(self) -> None:
        self.buffer = b""
        self.position = 0


_randomness = _Randomness()
_prefix: tuple[int, str] = (-1, "")
"""(millisecond, the id's text up to its version digit), for the last millisecond seen."""


def _reset_after_fork() -> None:
    global _randomness
    _randomness = _Randomness()


os.register_at_fork(after_in_child=_reset_after_fork)


def uuid7() -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    global _prefix
    ms = time.time_ns() // 1_000_000
    cached_ms, prefix = _prefix
    if ms != cached_ms:
        text = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
        prefix = f"{text[:8]}-{text[8:]}-7"
        _prefix = (ms, prefix)
    randomness = _randomness
    position = randomness.position
    buffer = randomness.buffer
    if position >= len(buffer):
        buffer = randomness.buffer = os.urandom(_CHUNK)
        position = 0
    randomness.position = position + 10
    hex_ = buffer[position : position + 10].hex()
    return f"{prefix}{hex_[:3]}-{_VARIANT[hex_[3]]}{hex_[4:7]}-{hex_[7:19]}"
