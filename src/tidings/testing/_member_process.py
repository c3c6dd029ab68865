"""A consumer-group member run as its own OS process by the contract suite.

Usage: python -m tidings.testing._member_process URL GROUP TOPIC OUT SESSION_TIMEOUT

Appends `pid partition offset value` per processed record to OUT (flushed before the commit),
then commits the batch, so OUT shows everything this member processed.
"""

from __future__ import annotations

import asyncio
import os
import sys

from tidings.brokers import connect


async def run(url: str, group: str, topic: str, out: str, session_timeout: float) -> None:
    async with connect(url) as broker:
        consumer = broker.subscribe(group, [topic], session_timeout=session_timeout, max_batch=50)
        async with consumer:
            with open(out, "a", buffering=1) as sink:
                sink.write(f"{os.getpid()} ready\n")
                while True:
                    batch = await consumer.fetch(timeout=0.5)
                    if batch is None:
                        continue
                    for r in batch.records:
                        sink.write(f"{os.getpid()} {r.partition} {r.offset} {r.value.decode()}\n")
                    sink.flush()
                    os.fsync(sink.fileno())
                    await consumer.commit(batch)


if __name__ == "__main__":
    url, group, topic, out, session = sys.argv[1:6]
    asyncio.run(run(url, group, topic, out, float(session)))
