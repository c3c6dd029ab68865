from __future__ import annotations

import os
import threading
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


def test_uuid7_random_bits_cover_every_variant_digit() -> None:
    """The variant digit carries two random bits: all four of 8, 9, a, b occur."""
    digits = {uuid7()[19] for _ in range(2000)}
    assert digits == set("89ab")


def test_uuid7_unique_across_threads() -> None:
    ids: list[list[str]] = []

    def make() -> None:
        ids.append([uuid7() for _ in range(5000)])

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [i for chunk in ids for i in chunk]
    assert len(flat) == 40_000
    assert len(set(flat)) == len(flat)


def test_uuid7_parent_and_forked_child_never_share_ids() -> None:
    """The child must not reuse the randomness the parent had buffered before the fork (its
    random part, after the millisecond timestamp, is compared: the two may differ in time)."""
    uuid7()  # fill this thread's buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, "\n".join(uuid7() for _ in range(300)).encode())
        os._exit(0)
    os.close(write)
    parent = {uuid7()[14:] for _ in range(300)}
    with os.fdopen(read) as pipe:
        child = {i[14:] for i in pipe.read().split("\n")}
    os.waitpid(pid, 0)
    assert len(child) == 300
    assert not parent & child
