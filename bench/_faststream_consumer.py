"""FastStream (confluent backend) no-op consumer, run by `bench/kafka.py` in its own venv.

Not a benchmark module (leading `_`): it imports only FastStream, never tidings, and is run as
`<faststream-venv>/bin/python bench/_faststream_consumer.py BOOTSTRAP TOPIC GROUP TOTAL
MAX_RECORDS [SETTINGS]` (SETTINGS: a JSON object of librdkafka settings, the same fetch settings
the other consumers of the benchmark use).
It consumes TOTAL events with a batch subscriber (`max_records=1000`), a decoder that hands the
raw bodies over (no JSON decoding, like the tidings and raw loops), a no-op handler, and
`AckPolicy.ACK` (auto-commit off; FastStream commits after the handler returns). FastStream's
per-message logging is turned off (`logger=None`), as tidings and the raw loop log nothing.
Prints one JSON line: events, seconds (first batch received -> last), events_per_s, versions.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from importlib import metadata
from typing import Any


async def main(
    bootstrap: str, topic: str, group: str, total: int, max_records: int, settings: dict[str, Any]
) -> dict[str, Any]:
    from faststream import AckPolicy  # type: ignore[import-not-found]
    from faststream.confluent import KafkaBroker  # type: ignore[import-not-found]

    broker = KafkaBroker(bootstrap, logger=None, config=settings or None)
    state: dict[str, Any] = {"received": 0, "first": None, "first_n": 0, "last": None}
    done = asyncio.Event()

    async def raw_bodies(msg: Any) -> Any:
        return msg.body

    @broker.subscriber(
        topic,
        group_id=group,
        auto_offset_reset="earliest",
        batch=True,
        max_records=max_records,
        ack_policy=AckPolicy.ACK,
        decoder=raw_bodies,
    )  # type: ignore[untyped-decorator]
    async def handle(bodies: Any) -> None:  # no-op handler
        n = len(bodies)
        now = time.perf_counter()
        if state["first"] is None:
            state["first"], state["first_n"] = now, n
        state["received"] += n
        state["last"] = now
        if state["received"] >= total:
            done.set()

    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), 300)
    finally:
        await broker.stop()
    seconds = state["last"] - state["first"]
    timed = state["received"] - state["first_n"]
    return {
        "events": state["received"],
        "timed_events": timed,
        "seconds": seconds,
        "events_per_s": timed / seconds if seconds > 0 else None,
        "faststream": metadata.version("faststream"),
        "confluent_kafka": metadata.version("confluent-kafka"),
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    bootstrap, topic, group, total, max_records = sys.argv[1:6]
    settings = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
    result = asyncio.run(main(bootstrap, topic, group, int(total), int(max_records), settings))
    print(json.dumps(result), flush=True)
