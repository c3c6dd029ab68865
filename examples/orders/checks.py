"""The order system's invariants, checked against every service's own database and the log."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from examples.orders.services import orders
from tidings import (
    Broker,
    CanRead,
    DecodeError,
    Service,
    TopicPartition,
    event_from_record,
    require,
)
from tidings.dlq import list_dead_letters


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


class LogCounter:
    """Counts the distinct events in the log per (topic, type), reading only what is new each
    time. A relay may publish an event twice (at-least-once); it is one event. Records that do
    not decode into an event (a hostile producer's) are no events."""

    def __init__(self, broker: Broker, topics: tuple[str, ...]) -> None:
        self.broker = broker
        self.topics = topics
        self.positions: dict[TopicPartition, int] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.seen: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    async def refresh(self) -> Counter[tuple[str, str]]:
        """The counts so far. Safe to call from several tasks."""
        async with self._lock:
            await self._read_new()
        return self.counts

    async def _read_new(self) -> None:
        for topic in self.topics:
            info = await self.broker.admin.describe_topic(topic)
            for p in info.partitions:
                tp = TopicPartition(topic, p.partition)
                offset = max(self.positions.get(tp, p.start_offset), p.start_offset)
                while offset < p.end_offset:
                    records = await require(self.broker, CanRead, "read the log").read(
                        tp, offset, 1000
                    )
                    if not records:
                        break
                    for record in records:
                        try:
                            event = event_from_record(record)
                        except DecodeError:
                            continue
                        if (topic, event.id) not in self.seen:
                            self.seen.add((topic, event.id))
                            self.counts[(topic, event.type)] += 1
                    offset = records[-1].offset + 1
                self.positions[tp] = offset


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
    detail = ""
    if total_dead:
        letters = await list_dead_letters(log.broker)
        detail = f"{dict(dead)}; " + "; ".join(
            f"{letter.handler} at {letter.origin}: {letter.reason} after {letter.attempts}"
            f" attempt(s): {letter.exception}: {letter.message}"
            for letter in letters[:3]
        )
    checks.append(Check("no dead letters", not total_dead, detail))
    return checks


def _mailbox_orders(mailbox: Path) -> list[str]:
    return [p.stem for p in mailbox.glob("*.eml")] if mailbox.is_dir() else []


async def dead_letters(broker: Broker, services: dict[str, Service]) -> Counter[str]:
    result: Counter[str] = Counter()
    for service in services.values():
        info = await broker.admin.describe_topic(service.dead_letter_topic)
        result[service.dead_letter_topic] = info.records
    return result
