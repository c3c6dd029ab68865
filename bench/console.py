"""`python -m bench console`: the web console's page times and memory on a big embedded log.

Seeds one SQLite broker (in big batches) with `--records` records: order flows of four events
(ORDER_PLACED -> INVENTORY_RESERVED -> PAYMENT_CHARGED -> ORDER_CONFIRMED, chained by causation,
one correlation id and key per order) over the three topics of the order system, four
partitions each; `--dead-letters` dead letters in `inventory.dlq` (a tenth of them purged, so
the resolutions topic is not empty); and the seven services' consumer groups with committed
offsets part-way (so every group lags). Then it starts `tidings console` as its own process,
waits until its event index has read the whole log (`index_build_s`), and requests every page
`--requests` times, one at a time, with random ids, offsets and filters.

Metrics, one JSON line each: `page_p95_ms` (and `page_p50_ms`) per page (target p95 <= 250 ms),
`console_rss_mb` (the console process's resident memory at the end) and `console_peak_rss_mb`
(its high-water mark, index build included; target <= 300 MB), `index_build_s`,
`index_records_per_s`, `seed_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench._common import emit, machine, percentile, workdir
from tidings import Event, Message, connect, dlq, ops
from tidings.records import Record, SeekTo

BENCH = "console"
TARGETS = {"page_p95_ms": 250.0, "console_peak_rss_mb": 300.0}
TOPICS = ("order-events", "inventory-events", "payment-events")
GROUPS = ("orders", "inventory", "payment", "email", "analytics", "fulfillment", "loyalty")
SUBSCRIBED = {
    "orders": TOPICS,
    "inventory": ("order-events", "payment-events"),
    "payment": ("inventory-events",),
    "email": ("order-events",),
    "analytics": TOPICS,
    "fulfillment": ("payment-events",),
    "loyalty": ("order-events",),
}
BATCH = 20_000
TOKEN = "bench-console-token"  # noqa: S105


def _flow(n: int, when: datetime) -> list[tuple[str, Event]]:
    order = f"ord-{n:07d}"
    correlation = f"corr-{n:07d}"
    placed = Event(
        type="ORDER_PLACED",
        key=order,
        source="orders",
        correlation_id=correlation,
        time=when,
        data={
            "orderId": order,
            "total": 42.5,
            "currency": "EUR",
            "items": [{"productId": "mouse"}],
        },
    )
    steps = [("order-events", placed)]
    for topic, type_, source in (
        ("inventory-events", "INVENTORY_RESERVED", "inventory"),
        ("payment-events", "PAYMENT_CHARGED", "payment"),
        ("order-events", "ORDER_CONFIRMED", "orders"),
    ):
        when += timedelta(milliseconds=15)
        event = Event(
            type=type_,
            key=order,
            source=source,
            correlation_id=correlation,
            causation_id=steps[-1][1].id,
            time=when,
            data={"orderId": order},
        )
        steps.append((topic, event))
    return steps


async def seed(url: str, records: int, dead_letters: int) -> tuple[int, datetime, datetime]:
    """The log; returns the number of orders and the first and last event times."""
    orders = records // 4
    start = datetime.now(UTC) - timedelta(hours=2)
    spacing = timedelta(hours=2) / max(orders, 1)
    async with connect(url) as broker:
        for topic in TOPICS:
            await broker.admin.create_topic(topic, 4)
        await broker.admin.create_topic("inventory.dlq", 1)
        pending: dict[str, list[Message]] = {t: [] for t in TOPICS}
        letters: list[Message] = []
        for n in range(orders):
            for topic, event in _flow(n, start + spacing * n):
                message = event.to_message()
                pending[topic].append(message)
                if len(letters) < dead_letters and event.type == "ORDER_PLACED" and n % 7 == 0:
                    record = Record(topic, 0, n, 0, message.value, message.key, message.headers)
                    letters.append(
                        dlq.letter(
                            record,
                            reason=dlq.REASON_EXHAUSTED,
                            error=ValueError(f"stock service unreachable for {event.key}"),
                            handler="inventory.reserve",
                            attempts=6,
                        )
                    )
            if sum(len(m) for m in pending.values()) >= BATCH:
                for topic, messages in pending.items():
                    await broker.publish(topic, messages)
                    messages.clear()
        for topic, messages in pending.items():
            if messages:
                await broker.publish(topic, messages)
        for i in range(0, len(letters), BATCH):
            await broker.publish("inventory.dlq", letters[i : i + BATCH])
        listed = await ops.list_dead_letters(broker)
        await ops.purge_dead_letters(broker, listed[: len(listed) // 10])
        for index, group in enumerate(GROUPS):
            info = [await broker.admin.describe_topic(t) for t in SUBSCRIBED[group]]
            behind = min(p.end_offset for i in info for p in i.partitions)
            offset = max(0, behind - 50 * (index + 1))
            await ops.reset_offsets(broker, group, SeekTo(offset=offset), SUBSCRIBED[group])
    return orders, start, start + spacing * orders


def _rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of process `pid` in MB."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def measure(
    base: str, orders: int, first: datetime, last: datetime, letters: int, requests: int
) -> dict[str, list[float]]:
    rng = random.Random(7)
    per_partition = orders // 2  # order-events: two records per order over four partitions

    def order() -> int:
        return rng.randrange(orders)

    def when() -> str:
        moment = first + (last - first) * rng.random()
        return moment.replace(tzinfo=None).isoformat(timespec="seconds")

    pages = {
        "topology": lambda: "/",
        "topics": lambda: "/topics",
        "topic_newest": lambda: "/topics/order-events",
        "topic_offset": lambda: (
            f"/topics/order-events?partition=1&offset={rng.randrange(per_partition)}"
        ),
        "topic_key": lambda: f"/topics/order-events?key=ord-{order():07d}",
        "topic_correlation": lambda: f"/topics/payment-events?correlation=corr-{order():07d}",
        "topic_type": lambda: (
            f"/topics/order-events?partition=2&type=ORDER_CONFIRMED&offset={rng.randrange(per_partition)}"
        ),
        "topic_since": lambda: f"/topics/inventory-events?partition=3&since={when()}",
        "record": lambda: f"/topics/order-events/0/{rng.randrange(per_partition // 2)}",
        "groups": lambda: "/groups",
        "group": lambda: f"/groups/{rng.choice(GROUPS)}",
        "group_lag": lambda: f"/groups/{rng.choice(GROUPS)}/lag",
        "dead_letters": lambda: "/dlq",
        "dead_letters_filtered": lambda: (
            "/dlq?service=inventory&reason=retries-exhausted&handler=reserve"
        ),
        "dead_letters_resolved": lambda: "/dlq?resolved=1",
        "dead_letter": lambda: f"/dlq/inventory.dlq:0:{rng.randrange(letters)}",
        "trace": lambda: f"/trace/corr-{order():07d}",
        "search": lambda: f"/search?q=ord-{order():07d}",
        "dashboard": lambda: "/dashboard",
    }
    times: dict[str, list[float]] = {name: [] for name in pages}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for path in pages.values():  # warm up: templates compiled, caches filled
            await client.get(path())
        for _ in range(requests):
            for name, path in pages.items():
                target = path()
                started = time.perf_counter()
                response = await client.get(target)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code not in (200, 303):
                    raise RuntimeError(f"{target}: {response.status_code} {response.text[:300]}")
                times[name].append(elapsed)
    return times


def start_console(url: str, directory: str) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tidings.cli", "--broker", url, "console", "--port", "0"]
    env = {**os.environ, "TIDINGS_CONSOLE_TOKEN": TOKEN}
    process = subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://[0-9.]+:\d+)/", line)
    if found is None:
        process.kill()
        raise RuntimeError(f"the console did not start: {line!r}")
    return process, found.group(1)


async def wait_for_index(base: str, timeout: float) -> float:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while time.monotonic() - started < timeout:
            page = await client.get("/topics/order-events/0/0")
            if "event index:\nup to date" in page.text or "event index: up to date" in page.text:
                return time.monotonic() - started
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the console's index did not catch up in {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench console", description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dead-letters", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40, help="requests per page")
    parser.add_argument("--dir", default=None, help="parent of the work directory")
    parser.add_argument("--quick", action="store_true", help="20,000 records, for tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.dead_letters, args.requests = 20_000, 500, 5
    with workdir(args.dir, "tidings-bench-console-") as directory:
        machine(BENCH, directory)
        url = f"sqlite:///{Path(directory) / 'bus.db'}?synchronous=normal"
        started = time.perf_counter()
        orders, first, last = asyncio.run(seed(url, args.records, args.dead_letters))
        seed_s = time.perf_counter() - started
        emit(BENCH, "seed_s", seed_s, "s", records=orders * 4, dead_letters=args.dead_letters)
        console_url = f"sqlite:///{Path(directory) / 'bus.db'}"
        process, base = start_console(console_url, directory)
        try:
            build_s = asyncio.run(wait_for_index(base, timeout=1800))
            emit(BENCH, "index_build_s", build_s, "s", records=orders * 4)
            emit(BENCH, "index_records_per_s", orders * 4 / build_s, "records/s")
            times = asyncio.run(
                measure(base, orders, first, last, args.dead_letters, args.requests)
            )
            rss, peak = _rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(30)
        for page, samples in times.items():
            ordered = sorted(samples)
            emit(
                BENCH,
                "page_p95_ms",
                percentile(ordered, 95),
                "ms",
                page=page,
                target=TARGETS["page_p95_ms"],
                requests=len(samples),
            )
            emit(BENCH, "page_p50_ms", percentile(ordered, 50), "ms", page=page)
        emit(BENCH, "console_rss_mb", rss, "MB")
        emit(BENCH, "console_peak_rss_mb", peak, "MB", target=TARGETS["console_peak_rss_mb"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
