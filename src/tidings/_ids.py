"""Time-ordered unique ids (UUID version 7, RFC 9562) for events.

Ids created later sort later (to the millisecond), so the indexes keyed by event id (inbox,
outbox) grow at their end instead of splitting random B-tree pages. The 74 random bits of each
id come from the OS's CSPRNG. Thread- and fork-safe.
"""

from __future__ import annotations

import os
import time


def uuid7() -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    rand = int.from_bytes(os.urandom(10))
    value = (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80
    value |= (0x7000 | (rand >> 64) & 0xFFF) << 64
    value |= 0x8000_0000_0000_0000 | rand & 0x3FFF_FFFF_FFFF_FFFF
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
