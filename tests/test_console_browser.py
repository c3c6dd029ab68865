"""The console end to end, in headless Chromium (Debian's `chromium`, driven by Playwright for
Python through `executable_path`: no browser is downloaded), against the order system running
in this process. Screenshots go to build/screenshots/ (or $TIDINGS_SCREENSHOTS; the README
shows those in docs/screenshots/).

Under CI=true a missing Chromium or Playwright fails these tests instead of skipping them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.orders.api import serving
from examples.orders.cluster import InProcessCluster
from examples.orders.load import CATALOG, OrderClient, sample_orders
from examples.orders.services import inventory
from examples.orders.settings import Settings

from tidings import Event, connect
from tidings.console import ConsoleConfig, create_app

CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("TIDINGS_SCREENSHOTS") or ROOT / "build" / "screenshots")
"""Where the screenshots go (artifacts; `TIDINGS_SCREENSHOTS=docs/screenshots` renews the
README's)."""
TOKEN = "browser-test-token"  # noqa: S105
API_TOKEN = "browser-test-api-token"  # noqa: S105


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


try:
    from playwright.async_api import Page, async_playwright, expect
except ImportError:  # pragma: no cover - depends on the machine
    _unavailable("playwright is not installed: pip install -e '.[dev]'")
if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
    _unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium")


pytestmark = pytest.mark.timeout(240)


@dataclass
class System:
    cluster: InProcessCluster
    console_url: str
    page: Page
    broker_url: str

    async def place(self, count: int, *, first: int = 0) -> None:
        client = OrderClient(self.cluster.api_url, API_TOKEN)
        try:
            await client.place_all(sample_orders(count, first=first))
        finally:
            await client.close()

    async def open(self, path: str) -> None:
        await self.page.goto(self.console_url + path)

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

    async def sign_in(self) -> None:
        await self.open("/login")
        await self.page.fill("input[name=token]", TOKEN)
        await self.page.click("button[type=submit]")
        await expect(self.page.locator("header")).to_contain_text("sign out")


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.25)


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    settings = Settings(
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/{{service}}.db",
        mailbox=tmp_path / "mailbox",
        payment_failure_rate=0.0,
    )
    cluster = InProcessCluster(settings, API_TOKEN, "127.0.0.1", 0)
    await cluster.start()
    try:
        await inventory.seed(
            cluster.services["inventory"], {p: stock for p, (_, stock) in CATALOG.items()}
        )
        assert settings.broker is not None
        config = ConsoleConfig(
            broker_url=settings.broker,
            token=TOKEN,
            index_path=str(tmp_path / "console-index.db"),
            dashboard=f"{cluster.analytics_url}/analytics/dashboard",
            jaeger_url="http://127.0.0.1:16686",
            sample_interval=0.5,
            index_interval=0.2,
        )
        app = create_app(config)
        async with (
            app.router.lifespan_context(app),
            serving(app, "127.0.0.1", 0) as server,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 860})
                page.set_default_timeout(30_000)
                yield System(cluster, f"http://127.0.0.1:{server.port}", page, settings.broker)
            finally:
                await browser.close()
    finally:
        await cluster.stop()


async def test_topology_shows_seven_services_and_three_topics(system: System) -> None:
    await system.place(12)
    await system.open("/")
    page = system.page
    await expect(page.locator("a.service-node")).to_have_count(7)
    await expect(page.locator("a.topic-node")).to_have_count(3)
    names = await page.locator("a.service-node").evaluate_all(
        "nodes => nodes.map(n => n.dataset.service).sort()"
    )
    assert names == sorted(
        ["orders", "inventory", "payment", "email", "analytics", "fulfillment", "loyalty"]
    )
    # every service is up: live members, and the graph says so
    await until(lambda: _health_ok(system))
    await until(lambda: _caught_up(system))  # edges turn green once every group committed
    await system.shot("topology")
    # a group's page: the lag chart is live (htmx swaps it without reloading)
    await system.open("/groups/inventory")
    await expect(page.locator("[data-testid=lag-chart]")).to_be_visible()
    before = await page.locator("#lag").get_attribute("hx-get")
    assert before == "/groups/inventory/lag"
    marker = await page.evaluate("() => { window.__kept = 1; return window.__kept }")
    await system.place(20, first=100)
    await until(lambda: _lag_samples_grew(page))
    assert await page.evaluate("() => window.__kept") == marker  # never reloaded
    await system.shot("group")


async def _health_ok(system: System) -> bool:
    await system.page.reload()
    return await system.page.locator("a.service-node[data-health=ok]").count() == 7


async def _caught_up(system: System) -> bool:
    await system.page.reload()
    lags = await system.page.locator("path.edge.consumes").evaluate_all(
        "paths => paths.map(p => p.dataset.lag)"
    )
    return bool(lags) and all(lag == "0" for lag in lags)


async def _lag_samples_grew(page: Page) -> bool:
    text = await page.locator("#lag").inner_text()
    found = re.search(r"(\d+) sample\(s\) shown", text)
    return found is not None and int(found.group(1)) >= 6


async def test_a_poison_events_dead_letter_is_replayed_from_the_page(system: System) -> None:
    poison = Event(type="ORDER_PLACED", version=2, key="ord-poison", data={"orderId": "ord-poison"})
    async with connect(system.broker_url) as broker:
        await broker.publish_events("order-events", [poison])
    page = system.page
    rows = page.locator("tr[data-testid=letter]")

    async def listed() -> list[str]:
        await system.open("/dlq")
        found = await rows.evaluate_all("rows => rows.map(r => r.dataset.position)")
        return [str(p) for p in found]

    await until(lambda: _non_empty(listed))
    [first] = await listed()
    assert first.startswith("inventory.dlq:")
    await expect(rows.first).to_contain_text("invalid-event")
    await system.shot("dead-letters")
    await page.click(f"a[href='/dlq/{first}']")
    await expect(page.locator("h2", has_text="Traceback")).to_be_visible()
    await system.sign_in()
    await system.open(f"/dlq/{first}")
    await page.click("[data-testid=replay-one]")
    await expect(page.locator("[data-testid=notice]")).to_contain_text("replayed 1 dead letter")
    assert first not in await listed()
    # the event is still poison: inventory sets it aside again, as a new dead letter ...
    await until(lambda: _non_empty(listed))
    [again] = await listed()
    assert again != first
    # ... which we purge, after confirming
    await page.check(f"input[value='{again}']")
    await page.click("button[formaction='/dlq/purge']")
    await page.click("[data-testid=confirm-purge]")
    await expect(page.locator("[data-testid=notice]")).to_contain_text("purged 1 dead letter")
    await expect(page.locator("[data-testid=no-letters]")).to_be_visible()
    await system.open("/dlq?resolved=1")
    await expect(rows).to_have_count(2)


async def _non_empty(listed: Callable[[], Awaitable[list[str]]]) -> bool:
    return len(await listed()) == 1


async def test_an_orders_trace_from_the_search_box(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.cluster.api_url) as http:
        response = await http.post(
            "/orders",
            json={
                "userId": "ada",
                "items": [{"productId": "mouse", "quantity": 2, "price": 19.5}],
                "currency": "EUR",
            },
            headers={"Authorization": f"Bearer {API_TOKEN}", "X-Correlation-Id": "checkout-e2e"},
        )
        assert response.status_code == 202
        order_id = response.json()["orderId"]
    page = system.page
    chain = ["ORDER_PLACED", "INVENTORY_RESERVED", "PAYMENT_CHARGED", "ORDER_CONFIRMED"]

    async def complete() -> bool:
        await system.open("/")
        await page.fill("header input[name=q]", order_id)
        await page.press("header input[name=q]", "Enter")
        await page.wait_for_load_state()
        if "/trace/checkout-e2e" not in page.url:
            return False
        types = await page.locator("[data-testid=trace-node]").evaluate_all(
            "nodes => nodes.map(n => n.dataset.type)"
        )
        pending = await page.locator("[data-testid=reaction] td.warn").all_inner_texts()
        reactions = await page.locator("tr[data-testid=reaction]").count()
        return types == chain and reactions == 4 and not any(p.strip() for p in pending)

    await until(complete)
    reactions = await page.locator("tr[data-testid=reaction] td:first-child").all_inner_texts()
    assert sorted(reactions) == ["analytics", "email", "fulfillment", "loyalty"]
    await expect(page.locator("[data-testid=timeline]")).to_be_visible()
    await system.shot("trace")
    # the record view links the cause and the effects
    await page.click("[data-testid=trace-node][data-type=PAYMENT_CHARGED] > a")
    await expect(page.locator("[data-testid=parent]")).to_contain_text("INVENTORY_RESERVED")
    await expect(page.locator("[data-testid=child]")).to_contain_text("ORDER_CONFIRMED")


async def test_the_schemas_and_api_pages_of_the_running_system(system: System) -> None:
    page = system.page
    refused: list[str] = []  # the pages keep to the console's CSP: nothing is refused
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    await system.place(3)
    await system.open("/schemas")
    placed = page.locator("tr[data-testid=schema-row][data-type=ORDER_PLACED]")
    await expect(placed).to_contain_text("v1 v2")
    await expect(page.locator("tr[data-testid=registered-service]")).to_have_count(7)
    await system.shot("schemas")
    await placed.locator("a.event-type").click()
    await expect(page.locator("[data-testid=version]")).to_have_count(2)
    await page.click("[data-testid=diff-form] button")
    breaking = page.locator("tr[data-testid=change][data-breaks=yes]")
    await expect(breaking).to_contain_text("#/properties/currency")
    await expect(page.locator("[data-testid=verdict]")).to_contain_text("breaking")

    await system.open("/api")
    services = page.locator("h3[data-testid=api-service]")
    await expect(services).to_have_count(7)
    await expect(page.locator("tr[data-testid=channel][data-channel=order-events]")).to_be_visible()
    message = page.locator("details[id='message-ORDER_PLACED.v2']")
    await (
        page.locator("tr[data-testid=channel][data-channel=order-events]")
        .locator("a[href='#message-ORDER_PLACED.v2']")
        .click()
    )
    await message.locator("summary").click()
    await expect(message.locator("[data-testid=payload-schema]")).to_contain_text("discountCode")
    await system.open("/api")
    await system.shot("api")
    async with page.expect_download() as downloading:
        await page.click("[data-testid=download-json]")
    saved = await (await downloading.value).path()
    doc = json.loads(Path(saved).read_text())
    assert (
        doc["asyncapi"] == "3.0.0" and "inventory.reserve.receive.order-events" in doc["operations"]
    )
    # the topology knows each service's handlers from what it declared
    await system.open("/")
    await expect(page.locator("td[data-testid=handles][data-described=yes]")).to_have_count(7)
    assert refused == []


async def test_the_dashboard_changes_while_orders_flow(system: System) -> None:
    page = system.page
    await system.place(5)
    await system.open("/dashboard")
    placed = page.locator(
        "[data-testid=panel][data-title='Orders placed'] [data-testid=stat-value]"
    )
    await expect(placed).to_be_visible()
    await until(lambda: _stat(placed, lambda n: n >= 5))
    before = await _number(placed)
    marker = await page.evaluate("() => { window.__kept = 2; return window.__kept }")
    flowing = asyncio.create_task(system.place(40, first=500))
    try:
        await until(lambda: _stat(placed, lambda n: n > before))
    finally:
        await flowing
    await until(lambda: _stat(placed, lambda n: n >= before + 40))
    assert await page.evaluate("() => window.__kept") == marker  # updated in place
    await expect(page.locator("[data-testid=panel][data-title='Status mix']")).to_contain_text(
        "CONFIRMED"
    )
    await system.shot("dashboard")


async def _number(locator: Any) -> float:
    text = await locator.inner_text()
    return float(text.split()[0].replace(",", ""))


async def _stat(locator: Any, ok: Callable[[float], bool]) -> bool:
    return ok(await _number(locator))
