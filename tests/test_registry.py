"""The schema registry in the broker: services register their event schemas at start; a
different schema under a registered (type, version), a breaking new version or a handler
without an upcaster chain stops the start with every problem named; `tidings schema` lists,
shows, diffs and checks (exit 1 in CI); `tidings asyncapi` writes the document."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tidings import SchemaConflictError, connect
from tidings.cli import app
from tidings.registry import SchemaRegistry
from tidings.schema import EventModel
from tidings.service import Context, Service

ROOT = Path(__file__).resolve().parents[1]


class Parcel(EventModel, type="REG_PARCEL", version=1):
    weight: float


class ParcelV2(EventModel, type="REG_PARCEL", version=2):
    weight: float
    carrier: str  # required, no default


class Shipped(EventModel, type="REG_SHIPPED", version=2):
    parcel_id: str


def register_elsewhere(bus: str, tmp_path: Path, fields: str, type_: str, version: int) -> None:
    """Another deployment (its own process, its own model of the type) registers first."""
    model = "\n".join(f"    {line}" for line in fields.splitlines())
    script = "\n".join(
        [
            "import asyncio",
            "from tidings import EventModel, Service",
            f"class Other(EventModel, type={type_!r}, version={version}):",
            model,
            f"service = Service('elsewhere', broker={bus!r}, store='sqlite:///elsewhere.db')",
            "service.publishes('parcel-events', Other)",
            "asyncio.run(service.start())",
            "asyncio.run(service.close())",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


async def registry(bus: str) -> SchemaRegistry:
    async with connect(bus) as broker:
        return await SchemaRegistry(broker).load()


async def cli(bus: str, *args: str) -> Any:
    """`tidings --broker BUS ARGS...` (on a thread: the CLI runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, app, ["--broker", bus, *args])


async def test_a_service_registers_its_schemas_and_tools_show_them(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    service = Service("shipping", broker=bus, store=f"sqlite:///{tmp_path}/s.db")
    service.publishes("parcel-events", Parcel)

    @service.handler("shipment-events")
    async def noted(event: Shipped, ctx: Context) -> None: ...

    await service.start()
    await service.close()
    found = await registry(bus)
    assert set(found.schemas) == {("REG_PARCEL", 1), ("REG_SHIPPED", 2)}
    assert found.get("REG_PARCEL", 1).service == "shipping"
    listed = await cli(bus, "schema", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["type"]: row for row in json.loads(listed.output)}
    assert rows["REG_PARCEL"]["versions"] == [1] and rows["REG_PARCEL"]["mode"] == "BACKWARD"
    shown = await cli(bus, "schema", "show", "REG_PARCEL")
    assert json.loads(shown.output)["properties"]["weight"]["type"] == "number"
    again = Service("shipping-2", broker=bus, store=f"sqlite:///{tmp_path}/s2.db")
    again.publishes("parcel-events", Parcel)
    await again.start()  # the same schema: nothing new, no conflict
    await again.close()
    assert len((await registry(bus)).versions("REG_PARCEL")) == 1


async def test_a_different_schema_for_a_registered_version_stops_the_start(
    tmp_path: Path,
) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    register_elsewhere(bus, tmp_path, "weight: float\nfragile: bool", "REG_PARCEL", 1)
    service = Service("shipping", broker=bus, store=f"sqlite:///{tmp_path}/s.db")
    service.publishes("parcel-events", Parcel)
    with pytest.raises(SchemaConflictError) as caught:
        await service.start()
    await service.close()
    message = str(caught.value)
    assert "REG_PARCEL version 1" in message and "registered by service 'elsewhere'" in message
    assert "fragile" in message and "a new version with an upcaster" in message
    task_service = Service("shipping", broker=bus, store=f"sqlite:///{tmp_path}/s.db")
    task_service.publishes("parcel-events", Parcel)
    with pytest.raises(SchemaConflictError):
        await task_service.run_in_background()


async def test_a_breaking_new_version_is_refused_unless_its_mode_allows_it(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    register_elsewhere(bus, tmp_path, "weight: float", "REG_PARCEL", 1)
    producer = Service("shipping", broker=bus, store=f"sqlite:///{tmp_path}/s.db")
    producer.publishes("parcel-events", ParcelV2)
    with pytest.raises(SchemaConflictError) as caught:
        await producer.start()
    await producer.close()
    assert "breaks BACKWARD" in str(caught.value) and "#/properties/carrier" in str(caught.value)

    consumer = Service("tracking", broker=bus, store=f"sqlite:///{tmp_path}/t.db")

    @consumer.handler("parcel-events")
    async def track(event: ParcelV2, ctx: Context) -> None: ...

    with pytest.raises(SchemaConflictError, match="has no upcaster chain"):
        await consumer.start()
    await consumer.close()

    assert (await cli(bus, "schema", "mode", "REG_PARCEL", "NONE")).exit_code == 0
    await producer.start()  # the type's mode is NONE now: any new version goes
    await producer.close()
    assert [r.version for r in (await registry(bus)).versions("REG_PARCEL")] == [1, 2]
    diff = await cli(bus, "schema", "diff", "REG_PARCEL", "1", "2", "--json")
    report = json.loads(diff.output)
    kinds = {d["kind"] for d in report["differences"]}
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in kinds


APP = textwrap.dedent(
    """
    from tidings import EventModel, Service

    class Parcel(EventModel, type="REG_PARCEL", version=1):
        weight: float

    class ParcelV2(EventModel, type="REG_PARCEL", version=2):
        weight: float
        carrier: str

    old = Service("shipping", store="sqlite:///old.db")
    old.publishes("parcel-events", Parcel)
    new = Service("shipping", store="sqlite:///new.db")
    new.publishes("parcel-events", ParcelV2)
    """
)


def test_schema_check_fails_ci_on_a_breaking_change(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    bus = f"sqlite:///{tmp_path}/bus.db"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def tidings(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidings.cli", "--broker", bus, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    register_elsewhere(bus, tmp_path, "weight: float", "REG_PARCEL", 1)
    ok = tidings("schema", "check", "app:old")
    assert ok.returncode == 0, ok.stderr
    assert "1 event schema(s) of 1 service(s) are compatible" in ok.stdout
    broken = tidings("schema", "check", "app:new")
    assert broken.returncode == 1
    assert "#/properties/carrier" in broken.stderr
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in broken.stderr
    exported = tidings("schema", "export", str(tmp_path / "schemas"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "schemas" / "REG_PARCEL.v1.json").exists()
    offline = tidings("schema", "check", "app:new", "--against", str(tmp_path / "schemas"))
    assert offline.returncode == 1 and "#/properties/carrier" in offline.stderr


def test_asyncapi_writes_the_order_systems_document(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(
        "from examples.orders.services import build_all\n"
        "from examples.orders.settings import Settings\n"
        "services = build_all(Settings())\n"
        "orders, inventory = services['orders'], services['inventory']\n"
    )
    out = tmp_path / "asyncapi.json"
    command = [sys.executable, "-m", "tidings.cli", "asyncapi", "shop:orders", "shop:inventory"]
    result = subprocess.run(
        [*command, "--format", "json", "--output", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["asyncapi"] == "3.0.0"
    assert {"order-events", "inventory-events"} <= set(document["channels"])
    assert "inventory.reserve.receive.order-events" in document["operations"]
