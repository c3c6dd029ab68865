"""Unit tests of the order system's services, one service at a time, written with
`tidings.testing.ServiceHarness` as a user would test their own: deliver an event, then check
the events the service published and the rows it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.orders.events import (
    InventoryReservationFailed,
    InventoryReserved,
    Item,
    OrderConfirmed,
    OrderPlaced,
    OrderPlacedV1,
    PaymentCharged,
    PaymentFailed,
)
from examples.orders.services import email, inventory, loyalty, orders, payment
from examples.orders.settings import Settings

from tidings import Event
from tidings.testing import ServiceHarness


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(mailbox=tmp_path / "mailbox", payment_failure_rate=0.0)


def placed(order_id: str, *items: tuple[str, int]) -> OrderPlaced:
    lines = [Item(product_id=p, quantity=q, price=10.0) for p, q in items]
    total = sum(i.price * i.quantity for i in lines)
    return OrderPlaced(order_id=order_id, user_id="ada", items=lines, total=total, currency="EUR")


async def test_inventory_reserves_all_or_nothing_and_releases_when_payment_fails(
    settings: Settings,
) -> None:
    service = inventory.create(settings)
    async with ServiceHarness(service) as harness:
        await inventory.seed(service, {"mouse": 3, "cable": 1})
        await harness.deliver("order-events", placed("o1", ("mouse", 2), ("cable", 1)))
        await harness.deliver("order-events", placed("o2", ("mouse", 2), ("cable", 1)))
        [reserved] = await harness.published("inventory-events", InventoryReserved)
        assert reserved.order_id == "o1" and reserved.currency == "EUR"
        [rejected] = await harness.published("inventory-events", InventoryReservationFailed)
        assert rejected.order_id == "o2" and "cable" in rejected.reason
        stock = dict(await harness.query("SELECT product_id, available FROM stock"))
        assert stock == {"mouse": 1, "cable": 0}  # o2 took nothing

        await harness.deliver("payment-events", PaymentFailed(order_id="o1", reason="declined"))
        stock = dict(await harness.query("SELECT product_id, available FROM stock"))
        assert stock == {"mouse": 3, "cable": 1}
        assert await harness.dead_letters() == []


async def test_inventory_reads_a_v1_order_through_its_upcaster(settings: Settings) -> None:
    service = inventory.create(settings)
    async with ServiceHarness(service) as harness:
        await inventory.seed(service, {"mouse": 5})
        v1 = OrderPlacedV1(
            order_id="old",
            user_id="bob",
            items=[Item(product_id="mouse", quantity=1, price=2.0)],
            total=2.0,
        )
        await harness.deliver("order-events", v1)
        [reserved] = await harness.published("inventory-events", InventoryReserved)
        assert reserved.currency == "USD"


async def test_an_order_placed_twice_is_reserved_once(settings: Settings) -> None:
    service = inventory.create(settings)
    async with ServiceHarness(service) as harness:
        await inventory.seed(service, {"mouse": 5})
        event = placed("o1", ("mouse", 2)).to_event(key="o1")
        await harness.deliver("order-events", event)
        await harness.deliver("order-events", event)  # a redelivery: the same event id
        assert await harness.query("SELECT available FROM stock") == [(3,)]
        assert len(await harness.published("inventory-events")) == 1
        assert service.stats.duplicates == 1


async def test_payment_charges_or_declines_and_never_charges_twice(tmp_path: Path) -> None:
    for failure_rate, outcome in ((0.0, "CHARGED"), (1.0, "FAILED")):
        service = payment.create(Settings(mailbox=tmp_path, payment_failure_rate=failure_rate))
        async with ServiceHarness(service) as harness:
            reserved = InventoryReserved(
                order_id="o9", user_id="ada", items=[], total=42.5, currency="GBP"
            ).to_event(key="o9")
            await harness.deliver("inventory-events", reserved)
            await harness.deliver("inventory-events", reserved)  # redelivered: the same event
            rows = await harness.query("SELECT status, amount FROM charges")
            assert rows == [(outcome, 42.5)]
            published = await harness.published("payment-events")
            assert [e.type for e in published] == [
                "PAYMENT_CHARGED" if outcome == "CHARGED" else "PAYMENT_FAILED"
            ]
            if outcome == "CHARGED":
                charged = PaymentCharged.from_event(published[0])
                assert charged.amount == 42.5 and charged.currency == "GBP"


async def test_orders_confirm_and_the_confirmation_carries_the_correlation(
    settings: Settings,
) -> None:
    service = orders.create(settings)
    async with ServiceHarness(service) as harness:
        result = await orders.place_order(
            service,
            user_id="ada",
            items=[Item(product_id="mouse", quantity=1, price=19.5)],
            currency="EUR",
            correlation_id="checkout-1",
        )
        await harness.settle()
        [order_placed] = await harness.published("order-events")
        assert order_placed.correlation_id == "checkout-1"
        charged = PaymentCharged(
            order_id=result.order_id, amount=19.5, currency="EUR", charge_id="ch_1"
        ).to_event(key=result.order_id, correlation_id="checkout-1")
        await harness.deliver("payment-events", charged)
        status = await harness.query("SELECT status FROM orders WHERE id = ?", (result.order_id,))
        assert status == [("CONFIRMED",)]
        confirmed = [
            e for e in await harness.published("order-events") if e.type == "ORDER_CONFIRMED"
        ]
        assert len(confirmed) == 1
        assert confirmed[0].correlation_id == "checkout-1"
        assert confirmed[0].causation_id == charged.id
        assert OrderConfirmed.from_event(confirmed[0]).total == 19.5


async def test_email_and_loyalty_act_once_per_confirmed_order(settings: Settings) -> None:
    confirmed = OrderConfirmed(order_id="o5", user_id="ada", total=99.9, currency="EUR")
    event: Event = confirmed.to_event(key="o5")
    for module in (email, loyalty):
        service = module.create(settings)
        async with ServiceHarness(service) as harness:
            await harness.deliver("order-events", event)
            await harness.deliver("order-events", event)
            if module is email:
                assert await harness.query("SELECT order_id FROM emails") == [("o5",)]
                assert [p.name for p in settings.mailbox.glob("*.eml")] == ["o5.eml"]
            else:
                assert await harness.query("SELECT points FROM points") == [(99,)]


async def test_a_poison_order_is_dead_lettered_with_its_reason(settings: Settings) -> None:
    service = inventory.create(settings)
    async with ServiceHarness(service) as harness:
        poison = Event(type="ORDER_PLACED", version=2, key="bad", data={"orderId": "bad"})
        await harness.deliver("order-events", poison)
        [letter] = await harness.dead_letters()
        assert letter.reason == "invalid-event"
        assert letter.handler == "inventory.reserve"
        assert letter.event is not None and letter.event.id == poison.id
