"""The producer side of `python -m bench kafka`'s PostgreSQL pipeline, in its own process.

Not a benchmark module (leading `_`). Run by `bench/kafka.py` as `python -m bench._pg_producer
NAME KAFKA_URL STORE_URL TOPIC PARTITIONS`: it starts a producer `Service` (PostgreSQL store,
Kafka broker; its relay runs here too) and prints `ready`. Then, per line on stdin:
`publish N` publishes N pre-built events in transactions of 100 `ctx.publish` and prints
`published SECONDS`; `stop` (or end of input) stops the service and prints `relayed COUNT`
(events its relay published, counted once the service has stopped).
In production a producer and its consumers are different services, so different processes:
the benchmark's consumer process runs only the consumer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bench.pipeline import build_pool, start_service, stop_services
from tidings.service import Service

TX_EVENTS = 100


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(name: str, broker: str, store: str, topic: str, partitions: int) -> None:
    producer = Service(name, broker=broker, store=store, topics={topic: partitions})
    pool, _ = build_pool(name)
    index = 0

    async def publish(total: int) -> None:
        nonlocal index
        for _ in range(total // TX_EVENTS):
            if index + TX_EVENTS > len(pool):
                index = 0
            models: list[Any] = pool[index : index + TX_EVENTS]
            async with producer.transaction() as ctx:
                for model in models:
                    ctx.publish(topic, model, key=model.order_id)
            index += TX_EVENTS

    task = await start_service(producer)
    _say("ready")
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "stop":
                break
            if line[0] == "publish" and len(line) == 2 and line[1].isdigit():
                start = time.perf_counter()
                await publish(int(line[1]))
                _say(f"published {time.perf_counter() - start:.6f}")
            else:
                _say(f"error unknown command {' '.join(line)!r}")
    finally:
        runner = producer.runner
        await stop_services([producer], [task])
        _say(f"relayed {runner.relay.published if runner else 0}")


if __name__ == "__main__":
    name, broker, store, topic, partitions = sys.argv[1:6]
    asyncio.run(main(name, broker, store, topic, int(partitions)))
