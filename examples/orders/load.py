"""Sample orders and a client that places them through the order API, as shoppers would.

The client sends every order with an `Idempotency-Key` and retries while the API is away (a
killed process, a restart): an order is placed exactly once however often it is sent.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

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
class SampleOrder:
    key: str  # the Idempotency-Key
    body: dict[str, Any]


def sample_orders(count: int, *, first: int = 0, seed: int = 7) -> list[SampleOrder]:
    """`count` order requests; one in three from an old client (ORDER_PLACED v1), some for a
    sold-out product. The same arguments give the same orders and keys."""
    rng = random.Random(seed + first)
    regular = [p for p, (_, stock) in CATALOG.items() if stock > 0]
    result = []
    for n in range(first, first + count):
        products = rng.sample(regular, rng.randint(1, 3))
        if rng.random() < OUT_OF_STOCK_SHARE:
            products.append("limited-edition")
        body: dict[str, Any] = {
            "userId": f"user-{rng.randrange(50):03d}",
            "items": [
                {"productId": p, "quantity": rng.randint(1, 3), "price": CATALOG[p][0]}
                for p in products
            ],
        }
        currency = rng.choice(["USD", "EUR", "GBP"])
        discount = rng.choice([None, None, "SAVE10", "WELCOME5"])
        if n % 3:  # a current client: ORDER_PLACED v2
            body["currency"] = currency
            if discount:
                body["discountCode"] = discount
        result.append(SampleOrder(key=f"demo-{seed}-{n:06d}", body=body))
    return result


class OrderClient:
    """Places orders through `POST /orders`. Safe to call concurrently."""

    def __init__(self, base_url: str, token: str, *, give_up_after: float = 60.0) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, connect=2.0),
        )
        self.give_up_after = give_up_after
        self.retries = 0

    async def place(self, order: SampleOrder, correlation_id: str | None = None) -> str:
        """The order id. Retries connection failures and 5xx answers with the same
        Idempotency-Key until `give_up_after` seconds; a 4xx is raised at once."""
        headers = {"Idempotency-Key": order.key}
        if correlation_id:
            headers["X-Correlation-Id"] = correlation_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        delay = 0.05
        while True:
            try:
                response = await self.http.post("/orders", json=order.body, headers=headers)
                if response.status_code < 500:
                    response.raise_for_status()
                    return str(response.json()["orderId"])
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if loop.time() > deadline:
                raise RuntimeError(f"order {order.key} not placed: {problem}")
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def place_all(
        self,
        orders: list[SampleOrder],
        *,
        concurrency: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Place every order, `concurrency` at a time; calls `progress(1)` per placed order."""
        gate = asyncio.Semaphore(concurrency)

        async def one(order: SampleOrder) -> str:
            async with gate:
                order_id = await self.place(order, correlation_id=f"corr-{order.key}")
            if progress:
                progress(1)
            return order_id

        return list(await asyncio.gather(*(one(o) for o in orders)))

    async def close(self) -> None:
        await self.http.aclose()
