"""The demo's live summary: orders by status, events per topic, consumer lag, dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table

from examples.orders.checks import Check, LogCounter, dead_letters
from tidings import CanInspect, Service, require


@dataclass(slots=True)
class Snapshot:
    orders: list[tuple[str, int, float]] = field(default_factory=list)  # status, count, total
    events: dict[tuple[str, str], int] = field(default_factory=dict)
    groups: list[tuple[str, int, int]] = field(default_factory=list)  # group, lag, dead letters


async def take(services: dict[str, Service], log: LogCounter) -> Snapshot:
    """Read the current state from every service's database and the log."""
    rows = await services["orders"].store.query(
        "SELECT status, count(*), sum(total) FROM orders GROUP BY status ORDER BY status"
    )
    dead = await dead_letters(log.broker, services)
    groups = []
    for name, service in services.items():
        info = await require(log.broker.admin, CanInspect, "tell lag").describe_group(name)
        groups.append((name, info.lag, dead[service.dead_letter_topic]))
    return Snapshot(
        orders=[(str(s), int(n), float(t or 0)) for s, n, t in rows],
        events=dict(await log.refresh()),
        groups=groups,
    )


def render(snapshot: Snapshot, headline: str = "", checks: list[Check] | None = None) -> Group:
    orders = Table(title="orders by status", min_width=34)
    for column in ("status", "orders", "total"):
        orders.add_column(column, justify="right" if column != "status" else "left")
    for status, count, total in snapshot.orders:
        orders.add_row(status, str(count), f"{total:,.2f}")

    events = Table(title="events per topic", min_width=52)
    for column in ("topic", "type", "events"):
        events.add_column(column, justify="right" if column == "events" else "left")
    for (topic, event_type), count in sorted(snapshot.events.items()):
        events.add_row(topic, event_type, str(count))

    groups = Table(title="consumers", min_width=44)
    for column in ("group", "lag", "dead letters"):
        groups.add_column(column, justify="left" if column == "group" else "right")
    for name, lag, dead in snapshot.groups:
        groups.add_row(name, str(lag), f"[red]{dead}[/red]" if dead else "0")

    parts: list[RenderableType] = []
    if headline:
        parts.append(headline)
    parts += [orders, events, groups]
    for check in checks or []:
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        parts.append(f"{mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
    return Group(*parts)
