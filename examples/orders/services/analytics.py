"""Analytics service: consumes every topic with one `Event`-annotated handler and keeps
counters per event type, revenue per minute (from PAYMENT_CHARGED), orders placed per minute and
units sold per product (from ORDER_PLACED). It takes events as they come, of any version: one
whose data it cannot read is counted, not failed. `dashboard` turns those tables into the
console's dashboard document (served at `GET /analytics/dashboard`).

Its tables are a projection of the log, so they can be rebuilt from it: `clear` is the
handler's reset hook, and `service` (configured by `TIDINGS_BROKER` / `TIDINGS_STORE`) is what
`tidings rebuild examples.orders.services.analytics:service track` loads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from examples.orders.events import ORDER_EVENTS, TOPICS
from examples.orders.settings import Settings
from tidings import Context, Event, Service

NAME = "analytics"

MIGRATIONS = [
    """CREATE TABLE counters (
        topic TEXT NOT NULL,
        event_type TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (topic, event_type)
    );
    CREATE TABLE revenue (
        minute TEXT NOT NULL,
        currency TEXT NOT NULL,
        amount REAL NOT NULL,
        orders INTEGER NOT NULL,
        PRIMARY KEY (minute, currency)
    )""",
    """CREATE TABLE placed (
        minute TEXT NOT NULL,
        currency TEXT NOT NULL,
        orders INTEGER NOT NULL,
        amount REAL NOT NULL,
        PRIMARY KEY (minute, currency)
    );
    CREATE TABLE products (
        product_id TEXT PRIMARY KEY,
        quantity INTEGER NOT NULL,
        orders INTEGER NOT NULL
    )""",
]
DASHBOARD_MINUTES = 30
FINAL = ("ORDER_CONFIRMED", "ORDER_REJECTED", "ORDER_CANCELLED")
TABLES = ("counters", "revenue", "placed", "products")


async def clear(ctx: Context) -> None:
    """The reset hook: empty every table the handler fills. Counters over all time cannot be
    cleared from a point in time, so it takes no `since`: rebuilt from the beginning only."""
    for table in TABLES:
        await ctx.execute(f"DELETE FROM {table}")  # noqa: S608 (names from TABLES)


def create(settings: Settings) -> Service:
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        retry=settings.retry,
    )

    # every event adds to a few shared counter rows: one lock keeps concurrent transactions
    # from deadlocking on them (see inventory)
    @service.handler(*TOPICS, reset=clear, locks="counters")
    async def track(event: Event, ctx: Context) -> None:
        topic = ctx.position[0] if ctx.position else "?"
        ctx.defer(
            "INSERT INTO counters(topic, event_type, n) VALUES (?, ?, 1)"
            " ON CONFLICT(topic, event_type) DO UPDATE SET n = counters.n + 1",
            (topic, event.type),
        )
        data = event.data if isinstance(event.data, dict) else {}
        amount = data.get("amount")
        if event.type == "PAYMENT_CHARGED" and isinstance(amount, int | float):
            currency = str(data.get("currency", "?"))
            ctx.defer(
                "INSERT INTO revenue(minute, currency, amount, orders) VALUES (?, ?, ?, 1)"
                " ON CONFLICT(minute, currency) DO UPDATE SET"
                " amount = revenue.amount + excluded.amount, orders = revenue.orders + 1",
                (event.time.strftime("%Y-%m-%dT%H:%M"), currency, float(amount)),
            )
        if event.type == "ORDER_PLACED":
            _track_placed(ctx, event, data)

    return service


def _track_placed(ctx: Context, event: Event, data: dict[str, Any]) -> None:
    """Orders per minute and units per product; v1 orders (no currency) were in USD."""
    total = data.get("total")
    currency = data.get("currency") if event.version > 1 else "USD"
    ctx.defer(
        "INSERT INTO placed(minute, currency, orders, amount) VALUES (?, ?, 1, ?)"
        " ON CONFLICT(minute, currency) DO UPDATE SET"
        " orders = placed.orders + 1, amount = placed.amount + excluded.amount",
        (
            event.time.strftime("%Y-%m-%dT%H:%M"),
            str(currency or "?"),
            float(total) if isinstance(total, int | float) else 0.0,
        ),
    )
    items = data.get("items")
    for item in items if isinstance(items, list) else []:
        product, quantity = item.get("productId"), item.get("quantity")
        if isinstance(product, str) and isinstance(quantity, int):
            ctx.defer(
                "INSERT INTO products(product_id, quantity, orders) VALUES (?, ?, 1)"
                " ON CONFLICT(product_id) DO UPDATE SET"
                " quantity = products.quantity + excluded.quantity, orders = products.orders + 1",
                (product, quantity),
            )


async def dashboard(service: Service, now: datetime | None = None) -> dict[str, Any]:
    """The live order dashboard as the console's dashboard document: orders and revenue per
    minute (by currency) over the last half hour, the status mix, the top products."""
    now = now or datetime.now(UTC)
    minutes = [
        (now - timedelta(minutes=back)).strftime("%Y-%m-%dT%H:%M")
        for back in range(DASHBOARD_MINUTES - 1, -1, -1)
    ]
    since = minutes[0]
    store = service.store
    placed = await store.query(
        "SELECT minute, currency, orders FROM placed WHERE minute >= ?", (since,)
    )
    revenue = await store.query(
        "SELECT minute, currency, amount FROM revenue WHERE minute >= ?", (since,)
    )
    rows = await store.query("SELECT event_type, n FROM counters WHERE topic = ?", (ORDER_EVENTS,))
    counters: dict[str, int] = {str(t): int(n) for t, n in rows}
    products = await store.query(
        "SELECT product_id, quantity FROM products ORDER BY quantity DESC, product_id LIMIT 8"
    )
    per_minute = dict.fromkeys(minutes, 0)
    for minute, _, orders in placed:
        per_minute[minute] = per_minute.get(minute, 0) + int(orders)
    by_currency: dict[str, dict[str, float]] = {}
    for minute, currency, amount in revenue:
        by_currency.setdefault(str(currency), {})[str(minute)] = round(float(amount), 2)
    total = int(counters.get("ORDER_PLACED", 0))
    finals = {name: int(counters.get(name, 0)) for name in FINAL}
    mix = [("PENDING", max(0, total - sum(finals.values())))]
    mix += [(name.removeprefix("ORDER_"), count) for name, count in finals.items()]
    labels = [m[11:] for m in minutes]
    current = minutes[-1]
    revenue_now = [
        {
            "kind": "stat",
            "title": f"Revenue this minute, {currency}",
            "value": amounts.get(current, 0.0),
            "unit": currency,
        }
        for currency, amounts in sorted(by_currency.items())
    ]
    return {
        "title": "Orders, live",
        "note": "fed by the analytics service (its own tables, filled from the events)",
        "panels": [
            {"kind": "stat", "title": "Orders placed", "value": total, "unit": "orders"},
            {
                "kind": "stat",
                "title": "Orders this minute",
                "value": per_minute[current],
                "unit": "orders",
                "note": f"{current[11:]} UTC",
            },
            *revenue_now,
            {
                "kind": "series",
                "title": "Orders per minute",
                "unit": "orders",
                "labels": labels,
                "series": {"orders": [per_minute[m] for m in minutes]},
            },
            {
                "kind": "series",
                "title": "Revenue per minute by currency",
                "labels": labels,
                "series": {
                    currency: [amounts.get(m, 0.0) for m in minutes]
                    for currency, amounts in sorted(by_currency.items())
                },
            },
            {"kind": "bars", "title": "Status mix", "unit": "orders", "bars": mix},
            {
                "kind": "bars",
                "title": "Top products",
                "unit": "units",
                "bars": [(str(p), int(q)) for p, q in products],
            },
        ],
    }


service = create(Settings())
"""The service as the environment configures it, for `tidings rebuild` (and `tidings run`)."""
