"""The schema registry in the broker: services register their event schemas at start; a
different schema under a registered (type, version), a breaking new version or a handler
without an upcaster chain stops the start with every problem named; `tidings schema` lists,
shows, diffs and checks (exit 1 in CI); `tidings asyncapi` writes the document."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tidings import Event, SchemaConflictError, connect
from tidings.cli import app
from tidings.records import Message
from tidings.registry import SERVICE_RECORD_VERSION, HandlerRecord, SchemaRegistry
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


# service records ----------------------------------------------------------------------------


class Label(EventModel, type="REG_LABEL", version=1):
    text: str


class LabelV2(EventModel, type="REG_LABEL", version=2):
    text: str
    lang: str = "en"


@LabelV2.upcaster(from_version=1)
def _label_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "lang": "en"}


def labelling(bus: str, tmp_path: Path, *, extra_handler: bool = False) -> Service:
    service = Service("labelling", broker=bus, store=f"sqlite:///{tmp_path}/l.db")
    service.publishes("label-events", Parcel, Label)

    @service.handler("parcel-events", "returns")
    async def print_label(event: LabelV2, ctx: Context) -> None: ...

    @service.handler("audit")
    async def audit(event: Event, ctx: Context) -> None: ...

    if extra_handler:

        @service.handler("parcel-events")
        async def weigh(event: Parcel, ctx: Context) -> None: ...

    return service


async def registry_records(bus: str) -> int:
    async with connect(bus) as broker:
        info = await broker.admin.describe_topic("tidings.schemas")
        return sum(p.end_offset for p in info.partitions)


async def test_a_service_describes_itself_once_per_change(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    service = labelling(bus, tmp_path)
    await service.start()
    await service.close()
    found = await registry(bus)
    record = found.services["labelling"]
    assert record.v == SERVICE_RECORD_VERSION and record.at is not None
    assert record.dead_letter_topic == "labelling.dlq"
    assert record.publishes == {"label-events": (("REG_LABEL", 1), ("REG_PARCEL", 1))}
    assert record.topics == {"label-events": 4}
    handlers = {h.name: h for h in record.handlers}
    assert handlers["print_label"] == HandlerRecord(
        "print_label", ("parcel-events", "returns"), "REG_LABEL", 2, (1, 2)
    )
    assert handlers["audit"] == HandlerRecord("audit", ("audit",))  # every event type
    assert handlers["audit"].takes("ANYTHING") and not handlers["print_label"].takes("X")
    assert record.handles("returns", "REG_LABEL") == [handlers["print_label"]]
    written = await registry_records(bus)

    for _ in range(3):  # restarts with the same declarations add nothing
        again = labelling(bus, tmp_path)
        await again.start()
        await again.close()
    assert await registry_records(bus) == written

    changed = labelling(bus, tmp_path, extra_handler=True)
    await changed.start()
    await changed.close()
    assert await registry_records(bus) == written + 1  # the last record wins
    latest = (await registry(bus)).services["labelling"]
    assert [h.name for h in latest.handlers] == ["print_label", "audit", "weigh"]
    assert latest.at is not None and latest.at > record.at


async def test_a_service_of_envelope_handlers_only_describes_itself(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    service = Service("auditor", broker=bus, store=f"sqlite:///{tmp_path}/a.db")

    @service.handler("audit")
    async def note(event: Event, ctx: Context) -> None: ...

    await service.start()
    await service.close()
    found = await registry(bus)
    assert found.schemas == {}
    assert found.services["auditor"].handlers == (HandlerRecord("note", ("audit",)),)


async def test_reading_the_registry_is_total(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    service = labelling(bus, tmp_path)
    await service.start()
    await service.close()
    newer = {  # a later format: unknown fields and kinds are ignored, not errors
        "kind": "service",
        "name": "from-the-future",
        "v": 7,
        "handlers": [{"name": "h", "topics": ["t"], "type": "T", "version": 3, "retry": {}}],
        "owner": "team-x",
    }
    hostile = [
        b"not json",
        b"[1, 2]",
        b'{"kind": "service"}',
        b'{"kind": "service", "name": 3}',
        b'{"kind": "service", "name": "x", "handlers": [{"name": "h"}]}',
        b'{"kind": "schema", "type": "T", "version": "one"}',
        b'{"kind": "mode", "type": "REG_LABEL", "mode": "SOMETIMES"}',
        b'{"kind": "deprecation", "type": "REG_LABEL"}',
        b"\xff\xfe",
        json.dumps(newer).encode(),
        json.dumps({"kind": "service", "name": "minimal"}).encode(),
    ]
    async with connect(bus) as broker:
        await broker.publish("tidings.schemas", [Message(v, b"junk", partition=0) for v in hostile])
    with caplog.at_level(logging.WARNING, logger="tidings.registry"):
        found = await registry(bus)
    assert set(found.services) == {"labelling", "from-the-future", "minimal"}
    assert found.services["from-the-future"].handlers[0].accepts == ()
    assert found.services["from-the-future"].v == 7
    assert found.services["minimal"].handlers == () and found.services["minimal"].at is None
    assert found.mode("REG_LABEL").value == "BACKWARD"  # the unknown mode changed nothing
    assert found.skipped == 9  # eight that do not decode, one of an unknown kind
    assert caplog.text.count("skipped, it does not decode") == 8
    assert ("REG_LABEL", 1) in found.schemas
    again = labelling(bus, tmp_path)  # a registry with junk in it still lets services start
    await again.start()
    await again.close()


async def test_tools_read_the_registry_without_creating_it(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    async with connect(bus) as broker:
        await broker.admin.create_topic("other", 1)
    listed = await cli(bus, "schema", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.output) == []
    async with connect(bus) as broker:
        assert [i.name for i in await broker.admin.list_topics()] == ["other"]


async def test_schema_diff_marks_what_breaks_the_mode(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    async with connect(bus) as broker:
        found = SchemaRegistry(broker)
        await found.set_mode("REG_PARCEL", "NONE")
        await found.register([Parcel], "a")
        await found.register([ParcelV2], "a")
        await found.set_mode("REG_PARCEL", "BACKWARD")
    backward = await cli(bus, "schema", "diff", "REG_PARCEL", "1", "2", "--json")
    [change] = json.loads(backward.output)["differences"]
    assert change["path"] == "#/properties/carrier" and change["breaksMode"] is True
    text = await cli(bus, "schema", "diff", "REG_PARCEL", "1", "2")
    assert text.output.startswith("! #/properties/carrier")
    await cli(bus, "schema", "mode", "REG_PARCEL", "FORWARD")  # an old reader ignores it
    forward = await cli(bus, "schema", "diff", "REG_PARCEL", "1", "2", "--json")
    report = json.loads(forward.output)
    assert report["differences"][0]["breaksMode"] is False and report["breaking"] == []
    missing = await cli(bus, "schema", "diff", "REG_PARCEL", "1", "5")
    assert missing.exit_code == 2 and "no version 5" in missing.output
