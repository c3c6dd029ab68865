from __future__ import annotations

import time
import uuid

from tidings._ids import uuid7


def test_uuid7_is_a_valid_time_ordered_uuid() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert all(before <= u.int >> 80 <= after for u in parsed)
    assert len(set(ids)) == len(ids)
    assert [u.int >> 80 for u in parsed] == sorted(u.int >> 80 for u in parsed)
    assert all(str(u) == i for u, i in zip(parsed, ids, strict=True))
