"""The order system's analytics rebuilt from the log: orders flow through the seven services,
the analytics tables are corrupted, `tidings rebuild examples.orders.services.analytics:service
track` (refused while the service runs) clears them through the handler's reset hook, and once
the analytics service runs again its counts equal the events in the log and its other tables
are what they were."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from examples.orders.checks import LogCounter
from examples.orders.cluster import InProcessCluster
from examples.orders.events import TOPICS
from examples.orders.load import CATALOG, OrderClient, sample_orders
from examples.orders.services import analytics, inventory
from examples.orders.settings import Settings

from tests.support import eventually
from tests.test_orders_demo import settled
from tidings import Service, connect

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "rebuild-token"  # noqa: S105 (a test value)
TABLES = {
    "counters": "SELECT topic, event_type, n FROM counters",
    "revenue": "SELECT minute, currency, round(amount, 2), orders FROM revenue",
    "placed": "SELECT minute, currency, orders, round(amount, 2) FROM placed",
    "products": "SELECT product_id, quantity, orders FROM products",
}


def tidings(directory: Path, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The `tidings` command, from the repository's root, configured as the demo's services."""
    assert settings.broker is not None and settings.store is not None
    return subprocess.run(
        [sys.executable, "-m", "tidings.cli", "--broker", settings.broker, *args],
        cwd=ROOT,
        env={**os.environ, "TIDINGS_STORE": settings.store, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def tables(service: Service) -> dict[str, list[Any]]:
    return {
        name: sorted(tuple(r) for r in await service.store.query(sql))
        for name, sql in TABLES.items()
    }


async def test_the_analytics_projection_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    settings = Settings.in_directory(tmp_path, payment_failure_rate=0.2)
    cluster = InProcessCluster(settings, TOKEN, "127.0.0.1", 0)
    await cluster.start()
    try:
        await inventory.seed(cluster.services["inventory"], {p: s for p, (_, s) in CATALOG.items()})
        client = OrderClient(cluster.api_url, TOKEN)
        await asyncio.gather(*(client.place(order) for order in sample_orders(60)))
        failing = [c for c in await settled(cluster, timeout=60) if not c.ok]
        assert failing == []

        refused = tidings(tmp_path, settings, "rebuild", f"{analytics.__name__}:service", "track")
        assert refused.returncode == 2
        assert "live member" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        await cluster.stop()

    service = analytics.create(settings)
    truth = await tables(service)
    async with connect(settings.broker or "") as broker:
        in_log = Counter(await LogCounter(broker, TOPICS).refresh())
        records = sum([(await broker.admin.describe_topic(t)).records for t in TOPICS])
    assert Counter({(t, e): n for t, e, n in truth["counters"]}) == in_log
    async with service.store.transaction() as tx:  # corrupted: double counts, lost rows
        await tx.execute("UPDATE counters SET n = n * 2")
        await tx.execute("DELETE FROM products")
        await tx.execute("DELETE FROM revenue WHERE currency = 'EUR'")
    assert await tables(service) != truth

    rebuilt = tidings(tmp_path, settings, "rebuild", f"{analytics.__name__}:service", "track")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "analytics.track takes again" in rebuilt.stdout
    assert f"re-deliver {records} record(s) to analytics.track" in rebuilt.stdout
    assert await service.store.query("SELECT count(*) FROM counters") == [(0,)]  # reset hook

    timed = tidings(
        tmp_path,
        settings,
        "rebuild",
        f"{analytics.__name__}:service",
        "track",
        "--from",
        "2020-01-01T00:00:00",
    )
    assert timed.returncode == 2 and "only be rebuilt from the beginning" in timed.stderr

    task = await service.run_in_background()
    try:

        async def equal_to_the_log() -> bool:
            return await tables(service) == truth

        await eventually(equal_to_the_log, timeout=60)
    finally:
        service.stop()
        await asyncio.wait_for(task, 60)
    await service.close()
