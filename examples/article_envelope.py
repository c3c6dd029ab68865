"""The article's producer, written as the article writes it, talking to a tidings service.

    python -m examples.article_envelope                  # embedded broker in ./.tidings/article/
    TIDINGS_BROKER=kafka://127.0.0.1:59092 python -m examples.article_envelope    # on Kafka

The producer is not tidings: like the article's `producer.send` (kafkajs), it writes the JSON
envelope `{"eventType", "eventId", "timestamp", "version", "data"}` keyed by the order id, with
`correlation-id` and `source` headers - with confluent-kafka on Kafka, with the embedded broker's
raw `publish` otherwise. The inventory service is a tidings service: its handler receives the
order system's typed `OrderPlaced` - version 2, upcast from the article's version 1 (USD) - its
inbox makes a resent record harmless, and the INVENTORY_RESERVED it publishes through its outbox
continues the article's correlation id, with the article's eventId as its causation id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from examples.orders.events import INVENTORY_EVENTS, ORDER_EVENTS, InventoryReserved, OrderPlaced
from tidings import Context, Message, Service, connect

ORDER_TOPIC = ORDER_EVENTS
INVENTORY_TOPIC = INVENTORY_EVENTS


def article_message(
    order_id: str, correlation_id: str
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) exactly as the article's Order Service sends them."""
    value = {
        "eventType": "ORDER_PLACED",
        "eventId": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "version": 1,
        "data": {
            "orderId": order_id,
            "userId": "ada",
            "items": [{"productId": "mouse", "quantity": 2, "price": 19.5}],
            "total": 39.0,
        },
    }
    headers = [("correlation-id", correlation_id.encode()), ("source", b"order-service")]
    return order_id.encode(), json.dumps(value).encode(), headers


async def produce_like_the_article(
    broker_url: str, topic: str, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Send `messages` with a plain producer: confluent-kafka on Kafka, the raw publish of the
    embedded broker otherwise (no tidings envelope either way)."""
    if broker_url.startswith("kafka://"):
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": urlsplit(broker_url).netloc})
        for key, value, headers in messages:
            kafka_headers: list[tuple[str, str | bytes | None]] = list(headers)
            producer.produce(topic, value=value, key=key, headers=kafka_headers)
        if producer.flush(30) != 0:
            raise RuntimeError("the Kafka producer could not deliver every message")
        return
    broker = connect(broker_url)
    try:
        await broker.publish(
            topic, [Message(value=value, key=key, headers=tuple(h)) for key, value, h in messages]
        )
    finally:
        await broker.close()


def inventory_service(
    broker_url: str,
    store_url: str,
    *,
    name: str = "inventory-service",
    orders_topic: str = ORDER_TOPIC,
    inventory_topic: str = INVENTORY_TOPIC,
) -> Service:
    service = Service(
        name,
        broker=broker_url,
        store=store_url,
        topics={orders_topic: 4, inventory_topic: 4},
        migrations=["CREATE TABLE reservations (order_id TEXT PRIMARY KEY, units INTEGER)"],
    )

    @service.handler(orders_topic)
    async def reserve(event: OrderPlaced, ctx: Context) -> None:
        units = sum(item.quantity for item in event.items)
        await ctx.execute(
            "INSERT INTO reservations(order_id, units) VALUES (?, ?)", (event.order_id, units)
        )
        reserved = InventoryReserved(
            order_id=event.order_id,
            user_id=event.user_id,
            items=event.items,
            total=event.total,
            currency=event.currency,
        )
        ctx.publish(inventory_topic, reserved)

    return service


async def run(
    broker_url: str,
    store_url: str,
    count: int = 3,
    *,
    name: str = "inventory-service",
    orders_topic: str = ORDER_TOPIC,
    inventory_topic: str = INVENTORY_TOPIC,
) -> list[tuple[str, int]]:
    """Start the inventory service, send `count` orders the article's way (the first one
    twice, as a producer retry would), wait until each is reserved; returns the reservations."""
    service = inventory_service(
        broker_url,
        store_url,
        name=name,
        orders_topic=orders_topic,
        inventory_topic=inventory_topic,
    )
    await service.start()
    task = await service.run_in_background()
    try:
        messages = [article_message(f"ord-{n}", f"checkout-{n}") for n in range(count)]
        await produce_like_the_article(broker_url, orders_topic, messages + messages[:1])
        while True:
            rows = await service.store.query(
                "SELECT order_id, units FROM reservations ORDER BY order_id"
            )
            if len(rows) >= count:
                return [(str(order), int(units)) for order, units in rows]
            await asyncio.sleep(0.05)
    finally:
        service.stop()
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default=os.environ.get("TIDINGS_BROKER"))
    parser.add_argument("--store", default=os.environ.get("TIDINGS_STORE"))
    parser.add_argument("--orders", type=int, default=3)
    args = parser.parse_args()
    broker = args.broker or "sqlite:///.tidings/article/bus.db"
    store = (args.store or "sqlite:///.tidings/article/{service}.db").replace(
        "{service}", "inventory-service"
    )
    for order, units in asyncio.run(run(broker, store, args.orders)):
        print(f"{order}: {units} units reserved")


if __name__ == "__main__":
    main()
