"""The web console with Starlette's test client: every page, every action with its checks
(origin, CSRF token, console token), and bad input answered with a clear 4xx that changes
nothing. On the embedded SQLite broker, seeded before the app starts."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jinja2")
pytest.importorskip("multipart")

from starlette.testclient import TestClient

from tidings import Event, connect, dlq, ops
from tidings.brokers.base import CanRead, require
from tidings.console import ConsoleConfig, console_token, create_app, data_directory, index_path
from tidings.console.config import TOKEN_ENV
from tidings.errors import ConfigError
from tidings.records import TopicPartition

TOKEN = "console-test-token"  # noqa: S105


def dashboard_provider() -> dict[str, Any]:
    """A dashboard as an app would provide it (`--dashboard tests.test_console:...`)."""
    return {
        "title": "Shop",
        "panels": [
            {"kind": "stat", "title": "Orders", "value": 42, "unit": "orders"},
            {
                "kind": "series",
                "title": "Per minute",
                "labels": ["a", "b"],
                "series": {"x": [1, 2]},
            },
            {"kind": "bars", "title": "Status", "bars": [["CONFIRMED", 3], ["PENDING", 1]]},
            {"kind": "table", "title": "Top", "columns": ["p", "n"], "rows": [["mouse", 2]]},
        ],
    }


async def broken_provider() -> dict[str, Any]:
    return {"title": "x", "panels": [{"kind": "pie"}]}


class Seeded:
    """What the fixture wrote: an order flow, a dead letter, a stopped group."""

    url: str
    correlation_id = "corr-ord-1"
    placed: Event
    letters: list[str]


async def _seed(url: str) -> Seeded:
    seeded = Seeded()
    seeded.url = url
    async with connect(url) as broker:
        await broker.admin.create_topic("order-events", 2)
        await broker.admin.create_topic("inventory.dlq", 1)
        placed = Event(
            type="ORDER_PLACED", key="ord-1", source="orders", correlation_id="corr-ord-1", data={}
        )
        reserved = Event(
            type="INVENTORY_RESERVED",
            key="ord-1",
            source="inventory",
            correlation_id="corr-ord-1",
            causation_id=placed.id,
            data={"orderId": "ord-1"},
        )
        await broker.publish_events("order-events", [placed, reserved])
        await broker.publish_events(
            "order-events", [Event(type="OTHER", key=f"k{i}", data=i) for i in range(30)]
        )
        async with broker.subscribe("inventory", ["order-events"]) as consumer:
            batch = await consumer.fetch(timeout=10)
            assert batch is not None
            await consumer.commit(batch)
        info = await broker.admin.describe_topic("order-events")
        reader = require(broker, CanRead, "read")
        records = []
        for p in info.partitions:
            records += await reader.read(TopicPartition("order-events", p.partition), 0, 100)
        first = next(r for r in records if b"ORDER_PLACED" in r.value)
        letter = dlq.letter(
            first,
            reason="retries-exhausted",
            error=ValueError("boom"),
            handler="inventory.reserve",
            attempts=3,
        )
        published = await broker.publish("inventory.dlq", [letter, letter])
        seeded.placed = placed
        seeded.letters = [f"inventory.dlq:0:{p.offset}" for p in published]
    return seeded


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return asyncio.run(_seed(f"sqlite:///{tmp_path}/bus.db"))


def _client(seeded: Seeded, tmp_path: Path, **options: Any) -> Iterator[TestClient]:
    config = ConsoleConfig(
        broker_url=seeded.url, token=TOKEN, index_path=str(tmp_path / "index.db"), **options
    )
    app = create_app(config, background=False)
    with TestClient(app, base_url="http://console.test") as client:
        console = app.state.console
        client.portal.call(console.index.update, console.broker)
        client.portal.call(console.sampler.sample)
        yield client


@pytest.fixture
def client(seeded: Seeded, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(seeded, tmp_path)


def csrf(client: TestClient, page: str = "/dlq") -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(page).text)
    assert found is not None
    return found.group(1)


def sign_in(client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"csrf": csrf(client, "/login"), "token": TOKEN, "next": "/dlq"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/dlq"


def letters_listed(client: TestClient) -> list[str]:
    return re.findall(r'data-position="([^"]+)"', client.get("/dlq").text)


# pages ----------------------------------------------------------------------------------


def test_every_page_answers(client: TestClient, seeded: Seeded) -> None:
    pages = [
        "/",
        "/?fragment=graph",
        "/topics",
        "/topics/order-events",
        "/topics/order-events?partition=1",
        "/topics/order-events?key=ord-1",
        "/topics/order-events?key=ord-1&scan=1",
        "/topics/order-events?correlation=corr-ord-1",
        "/topics/order-events?type=OTHER&since=2000-01-01T00:00:00",
        "/topics/order-events?offset=3&limit=5",
        "/groups",
        "/groups/inventory",
        "/groups/inventory/lag",
        "/dlq",
        "/dlq?service=inventory&reason=retries-exhausted&resolved=1",
        f"/dlq/{seeded.letters[0]}",
        f"/trace/{seeded.correlation_id}",
        "/dashboard",
        "/login",
        "/static/htmx.min.js",
        "/static/console.css",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, (page, response.text[:500])
    topology = client.get("/").text
    assert 'data-service="inventory"' in topology and 'data-topic="order-events"' in topology
    trace = client.get(f"/trace/{seeded.correlation_id}").text
    assert trace.index('data-type="ORDER_PLACED"') < trace.index('data-type="INVENTORY_RESERVED"')
    assert "set aside by inventory" in trace
    by_key = client.get("/topics/order-events?key=ord-1").text
    assert by_key.count("/topics/order-events/") >= 2 and "ORDER_PLACED" in by_key


def test_record_view_links_cause_and_effect(client: TestClient, seeded: Seeded) -> None:
    found = client.get(f"/search?q={seeded.placed.id}", follow_redirects=False)
    assert found.status_code == 303
    record = client.get(found.headers["location"])
    assert record.status_code == 200
    assert 'data-testid="child"' in record.text and "INVENTORY_RESERVED" in record.text
    assert "inventory.dlq" in record.text  # the same event, dead-lettered
    child = re.search(r'href="(/topics/[^"]+)" data-testid="child"', record.text)
    assert child is not None
    assert 'data-testid="parent"' in client.get(child.group(1)).text


def test_search_lands_on_the_right_page(client: TestClient, seeded: Seeded) -> None:
    def where(query: str) -> tuple[int, str]:
        response = client.get("/search", params={"q": query}, follow_redirects=False)
        return response.status_code, response.headers.get("location", "")

    assert where("ord-1") == (303, "/trace/corr-ord-1")  # an order id: the event key
    assert where("corr-ord-1") == (303, "/trace/corr-ord-1")
    assert where("order-events") == (303, "/topics/order-events")
    assert where("inventory") == (303, "/groups/inventory")
    assert where(seeded.letters[0]) == (303, f"/dlq/{seeded.letters[0]}")
    assert where("nothing-like-it")[0] == 404
    assert where("  ")[0] == 400


def test_bad_input_is_a_clear_4xx(client: TestClient) -> None:
    cases = {
        "/topics/nope": 404,
        "/topics/order-events?partition=9": 404,
        "/topics/order-events?offset=abc": 400,
        "/topics/order-events?offset=-1": 400,
        "/topics/order-events?offset=999999": 400,
        "/topics/order-events?since=yesterday": 400,
        "/topics/order-events?limit=100000": 400,
        "/topics/order-events/0/999999": 400,
        "/topics/order-events/0/x": 400,
        "/topics/nope/0/0": 404,
        "/groups/nope": 404,
        "/groups/nope/lag": 404,
        "/dlq/inventory.dlq:0:999": 404,
        "/dlq/garbage": 400,
        "/dlq?cursor=garbage": 400,
        "/dlq?limit=0": 400,
        "/trace/no-such-flow": 404,
        "/no/such/page": 404,
    }
    for page, status in cases.items():
        response = client.get(page)
        assert response.status_code == status, (page, response.status_code, response.text[:300])
        assert 'data-testid="error"' in response.text, page
    # GET never changes anything
    assert client.get("/groups/inventory/reset").status_code == 405
    assert client.get("/dlq/replay").status_code == 400  # read as a malformed position


def test_security_headers_and_cookies(client: TestClient) -> None:
    fresh = TestClient(client.app, base_url="http://console.test")
    response = fresh.get("/")
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


# actions --------------------------------------------------------------------------------


def test_actions_need_csrf_and_token(client: TestClient, seeded: Seeded) -> None:
    before = letters_listed(client)
    assert before == seeded.letters
    target = {"id": seeded.letters[0]}
    # no CSRF token, a wrong one, another site: 403
    assert client.post("/dlq/replay", data=target).status_code == 403
    assert client.post("/dlq/replay", data={**target, "csrf": "0" * 64}).status_code == 403
    token = csrf(client)
    cross = client.post(
        "/dlq/replay", data={**target, "csrf": token}, headers={"Origin": "http://evil.test"}
    )
    assert cross.status_code == 403
    # the right CSRF token but not signed in: 401 with the sign-in form
    response = client.post("/dlq/replay", data={**target, "csrf": token})
    assert response.status_code == 401 and 'name="token"' in response.text
    # a wrong console token
    wrong = client.post("/login", data={"csrf": token, "token": "guess", "next": "/"})
    assert wrong.status_code == 401
    # a CSRF token of another session does not pass
    other = TestClient(client.app, base_url="http://console.test")
    assert other.post("/login", data={"csrf": token, "token": TOKEN}).status_code == 403
    assert letters_listed(client) == before  # nothing changed
    for path in ("/dlq/purge", "/groups/inventory/reset", "/logout"):
        assert client.post(path, data={"csrf": "x"}).status_code == 403, path


def test_replay_one_letter_from_the_page(client: TestClient, seeded: Seeded) -> None:
    sign_in(client)
    response = client.post(
        "/dlq/replay", data={"id": seeded.letters[0], "csrf": csrf(client)}, follow_redirects=False
    )
    assert response.status_code == 303
    page = client.get(response.headers["location"]).text
    assert "replayed 1 dead letter(s)" in page
    assert letters_listed(client) == seeded.letters[1:]
    assert seeded.letters[0] in client.get("/dlq?resolved=1").text
    # replaying it again: it is resolved (409), nothing changed
    again = client.post("/dlq/replay", data={"id": seeded.letters[0], "csrf": csrf(client)})
    assert again.status_code == 409 and "already replayed" in again.text
    # neither ids nor all, or both: 400
    assert client.post("/dlq/replay", data={"csrf": csrf(client)}).status_code == 400
    both = {"csrf": csrf(client), "id": seeded.letters[1], "all": "1"}
    assert client.post("/dlq/replay", data=both).status_code == 400
    unknown = {"csrf": csrf(client), "id": "inventory.dlq:0:77"}
    assert client.post("/dlq/replay", data=unknown).status_code == 404
    assert letters_listed(client) == seeded.letters[1:]


def test_purge_asks_first(client: TestClient, seeded: Seeded) -> None:
    sign_in(client)
    data = {"csrf": csrf(client), "all": "1", "service": "inventory"}
    confirm = client.post("/dlq/purge", data=data)
    assert confirm.status_code == 200 and "Purge 2 dead letter(s)?" in confirm.text
    assert letters_listed(client) == seeded.letters  # asking changed nothing
    shown = re.findall(r'name="id" value="([^"]+)"', confirm.text)
    assert shown == seeded.letters  # what is confirmed is what was shown
    done = client.post(
        "/dlq/purge",
        data={"csrf": csrf(client), "id": shown, "confirm": "yes"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and "purged=2" in done.headers["location"]
    assert letters_listed(client) == []


def test_offset_reset_confirms_and_refuses_live_groups(client: TestClient, seeded: Seeded) -> None:
    sign_in(client)
    form = {"csrf": csrf(client), "to": "earliest"}
    confirm = client.post("/groups/inventory/reset", data=form)
    assert confirm.status_code == 200 and "Reset group inventory?" in confirm.text

    async def committed() -> list[int | None]:
        async with connect(seeded.url) as broker:
            info = await ops.describe_group(broker, "inventory")
            return [p.committed for p in info.partitions]

    before = asyncio.run(committed())
    for bad in ({"to": "sideways"}, {"to": "time", "time": "soon"}, {"to": "offset"}):
        response = client.post("/groups/inventory/reset", data={"csrf": csrf(client), **bad})
        assert response.status_code == 400, bad
    unknown_topic = {"csrf": csrf(client), "to": "earliest", "topic": "nope", "confirm": "yes"}
    assert client.post("/groups/inventory/reset", data=unknown_topic).status_code == 404
    assert client.post("/groups/nope/reset", data=form).status_code == 404
    assert asyncio.run(committed()) == before

    done = client.post("/groups/inventory/reset", data={**form, "confirm": "yes"})
    assert done.status_code == 200 and 'data-testid="reset"' in done.text
    assert all(n == 0 for n in asyncio.run(committed()))

    # a live member: refused as `tidings replay` refuses it
    async def with_member() -> int:
        async with (
            connect(seeded.url) as broker,
            broker.subscribe("inventory", ["order-events"]) as consumer,
        ):
            await consumer.start()
            return await asyncio.to_thread(
                lambda: (
                    client.post(
                        "/groups/inventory/reset", data={**form, "confirm": "yes"}
                    ).status_code
                )
            )

    assert asyncio.run(with_member()) == 409


def test_sign_out(client: TestClient) -> None:
    sign_in(client)
    assert "sign out" in client.get("/").text
    response = client.post("/logout", data={"csrf": csrf(client)}, follow_redirects=False)
    assert response.status_code == 303
    assert "sign in" in client.get("/").text


def test_login_redirects_only_to_this_site(client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"csrf": csrf(client), "token": TOKEN, "next": "//evil.test/x"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


# dashboards -----------------------------------------------------------------------------


def test_dashboard_from_a_provider(seeded: Seeded, tmp_path: Path) -> None:
    for client in _client(seeded, tmp_path, dashboard="tests.test_console:dashboard_provider"):
        assert 'hx-get="/dashboard/panels"' in client.get("/dashboard").text
        panels = client.get("/dashboard/panels").text
        assert panels.count('data-testid="panel"') == 4 and ">42<" in panels.replace(" ", "")


def test_dashboard_errors_are_shown(seeded: Seeded, tmp_path: Path) -> None:
    for client in _client(seeded, tmp_path, dashboard="tests.test_console:broken_provider"):
        assert "not a dashboard document" in client.get("/dashboard/panels").text
    for client in _client(seeded, tmp_path, dashboard="http://127.0.0.1:9/nothing"):
        assert "cannot be shown" in client.get("/dashboard/panels").text
    for client in _client(seeded, tmp_path):
        assert client.get("/dashboard/panels").status_code == 404
    with pytest.raises(ConfigError):
        next(_client(seeded, tmp_path, dashboard="tests.nothing_here:x"))


# configuration --------------------------------------------------------------------------


def test_token_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token, path = console_token(tmp_path / "data")
    assert path is not None and (path.stat().st_mode & 0o777) == 0o600 and len(token) > 30
    assert console_token(tmp_path / "data") == (token, path)  # the same on the next run
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        console_token(tmp_path / "data")
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert console_token(tmp_path / "data") == ("from-env", None)
    with pytest.raises(ConfigError):
        ConsoleConfig(broker_url="memory://", token="", index_path="x")


def test_files_go_next_to_the_broker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/bus.db"
    assert data_directory(url) == tmp_path / "sub"
    assert index_path(url) == str(tmp_path / "sub" / "console-index.db")
    assert index_path("kafka://127.0.0.1:9092").endswith(".db")


def test_cli_console_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tidings.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["console", "--help"])
    assert shown.exit_code == 0 and "--dashboard" in shown.output and "--jaeger" in shown.output
    missing = runner.invoke(app, ["--broker", f"sqlite:///{tmp_path}/none.db", "console"])
    assert missing.exit_code == 2 and "no broker database" in missing.output
    bad_port = runner.invoke(app, ["--broker", "memory://", "console", "--port", "70000"])
    assert bad_port.exit_code == 2


# Kafka ----------------------------------------------------------------------------------


async def _seed_kafka(bootstrap: str, tag: str) -> Seeded:
    seeded = Seeded()
    seeded.url = f"kafka://{bootstrap}"
    topic, letters = f"console-{tag}-orders", f"console-{tag}-svc.dlq"
    async with connect(seeded.url) as broker:
        await broker.admin.create_topic(topic, 2)
        await broker.admin.create_topic(letters, 1)
        placed = Event(
            type="ORDER_PLACED",
            key=f"ord-{tag}",
            source="orders",
            correlation_id=f"c-{tag}",
            data={},
        )
        reserved = Event(
            type="INVENTORY_RESERVED",
            key=f"ord-{tag}",
            source="inventory",
            correlation_id=f"c-{tag}",
            causation_id=placed.id,
            data={},
        )
        await broker.publish_events(topic, [placed, reserved])
        async with broker.subscribe(f"console-{tag}-svc", [topic]) as consumer:
            batch = await consumer.fetch(timeout=30)
            assert batch is not None
            await consumer.commit(batch)
        [record] = await require(broker, CanRead, "read").read(
            TopicPartition(topic, batch.partition), batch.records[0].offset, 1
        )
        letter = dlq.letter(
            record,
            reason="permanent-error",
            error=ValueError("x"),
            handler=f"console-{tag}-svc.h",
            attempts=1,
        )
        published = await broker.publish(letters, [letter])
        seeded.placed = placed
        seeded.letters = [f"{letters}:0:{published[0].offset}"]
    return seeded


def test_console_on_kafka(tmp_path: Path) -> None:
    import uuid

    from tests.support import server_setting

    bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
    tag = uuid.uuid4().hex[:8]
    seeded = asyncio.run(_seed_kafka(bootstrap, tag))
    topic, group = f"console-{tag}-orders", f"console-{tag}-svc"
    for client in _client(seeded, tmp_path):
        console = client.app.state.console  # type: ignore[attr-defined]
        while client.portal.call(console.index.update, console.broker):
            pass
        for page in (
            "/",
            "/topics",
            f"/topics/{topic}",
            f"/topics/{topic}?key=ord-{tag}",
            f"/topics/{topic}?since=2000-01-01T00:00:00",
            f"/groups/{group}",
            f"/groups/{group}/lag",
            f"/dlq?service={group}",
            f"/dlq/{seeded.letters[0]}",
            f"/trace/c-{tag}",
        ):
            response = client.get(page)
            assert response.status_code == 200, (page, response.text[:300])
        trace = client.get(f"/trace/c-{tag}").text
        assert trace.index("ORDER_PLACED") < trace.index("INVENTORY_RESERVED")
        found = client.get("/search", params={"q": f"ord-{tag}"}, follow_redirects=False)
        assert found.headers["location"] == f"/trace/c-{tag}"
        assert f'data-topic="{topic}"' in client.get("/").text
        assert client.get(f"/topics/{topic}/0/999999").status_code == 400
        sign_in(client)
        replay = {"id": seeded.letters[0], "csrf": csrf(client)}
        assert client.post("/dlq/replay", data=replay, follow_redirects=False).status_code == 303
        assert seeded.letters[0] not in client.get(f"/dlq?service={group}").text


def test_unpublishable_outbox_rows_are_dead_letters_too(client: TestClient, seeded: Seeded) -> None:
    async def set_aside() -> str:
        async with connect(seeded.url) as broker:
            await broker.admin.create_topic("orders.dlq", 1)
            event = Event(type="ORDER_PLACED", key="ord-big", source="orders", data={"x": 1})
            letter = dlq.unpublishable(
                "no-such-topic", event.id, event.to_message(), ValueError("no topic"), 1024
            )
            [where] = await broker.publish("orders.dlq", [letter])
            return f"orders.dlq:0:{where.offset}"

    position = asyncio.run(set_aside())
    listing = client.get("/dlq?service=orders&reason=unpublishable")
    assert listing.status_code == 200 and position in listing.text
    detail = client.get(f"/dlq/{position}")
    assert detail.status_code == 200 and "unpublishable" in detail.text
