"""`make demo`: a short walk-through of the embedded event log.

Publishes a stream of ORDER_PLACED events to `order-events` in `.tidings/demo.db`, consumes
them with two independent consumer groups (each receives everything, in per-order sequence),
and prints what happened: throughput, per-partition placement and each group's lag. The
article's full order system replaces this walk-through in a later release.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tidings import Broker, Event, connect, event_from_record

TOPIC = "order-events"
console = Console()


def order_events(count: int, *, seed: int = 7) -> list[Event]:
    """ORDER_PLACED events in both versions of the article's schema."""
    rng = random.Random(seed)
    events = []
    for n in range(count):
        order_id = f"order-{n:06d}"
        data: dict[str, object] = {
            "orderId": order_id,
            "userId": f"user-{rng.randrange(100)}",
            "items": [{"productId": f"sku-{rng.randrange(20)}", "quantity": 1, "price": 9.5}],
            "total": 9.5,
        }
        version = 1 if n % 2 else 2
        if version == 2:
            data["currency"] = "EUR"
        events.append(
            Event(
                type="ORDER_PLACED",
                version=version,
                key=order_id,
                source="order-service",
                data=data,
            )
        )
    return events


async def consume(broker: Broker, group: str, expected: int) -> dict[str, int]:
    """Consume `expected` events as `group`; count them by version."""
    by_version: dict[str, int] = {}
    seen = 0
    async with broker.subscribe(group, [TOPIC]) as consumer:
        while seen < expected:
            batch = await consumer.fetch(timeout=10)
            if batch is None:
                raise RuntimeError(f"{group}: stalled after {seen} of {expected} events")
            for record in batch.records:
                event = event_from_record(record)
                label = f"{event.type} v{event.version}"
                by_version[label] = by_version.get(label, 0) + 1
            seen += len(batch)
            await consumer.commit(batch)
    return by_version


async def run(directory: Path, count: int) -> None:
    url = f"sqlite:///{directory / 'demo.db'}"
    console.print(f"[bold]tidings demo[/] - embedded event log at [cyan]{url}[/]")
    async with connect(url) as broker:
        await broker.admin.create_topic(TOPIC, partitions=4, exist_ok=True)
        events = order_events(count)
        started = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("publishing ORDER_PLACED", total=count)
            for start in range(0, count, 500):
                chunk = events[start : start + 500]
                await broker.publish_events(TOPIC, chunk)
                progress.advance(task, len(chunk))
        elapsed = time.perf_counter() - started
        console.print(f"published {count} events in {elapsed * 1000:.0f} ms (durable, fsync'd)")

        started = time.perf_counter()
        inventory, analytics = await asyncio.gather(
            consume(broker, "inventory-service", count),
            consume(broker, "analytics-service", count),
        )
        elapsed = time.perf_counter() - started
        console.print(f"two consumer groups each received all {count} events in {elapsed:.2f}s")

        table = Table(title="received by version")
        table.add_column("event")
        table.add_column("inventory-service", justify="right")
        table.add_column("analytics-service", justify="right")
        for label in sorted(inventory):
            table.add_row(label, str(inventory[label]), str(analytics.get(label, 0)))
        console.print(table)

        topic = await broker.admin.describe_topic(TOPIC)
        lag = Table(title=f"{TOPIC}: partitions and consumer lag")
        lag.add_column("partition", justify="right")
        lag.add_column("end offset", justify="right")
        for group in ("inventory-service", "analytics-service"):
            lag.add_column(f"{group} lag", justify="right")
        groups = [
            await broker.admin.describe_group(g) for g in ("inventory-service", "analytics-service")
        ]
        for part in topic.partitions:
            lags = [
                next(p.lag for p in g.partitions if p.partition == part.partition) for g in groups
            ]
            lag.add_row(str(part.partition), str(part.end_offset), *map(str, lags))
        console.print(lag)
    console.print(
        "Look around with the CLI:\n"
        f"  .venv/bin/tidings --broker {url} topics describe {TOPIC}\n"
        f"  .venv/bin/tidings --broker {url} groups describe inventory-service\n"
        f"  .venv/bin/tidings --broker {url} tail {TOPIC} --from earliest --limit 5",
        soft_wrap=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".tidings"), help="data directory")
    parser.add_argument("--events", type=int, default=10_000, help="events to publish")
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be >= 1")
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args.dir, args.events))


if __name__ == "__main__":
    main()
