"""The console's Schemas and API pages with Starlette's test client: the registry's types, a
type's versions and the diff of two, a mode changed only with the console token, a CSRF token
and a confirmation; the AsyncAPI document of the order system made from the registry alone
(valid, and the same channels, operations and messages as `tidings asyncapi` writes from the
code) or read from `--asyncapi FILE`; bad input answered with a clear 4xx that changes
nothing. On the embedded SQLite broker (and once on Kafka)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jinja2")
pytest.importorskip("multipart")

import yaml
from examples.orders.services import build_all
from examples.orders.settings import Settings
from starlette.testclient import TestClient

from tests.test_asyncapi import assert_valid
from tests.test_console import TOKEN, csrf, sign_in
from tidings import Context, EventModel, Service, connect
from tidings.asyncapi import document, dumps
from tidings.console import ConsoleConfig, create_app
from tidings.errors import ConfigError
from tidings.records import Message
from tidings.registry import SchemaRegistry


class Crate(EventModel, type="CONSOLE_CRATE", version=1):
    """A crate was packed."""

    weight: float


class CrateV2(EventModel, type="CONSOLE_CRATE", version=2):
    """A crate was packed, with its dock."""

    weight: float
    dock: str  # required, no default: breaks BACKWARD
    note: str | None = None  # optional: fine


@CrateV2.upcaster(from_version=1)
def _crate_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "dock": "unknown"}


def packing(bus: str, tmp_path: Path) -> Service:
    service = Service("packing", broker=bus, store=f"sqlite:///{tmp_path}/packing.db")
    service.publishes("crate-events", Crate, CrateV2)

    @service.handler("crate-events")
    async def stack(event: CrateV2, ctx: Context) -> None:
        """Stack the crate."""

    return service


async def _seed(bus: str, tmp_path: Path) -> None:
    async with connect(bus) as broker:
        await SchemaRegistry(broker).set_mode("CONSOLE_CRATE", "NONE")  # let v2 in
    service = packing(bus, tmp_path)
    await service.start()
    await service.close()
    async with connect(bus) as broker:
        await SchemaRegistry(broker).set_mode("CONSOLE_CRATE", "BACKWARD")


async def mode_of(bus: str, event_type: str) -> str:
    async with connect(bus) as broker:
        registry = await SchemaRegistry(broker).load(create=False)
        return registry.mode(event_type).value


def _client(bus: str, tmp_path: Path, **options: Any) -> Iterator[TestClient]:
    config = ConsoleConfig(
        broker_url=bus, token=TOKEN, index_path=str(tmp_path / "index.db"), **options
    )
    app = create_app(config, background=False)
    with TestClient(app, base_url="http://console.test") as client:
        yield client


@pytest.fixture
def bus(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/bus.db"
    asyncio.run(_seed(url, tmp_path))
    return url


@pytest.fixture
def client(bus: str, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(bus, tmp_path)


# Schemas ------------------------------------------------------------------------------------


def test_schemas_list_types_versions_and_services(client: TestClient) -> None:
    page = client.get("/schemas")
    assert page.status_code == 200
    row = re.search(
        r'<tr data-testid="schema-row" data-type="CONSOLE_CRATE">(.*?)</tr>', page.text, re.S
    )
    assert row is not None
    cells = row.group(1)
    assert ">v1<" in cells and ">v2<" in cells and "BACKWARD" in cells and "(default)" not in cells
    assert cells.count("packing") == 3  # registered, published and handled by it
    assert 'data-testid="registered-service"' in page.text
    assert "stack" in page.text and "reads v1, v2" in page.text
    assert 'href="/api#service-packing"' in page.text

    shown = client.get("/schemas/CONSOLE_CRATE")
    assert shown.status_code == 200
    assert shown.text.count('data-testid="version"') == 2
    assert "&#34;dock&#34;" in shown.text  # the schema, pretty-printed and escaped
    assert re.search(r'<details id="v2" open', shown.text)  # the latest, open
    older = client.get("/schemas/CONSOLE_CRATE?version=1")
    assert re.search(r'<details id="v1" open', older.text)
    assert "packing</strong> publishes it to" in shown.text
    assert "handler <code>stack</code> takes v2" in shown.text


def test_the_diff_of_two_versions(client: TestClient) -> None:
    page = client.get("/schemas/CONSOLE_CRATE/diff", params={"from": 1, "to": 2})
    assert page.status_code == 200
    rows = re.findall(r'data-breaks="(yes|no)">\s*<td><code>([^<]+)</code>', page.text)
    assert ("yes", "#/properties/dock") in rows and ("no", "#/properties/note") in rows
    assert ("no", "#/description") in rows  # the docstrings differ: an annotation
    assert [path for breaks, path in rows if breaks == "yes"] == ["#/properties/dock"]
    assert "REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in page.text
    assert "OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL" in page.text
    assert 'data-testid="breaking"' in page.text and "breaking</span> as schemas alone" in page.text
    same = client.get("/schemas/CONSOLE_CRATE/diff", params={"from": 2, "to": 2})
    assert same.status_code == 200 and "no differences" in same.text and ">compatible<" in same.text


def test_bad_input_is_a_clear_4xx(client: TestClient) -> None:
    cases = {
        "/schemas/NOPE": 404,
        "/schemas/NOPE/diff?from=1&to=2": 404,
        "/schemas/CONSOLE_CRATE?version=9": 404,
        "/schemas/CONSOLE_CRATE/diff?from=1&to=9": 404,
        "/schemas/CONSOLE_CRATE?version=x": 400,
        "/schemas/CONSOLE_CRATE?version=0": 400,
        "/schemas/CONSOLE_CRATE/diff?from=x&to=2": 400,
        "/schemas/CONSOLE_CRATE/diff?from=1": 400,
        "/schemas/CONSOLE_CRATE/diff": 400,
        "/api?source=nowhere": 400,
        "/api?source=file": 400,  # no file was given
        "/api/asyncapi.xml": 404,
    }
    for page, status in cases.items():
        response = client.get(page)
        assert response.status_code == status, (page, response.status_code, response.text[:300])
        assert 'data-testid="error"' in response.text, page
    assert client.get("/schemas/CONSOLE_CRATE/mode").status_code == 405  # GET changes nothing


def test_a_mode_changes_only_with_the_token_csrf_and_a_confirmation(
    client: TestClient, bus: str
) -> None:
    page = "/schemas/CONSOLE_CRATE"
    target = f"{page}/mode"
    token = csrf(client, page)
    unchanged = "BACKWARD"

    def mode() -> str:
        return asyncio.run(mode_of(bus, "CONSOLE_CRATE"))

    # no CSRF token, a wrong one, another site: 403; not signed in: 401. Nothing changes.
    assert client.post(target, data={"mode": "FULL"}).status_code == 403
    assert client.post(target, data={"mode": "FULL", "csrf": "0" * 64}).status_code == 403
    cross = client.post(
        target,
        data={"mode": "FULL", "csrf": token, "confirm": "yes"},
        headers={"origin": "http://evil.test"},
    )
    assert cross.status_code == 403
    anonymous = client.post(target, data={"mode": "FULL", "csrf": token, "confirm": "yes"})
    assert anonymous.status_code == 401 and "sign in" in anonymous.text.lower()
    assert mode() == unchanged

    sign_in(client)
    token = csrf(client, page)
    assert client.post(target, data={"mode": "SOMETIMES", "csrf": token}).status_code == 400
    unknown = client.post("/schemas/NOPE/mode", data={"mode": "FULL", "csrf": token})
    assert unknown.status_code == 404
    asked = client.post(target, data={"mode": "FULL_TRANSITIVE", "csrf": token})
    assert asked.status_code == 200 and 'data-testid="confirm-mode"' in asked.text
    assert "v1 → v2" in asked.text and 'data-testid="effect"' in asked.text
    assert mode() == unchanged  # asking changes nothing

    done = client.post(
        target,
        data={"mode": "FULL_TRANSITIVE", "csrf": token, "confirm": "yes"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"{page}?mode_set=FULL_TRANSITIVE"
    assert mode() == "FULL_TRANSITIVE"
    shown = client.get(done.headers["location"]).text
    assert 'data-testid="notice"' in shown and ">FULL_TRANSITIVE</strong>" in shown


def test_what_the_registry_holds_is_escaped(client: TestClient, bus: str) -> None:
    hostile = {
        "kind": "service",
        "name": "<img src=x onerror=alert(1)>",
        "handlers": [{"name": "<b>h</b>", "topics": ["<i>t</i>"], "type": "CONSOLE_CRATE"}],
    }
    schema = {"kind": "schema", "type": "CONSOLE_<X>", "version": 1, "service": "<s>"}
    schema["schema"] = {"description": "<script>alert(1)</script>"}

    async def write() -> None:
        async with connect(bus) as broker:
            records = [json.dumps(hostile).encode(), json.dumps(schema).encode(), b"junk"]
            await broker.publish(
                "tidings.schemas", [Message(r, None, partition=0) for r in records]
            )

    asyncio.run(write())
    for page in ("/schemas", "/schemas/CONSOLE_%3CX%3E", "/api"):
        response = client.get(page)
        assert response.status_code == 200, (page, response.text[:300])
        assert "<img" not in response.text and "<script>alert" not in response.text, page
        assert "<b>h</b>" not in response.text and "<i>t</i>" not in response.text, page
    listed = client.get("/schemas").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in listed
    assert 'data-testid="skipped"' in listed  # the junk record, said and skipped


# API ----------------------------------------------------------------------------------------


async def _start_order_system(bus: str, tmp_path: Path) -> dict[str, Service]:
    settings = Settings(
        broker=bus, store=f"sqlite:///{tmp_path}/{{service}}.db", mailbox=tmp_path / "mailbox"
    )
    services = build_all(settings)
    for service in services.values():
        await service.start()
    for service in services.values():
        await service.close()
    return services


def test_the_api_page_of_the_order_system_from_the_registry(tmp_path: Path) -> None:
    bus = f"sqlite:///{tmp_path}/bus.db"
    services = asyncio.run(_start_order_system(bus, tmp_path))
    for client in _client(bus, tmp_path):
        page = client.get("/api")
        assert page.status_code == 200
        shown = set(re.findall(r'<h3 id="service-([^"]+)" data-testid="api-service">', page.text))
        assert shown == set(services)
        channels = set(re.findall(r'data-testid="channel" data-channel="([^"]+)"', page.text))
        assert {"order-events", "inventory-events", "payment-events"} <= channels
        assert {f"{name}.dlq" for name in services} <= channels
        assert 'id="message-ORDER_PLACED.v2"' in page.text
        assert "&#34;discountCode&#34;" in page.text  # a payload schema, shown
        assert 'href="#schema-ORDER_PLACED.v2"' in page.text  # $refs are links
        assert page.text.count('data-action="receive"') >= len(services)

        downloaded = client.get("/api/asyncapi.json")
        assert downloaded.status_code == 200
        assert downloaded.headers["content-type"].startswith("application/json")
        assert "attachment" in downloaded.headers["content-disposition"]
        doc = downloaded.json()
        assert_valid(doc)
        as_yaml = client.get("/api/asyncapi.yaml")
        assert as_yaml.headers["content-type"].startswith("application/yaml")
        assert yaml.safe_load(as_yaml.text) == doc
        # the registry's document says what `tidings asyncapi` says from the code
        from_code = document(list(services.values()), broker_url=bus)
        for part in ("channels", "operations"):
            assert set(doc[part]) == set(from_code[part]), part
        assert set(doc["components"]["messages"]) == set(from_code["components"]["messages"])
        for name, channel in from_code["channels"].items():
            assert set(doc["channels"][name]["messages"]) == set(channel["messages"]), name

        topic = client.get("/topics/order-events").text
        assert 'href="/api#channel-order-events"' in topic


def test_the_api_page_from_a_file(tmp_path: Path, bus: str) -> None:
    services = [packing(bus, tmp_path)]
    path = tmp_path / "asyncapi.yaml"
    path.write_text(dumps(document(services, title="Packing", broker_url=bus), format="yaml"))
    for client in _client(bus, tmp_path, asyncapi_path=str(path)):
        page = client.get("/api")
        assert page.status_code == 200
        assert "Packing" in page.text and "Stack the crate." in page.text  # from the code
        assert "the file" in page.text and str(path) in page.text
        registry = client.get("/api?source=registry")
        assert registry.status_code == 200 and "Stack the crate." not in registry.text
        assert client.get("/api/asyncapi.json").json()["info"]["title"] == "Packing"
        changed = document(services, title="Packing, again", broker_url=bus)
        path.write_text(json.dumps(changed) + "\n" * 3)  # read again when it changes
        assert "Packing, again" in client.get("/api").text
        path.write_text("asyncapi: 2.6.0\n")
        assert client.get("/api").status_code == 400

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="neither JSON nor YAML"):
        for _ in _client(bus, tmp_path, asyncapi_path=str(broken)):
            pass

    from typer.testing import CliRunner

    from tidings.cli import app

    runner = CliRunner()
    assert "--asyncapi" in runner.invoke(app, ["console", "--help"]).output
    refused = runner.invoke(app, ["--broker", bus, "console", "--asyncapi", str(broken)])
    assert refused.exit_code == 2 and "neither JSON nor YAML" in refused.output
    absent = runner.invoke(app, ["--broker", bus, "console", "--asyncapi", "/no/such.yaml"])
    assert absent.exit_code == 2 and "cannot be read" in absent.output


# Kafka --------------------------------------------------------------------------------------


def test_schemas_and_api_on_kafka(tmp_path: Path) -> None:
    from tests.support import server_setting

    bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
    bus = f"kafka://{bootstrap}?group_prefix=console-schemas-{uuid.uuid4().hex[:8]}."
    asyncio.run(_seed(bus, tmp_path))
    for client in _client(bus, tmp_path):
        assert "CONSOLE_CRATE" in client.get("/schemas").text
        diff = client.get("/schemas/CONSOLE_CRATE/diff?from=1&to=2")
        assert diff.status_code == 200 and 'data-breaks="yes"' in diff.text
        api = client.get("/api")
        assert api.status_code == 200 and 'id="service-packing"' in api.text
        doc = client.get("/api/asyncapi.json").json()
        assert_valid(doc)
        assert doc["servers"]["kafka"]["host"] == bootstrap
        sign_in(client)
        token = csrf(client, "/schemas/CONSOLE_CRATE")
        done = client.post(
            "/schemas/CONSOLE_CRATE/mode",
            data={"mode": "FULL", "csrf": token, "confirm": "yes"},
            follow_redirects=False,
        )
        assert done.status_code == 303
    assert asyncio.run(mode_of(bus, "CONSOLE_CRATE")) == "FULL"
