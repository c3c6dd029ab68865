"""Analytics service: consumes every topic with one `Event`-annotated handler and keeps
counters per event type and revenue per minute (from PAYMENT_CHARGED). It takes events as they
come, of any version: one whose data it cannot read is counted, not failed."""

from __future__ import annotations

from examples.orders.events import TOPICS
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
]


def create(settings: Settings) -> Service:
    service = Service(
        NAME,
        broker=settings.broker,
        store=settings.store,
        migrations=MIGRATIONS,
        retry=settings.retry,
    )

    @service.handler(*TOPICS)
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

    return service
