"""Run the whole order system in one process: `python -m examples.orders [--orders N] [--exit]`.

Starts every service (consumers and outbox relay each) as asyncio tasks, seeds the inventory,
places sample orders (ORDER_PLACED v1 and v2, some for an out-of-stock product, some declined by
the payment gateway), waits until every order is final, prints a summary and checks the
invariants. With `--exit` it then stops and exits 1 naming any invariant that failed; without
it, it keeps running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from examples.orders.events import TOPICS, Item
from examples.orders.services import build_all, inventory, orders
from examples.orders.settings import Settings
from tidings import Broker, Service, TopicPartition, connect, event_from_record

# product id -> (price, initial stock). `limited-edition` is sold out from the start; the
# `monitor` runs out during a few hundred orders.
CATALOG: dict[str, tuple[float, int]] = {
    "keyboard": (49.0, 10_000),
    "mouse": (19.5, 10_000),
    "headset": (89.0, 10_000),
    "cable": (5.25, 50_000),
    "monitor": (199.0, 150),
    "limited-edition": (999.0, 0),
}
OUT_OF_STOCK_SHARE = 0.08


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SampleOrder:
    order_id: str
    user_id: str
    items: list[Item]
    currency: str
    discount_code: str | None
    event_version: int


def sample_orders(count: int, *, first: int = 0, seed: int = 7) -> list[SampleOrder]:
    rng = random.Random(seed + first)
    regular = [p for p, (_, stock) in CATALOG.items() if stock > 0]
    result = []
    for n in range(first, first + count):
        products = rng.sample(regular, rng.randint(1, 3))
        if rng.random() < OUT_OF_STOCK_SHARE:
            products.append("limited-edition")
        items = [
            Item(product_id=p, quantity=rng.randint(1, 3), price=CATALOG[p][0]) for p in products
        ]
        version = 1 if n % 3 == 0 else 2
        result.append(
            SampleOrder(
                order_id=f"ord-{n:06d}",
                user_id=f"user-{rng.randrange(50):03d}",
                items=items,
                currency=rng.choice(["USD", "EUR", "GBP"]),
                discount_code=rng.choice([None, None, "SAVE10", "WELCOME5"]),
                event_version=version,
            )
        )
    return result


class LogCounter:
    """Counts the events in the log per (topic, type), reading only what is new each time."""

    def __init__(self, broker: Broker, topics: tuple[str, ...]) -> None:
        self.broker = broker
        self.topics = topics
        self.positions: dict[TopicPartition, int] = {}
        self.counts: Counter[tuple[str, str]] = Counter()

    async def refresh(self) -> Counter[tuple[str, str]]:
        for topic in self.topics:
            info = await self.broker.admin.describe_topic(topic)
            for p in info.partitions:
                tp = TopicPartition(topic, p.partition)
                offset = max(self.positions.get(tp, p.start_offset), p.start_offset)
                while offset < p.end_offset:
                    records = await self.broker.read(tp, offset, 1000)
                    if not records:
                        break
                    for record in records:
                        self.counts[(topic, event_from_record(record).type)] += 1
                    offset = records[-1].offset + 1
                self.positions[tp] = offset
        return self.counts


async def _ids(service: Service, sql: str) -> list[str]:
    return [str(row[0]) for row in await service.store.query(sql)]


def _same(name: str, expected: set[str], got: list[str]) -> Check:
    duplicates = len(got) - len(set(got))
    missing, extra = expected - set(got), set(got) - expected
    ok = not duplicates and not missing and not extra
    detail = "" if ok else f"missing {len(missing)}, extra {len(extra)}, duplicates {duplicates}"
    if missing or extra:
        detail += f" (e.g. {sorted(missing | extra)[:3]})"
    return Check(name, ok, detail)


async def check_invariants(
    services: dict[str, Service], log: LogCounter, mailbox: Path
) -> list[Check]:
    orders_db = services["orders"].store
    statuses = dict(
        (row[0], row[1]) for row in await orders_db.query("SELECT id, status FROM orders")
    )
    confirmed = {o for o, s in statuses.items() if s == "CONFIRMED"}
    unsuccessful = {o for o, s in statuses.items() if s in ("REJECTED", "CANCELLED")}
    pending = [o for o, s in statuses.items() if s not in orders.FINAL]
    checks = [
        Check(
            "every order is CONFIRMED, REJECTED or CANCELLED",
            not pending,
            f"{len(pending)} not final (e.g. {pending[:3]})" if pending else "",
        )
    ]

    inv = services["inventory"].store
    stock = {
        row[0]: (row[1], row[2])
        for row in await inv.query("SELECT product_id, initial, available FROM stock")
    }
    held: Counter[str] = Counter()
    for product_id, quantity in await inv.query(
        "SELECT product_id, quantity FROM reservations WHERE status = 'RESERVED'"
    ):
        held[product_id] += quantity
    broken = [
        f"{p}: {initial} != {available} + {held[p]}"
        for p, (initial, available) in stock.items()
        if initial != available + held[p] or available < 0
    ]
    reserved_for = await _ids(
        services["inventory"],
        "SELECT DISTINCT order_id FROM reservations WHERE status = 'RESERVED'",
    )
    checks.append(
        Check("stock conserved (initial = available + reserved)", not broken, "; ".join(broken))
    )
    checks.append(
        _same("stock stays reserved exactly for confirmed orders", confirmed, reserved_for)
    )

    charged = await _ids(
        services["payment"], "SELECT order_id FROM charges WHERE status = 'CHARGED'"
    )
    checks.append(_same("each confirmed order charged exactly once", confirmed, charged))
    wrongly = sorted(unsuccessful & set(charged))
    checks.append(
        Check("rejected/cancelled orders never charged", not wrongly, ", ".join(wrongly[:5]))
    )
    checks.append(
        _same(
            "each confirmed order emailed exactly once",
            confirmed,
            await _ids(services["email"], "SELECT order_id FROM emails"),
        )
    )
    files = await asyncio.to_thread(_mailbox_orders, mailbox)
    checks.append(_same("one mailbox file per confirmed order", confirmed, files))
    checks.append(
        _same(
            "loyalty points exactly once per confirmed order",
            confirmed,
            await _ids(services["loyalty"], "SELECT order_id FROM points"),
        )
    )
    checks.append(
        _same(
            "fulfillment started exactly once per confirmed order",
            confirmed,
            await _ids(services["fulfillment"], "SELECT order_id FROM shipments"),
        )
    )
    in_log = await log.refresh()
    counted = Counter(
        {
            (row[0], row[1]): int(row[2])
            for row in await services["analytics"].store.query(
                "SELECT topic, event_type, n FROM counters"
            )
        }
    )
    diff = sorted(set(in_log.items()) ^ set(counted.items()))
    checks.append(
        Check(
            "analytics counts equal the events in the log", not diff, str(diff[:4]) if diff else ""
        )
    )
    dead = await dead_letters(log.broker, services)
    total_dead = sum(dead.values())
    checks.append(Check("no dead letters", not total_dead, str(dict(dead)) if total_dead else ""))
    return checks


def _mailbox_orders(mailbox: Path) -> list[str]:
    return [p.stem for p in mailbox.glob("*.eml")] if mailbox.is_dir() else []


async def dead_letters(broker: Broker, services: dict[str, Service]) -> Counter[str]:
    result: Counter[str] = Counter()
    for service in services.values():
        info = await broker.admin.describe_topic(service.dead_letter_topic)
        result[service.dead_letter_topic] = info.records
    return result


async def start_all(services: dict[str, Service]) -> list[asyncio.Task[None]]:
    tasks = []
    for service in services.values():
        task = asyncio.create_task(service.run(install_signal_handlers=False), name=service.name)
        tasks.append(task)
        while service.runner is None or not service.runner.ready.is_set():
            if task.done():
                task.result()
                raise RuntimeError(f"service {service.name} stopped while starting")
            await asyncio.sleep(0.01)
    return tasks


async def stop_all(services: dict[str, Service], tasks: list[asyncio.Task[None]]) -> None:
    for service in services.values():
        service.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def place_all(service: Service, samples: list[SampleOrder], console: Console) -> None:
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("placing orders", total=len(samples))
        for start in range(0, len(samples), 16):
            chunk = samples[start : start + 16]
            await asyncio.gather(
                *(
                    orders.place_order(
                        service,
                        order_id=s.order_id,
                        user_id=s.user_id,
                        items=s.items,
                        currency=s.currency,
                        discount_code=s.discount_code,
                        event_version=s.event_version,
                        correlation_id=f"demo-{s.order_id}",
                    )
                    for s in chunk
                )
            )
            progress.advance(bar, len(chunk))


async def summary(
    services: dict[str, Service], log: LogCounter, checks: list[Check], console: Console
) -> None:
    by_status = await services["orders"].store.query(
        "SELECT status, count(*), round(sum(total), 2) FROM orders GROUP BY status ORDER BY status"
    )
    table = Table(title="orders by status")
    for column in ("status", "orders", "total"):
        table.add_column(column)
    for status, count, total in by_status:
        table.add_row(str(status), str(count), f"{total:.2f}")
    console.print(table)

    events = Table(title="events per topic")
    for column in ("topic", "type", "events"):
        events.add_column(column)
    for (topic, event_type), count in sorted((await log.refresh()).items()):
        events.add_row(topic, event_type, str(count))
    console.print(events)

    groups = Table(title="consumers")
    for column in ("group", "lag (committed offsets)", "dead letters"):
        groups.add_column(column)
    dead = await dead_letters(log.broker, services)
    for name, service in services.items():
        info = await log.broker.admin.describe_group(name)
        groups.add_row(name, str(info.lag), str(dead[service.dead_letter_topic]))
    console.print(groups)

    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name}" + (f": {check.detail}" if check.detail else ""))


async def main_async(args: argparse.Namespace) -> int:
    console = Console()
    data = Path(args.dir)
    settings = Settings.in_directory(data, payment_failure_rate=args.failure_rate)
    services = build_all(settings)
    assert settings.broker is not None
    started = time.monotonic()
    tasks = await start_all(services)
    try:
        async with connect(settings.broker) as broker:
            log = LogCounter(broker, TOPICS)
            await inventory.seed(
                services["inventory"], {p: stock for p, (_, stock) in CATALOG.items()}
            )
            first = len(await services["orders"].store.query("SELECT id FROM orders"))
            samples = sample_orders(args.orders, first=first, seed=args.seed)
            await place_all(services["orders"], samples, console)
            placed = time.monotonic()
            console.print(f"placed {len(samples)} orders in {placed - started:.2f} s")
            deadline = time.monotonic() + args.timeout
            with console.status("waiting for every order to settle"):
                while True:
                    checks = await check_invariants(services, log, settings.mailbox)
                    if all(c.ok for c in checks) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
            console.print(f"settled in {time.monotonic() - placed:.2f} s after the last order")
            await summary(services, log, checks, console)
            failed = [c for c in checks if not c.ok]
            if args.exit:
                if failed:
                    console.print(f"[red]invariants failed: {', '.join(c.name for c in failed)}")
                    return 1
                console.print("[green]all invariants hold")
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            console.print("services running; Ctrl-C to stop")
            await stop.wait()
            return 1 if failed else 0
    finally:
        with contextlib.suppress(Exception):
            await stop_all(services, tasks)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.orders", description=__doc__)
    parser.add_argument("--orders", type=int, default=200, help="sample orders to place")
    parser.add_argument("--exit", action="store_true", help="check invariants and exit")
    parser.add_argument("--dir", default=".tidings", help="data directory (default .tidings)")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="payment declines")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to settle")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(main_async(args))
