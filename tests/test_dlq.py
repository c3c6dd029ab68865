"""Dead letters end to end, as a user meets them: services on the embedded SQLite broker and
stores dead-letter events, then `tidings dlq list|show|replay|purge` inspects and fixes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import tidings.cli.dlq
from tests.support import eventually, read_topic
from tidings import ConfigError, Event, Message, connect, dlq, event_to_message
from tidings.brokers.base import Broker
from tidings.cli import app
from tidings.records import Record
from tidings.retry import PermanentError, Retry
from tidings.schema import EventModel
from tidings.service import Context, Service


class ParcelBooked(EventModel, type="DLQTEST_PARCEL_BOOKED", version=1):
    order_id: str
    weight: float


RETRY = Retry(immediate=0, max_attempts=2, initial_delay=0.01)
TOPIC = "parcel-events"

# What fails right now; the tests "fix the code" by removing entries.
BROKEN_RESERVE: set[str] = set()
BROKEN_SHIP: set[str] = set()


# helpers (the small ones of tests/test_service.py) -------------------------------------


@pytest.fixture
def urls(tmp_path: Path) -> dict[str, str]:
    return {
        "broker": f"sqlite:///{tmp_path}/bus.db",
        "inventory": f"sqlite:///{tmp_path}/inventory.db",
        "shipping": f"sqlite:///{tmp_path}/shipping.db",
    }


def make_cli(url: str) -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, ["--broker", url, *args], input=input)

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_clean_failure(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


# the services ------------------------------------------------------------------------


def inventory_service(urls: dict[str, str]) -> Service:
    inventory = Service(
        "inventory",
        broker=urls["broker"],
        store=urls["inventory"],
        migrations=[
            "CREATE TABLE reserved (order_id TEXT NOT NULL)",
            "CREATE TABLE audited (event_id TEXT NOT NULL)",
        ],
        retry=RETRY,
    )

    # `audit` is registered before `reserve`: see test_later_handlers_still_run_when_an_earlier_
    # one_is_dead_lettered for what happens to handlers registered after a failing one.
    @inventory.handler(TOPIC)
    async def audit(event: Event, ctx: Context) -> None:
        await ctx.execute("INSERT INTO audited(event_id) VALUES (?)", (event.id,))

    @inventory.handler(TOPIC)
    async def reserve(event: ParcelBooked, ctx: Context) -> None:
        # The effect is written before the failure: a failed attempt must roll it back.
        await ctx.execute("INSERT INTO reserved(order_id) VALUES (?)", (event.order_id,))
        if event.order_id in BROKEN_RESERVE:
            raise RuntimeError(f"warehouse down for {event.order_id}")

    return inventory


def shipping_service(urls: dict[str, str]) -> Service:
    shipping = Service(
        "shipping",
        broker=urls["broker"],
        store=urls["shipping"],
        migrations=["CREATE TABLE shipped (event_id TEXT NOT NULL)"],
        retry=RETRY,
    )

    @shipping.handler(TOPIC)
    async def ship(event: Event, ctx: Context) -> None:
        await ctx.execute("INSERT INTO shipped(event_id) VALUES (?)", (event.id,))
        if event.data.get("orderId") in BROKEN_SHIP:
            raise PermanentError("no delivery address")

    return shipping


async def count(service: Service, sql: str, *params: object) -> int:
    rows = await service.store.query(sql, params)
    return int(rows[0][0])


async def caught_up(broker: Broker, *groups: str) -> None:
    """Wait until every group has committed every record of TOPIC (so it has handled them)."""

    async def check() -> bool:
        for group in groups:
            try:
                info = await broker.admin.describe_group(group)
            except ConfigError:  # nothing committed yet
                return False
            parts = [p for p in info.partitions if p.topic == TOPIC]
            if not parts or any(p.lag or p.committed != p.end_offset for p in parts):
                return False
        return True

    await eventually(check)


def booked(order_id: str) -> Event:
    return ParcelBooked(order_id=order_id, weight=1.5).to_event(key=order_id)


# the user's journey --------------------------------------------------------------------


async def test_list_show_replay_and_purge_dead_letters(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    BROKEN_RESERVE.clear()
    BROKEN_RESERVE.update({"broken-1", "broken-2"})
    BROKEN_SHIP.clear()
    BROKEN_SHIP.add("ship-broken")
    invoke = make_cli(urls["broker"])

    async def cli(*args: str, input: str | None = None) -> Result:
        return await asyncio.to_thread(invoke, *args, input=input)

    inventory = inventory_service(urls)
    shipping = shipping_service(urls)
    events = {name: booked(name) for name in ("a", "broken-1", "broken-2", "ship-broken", "b")}
    invalid = Event(type="DLQTEST_PARCEL_BOOKED", key="bad", data={"orderId": "no-weight"})
    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic(TOPIC, 1)
        await broker.publish_events(TOPIC, [events["a"], events["broken-1"], events["broken-2"]])
        await broker.publish(TOPIC, [Message(b"not an event \x00\x01", key=b"junk")])
        await broker.publish_events(TOPIC, [invalid, events["ship-broken"], events["b"]])
    await running(inventory)
    await running(shipping)

    async def six_letters() -> bool:
        result = await cli("dlq", "list", "--json")
        return result.exit_code == 0 and len(json.loads(result.stdout)) == 6

    await eventually(six_letters)

    # list ------------------------------------------------------------------------------
    letters = ok_json(await cli("dlq", "list", "--json"))
    by_id = {(x["id"], x["handler"]): x for x in letters}
    broken1 = by_id[events["broken-1"].id, "inventory.reserve"]
    assert broken1["reason"] == "retries-exhausted"
    assert broken1["attempts"] == 2
    assert broken1["exception"] == "builtins.RuntimeError"
    assert broken1["message"] == "warehouse down for broken-1"
    assert broken1["original"] == {"topic": TOPIC, "partition": 0, "offset": 1}
    assert broken1["dlq"] == {"topic": "inventory.dlq", "partition": 0, "offset": 0}
    assert broken1["service"] == "inventory"
    assert broken1["status"] == "dead"
    assert broken1["event"]["id"] == events["broken-1"].id
    assert broken1["event"]["data"] == {"orderId": "broken-1", "weight": 1.5}
    assert "value" not in broken1 and "record" not in broken1
    assert by_id[events["broken-2"].id, "inventory.reserve"]["reason"] == "retries-exhausted"
    assert by_id[invalid.id, "inventory.reserve"]["reason"] == "invalid-event"
    assert "weight" in by_id[invalid.id, "inventory.reserve"]["message"]
    ship = by_id[events["ship-broken"].id, "shipping.ship"]
    assert (ship["reason"], ship["attempts"]) == ("permanent-error", 1)
    undecodable = [x for x in letters if x["reason"] == "undecodable"]
    assert sorted(x["dlq"]["topic"] for x in undecodable) == ["inventory.dlq", "shipping.dlq"]
    for letter in undecodable:
        assert letter["handler"] is None and letter["event"] is None
        assert letter["id"] == "{topic}:{partition}:{offset}".format(**letter["dlq"])
        assert "cannot decode the event at parcel-events[0]@3" in letter["message"]
        assert "cannot decode" in letter["decode_error"]
        assert letter["original"]["offset"] == 3

    table = await cli("dlq", "list")
    assert table.exit_code == 0, table.output
    assert events["broken-1"].id in table.stdout  # whole, on one line, to copy and paste
    for text in ("retries-exhausted", "inventory.reserve", "undecodable", "6 dead letter(s)"):
        assert text in table.stdout
    assert f"{TOPIC}[0]@1" in table.stdout

    filtered = ok_json(
        await cli(
            "dlq", "list", "--service", "inventory", "--reason", "retries-exhausted", "--json"
        )
    )
    assert [x["original"]["offset"] for x in filtered] == [1, 2]
    assert len(ok_json(await cli("dlq", "list", "--handler", "ship", "--json"))) == 1
    assert len(ok_json(await cli("dlq", "list", "--service", "shipping", "--json"))) == 2
    typed = ok_json(await cli("dlq", "list", "--type", "DLQTEST_PARCEL_BOOKED", "--json"))
    assert len(typed) == 4
    assert ok_json(await cli("dlq", "list", "--topic", "elsewhere", "--json")) == []
    assert "no dead letters" in (await cli("dlq", "list", "--topic", "elsewhere")).stdout

    # show ------------------------------------------------------------------------------
    shown = await cli("dlq", "show", events["broken-1"].id)
    assert shown.exit_code == 0, shown.output
    assert "Traceback (most recent call last)" in shown.stdout
    assert "RuntimeError: warehouse down for broken-1" in shown.stdout
    assert "tidings-dlq-reason: retries-exhausted" in shown.stdout
    assert "tidings-dlq-handler: inventory.reserve" in shown.stdout
    assert "content-type: application/cloudevents+json" in shown.stdout
    assert '"orderId": "broken-1"' in shown.stdout
    raw = await cli("dlq", "show", undecodable[0]["id"])
    assert raw.exit_code == 0, raw.output
    assert "does not decode" in raw.stdout
    assert "not an event \\x00\\x01" in raw.stdout
    assert ok_json(await cli("dlq", "show", events["broken-2"].id, "--json"))[0]["attempts"] == 2

    # replay one, fixed: only the failed handler runs it, exactly once --------------------
    before = inventory.stats.processed
    BROKEN_RESERVE.discard("broken-1")
    replayed = await cli("dlq", "replay", events["broken-1"].id)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead letter(s)" in replayed.stdout
    assert f"{TOPIC}[0]@7" in replayed.stdout

    async def reserved_broken1() -> bool:
        sql = "SELECT count(*) FROM reserved WHERE order_id = 'broken-1'"
        return await count(inventory, sql) == 1

    await eventually(reserved_broken1)
    async with connect(urls["broker"]) as broker:
        await caught_up(broker, "inventory", "shipping")
        [again] = (await read_topic(broker, TOPIC))[7:]
        original = (await read_topic(broker, TOPIC))[1]
    assert (again.value, again.key) == (original.value, original.key)
    assert again.header(dlq.REPLAY_FOR) == b"inventory.reserve"
    assert again.header(dlq.REASON) is None
    await asyncio.sleep(0.3)
    assert await count(inventory, "SELECT count(*) FROM reserved WHERE order_id = 'broken-1'") == 1
    audited = "SELECT count(*) FROM audited WHERE event_id = ?"
    assert await count(inventory, audited, events["broken-1"].id) == 1
    shipped = "SELECT count(*) FROM shipped WHERE event_id = ?"
    assert await count(shipping, shipped, events["broken-1"].id) == 1
    assert inventory.stats.processed == before + 1

    after = ok_json(await cli("dlq", "list", "--json"))
    assert len(after) == 5
    assert events["broken-1"].id not in {x["id"] for x in after}
    everything = ok_json(await cli("dlq", "list", "--all", "--json"))
    assert len(everything) == 6
    [resolved] = [x for x in everything if x["id"] == events["broken-1"].id]
    assert resolved["status"] == "replayed" and resolved["resolved_at"]
    assert "replayed" in (await cli("dlq", "list", "--all")).stdout
    assert_clean_failure(
        await cli("dlq", "replay", events["broken-1"].id), "error: dead letter", "already replayed"
    )

    # replay by filter while still broken: a new dead letter -----------------------------
    result = ok_json(
        await cli(
            "dlq", "replay", "--handler", "reserve", "--reason", "retries-exhausted", "--json"
        )
    )
    assert result["count"] == 1 and result["replayed"][0]["id"] == events["broken-2"].id
    assert result["replayed"][0]["offset"] == 8

    async def broken2_dead_again() -> bool:
        listed = ok_json(await cli("dlq", "list", "--reason", "retries-exhausted", "--json"))
        return [x["original"]["offset"] for x in listed] == [8]

    await eventually(broken2_dead_again)
    [dead_again] = ok_json(await cli("dlq", "list", "--reason", "retries-exhausted", "--json"))
    assert dead_again["id"] == events["broken-2"].id
    assert dead_again["dlq"]["offset"] > broken1["dlq"]["offset"]
    assert dead_again["handler"] == "inventory.reserve" and dead_again["attempts"] == 2
    assert "tidings-replay-for" not in dead_again["headers"]
    assert await count(inventory, "SELECT count(*) FROM reserved WHERE order_id = 'broken-2'") == 0

    # bad inputs ------------------------------------------------------------------------
    assert_clean_failure(await cli("dlq", "show", "no-such-id"), "no dead letter with id")
    assert_clean_failure(await cli("dlq", "replay", "no-such-id"), "no dead letter with id")
    assert_clean_failure(
        await cli("dlq", "replay"), "say which dead letters", "--all", "nothing was replayed"
    )
    assert_clean_failure(await cli("dlq", "purge", "--yes"), "say which dead letters")
    assert_clean_failure(
        await cli("dlq", "replay", events["broken-2"].id, "--all"), "ids or --all, not both"
    )
    assert_clean_failure(
        await cli("dlq", "replay", undecodable[0]["id"]), "does not decode into an event"
    )
    assert_clean_failure(
        await cli("dlq", "purge", "--reason", "undecodable"),
        "purge needs --yes when stdin is not a terminal",
    )
    assert len(ok_json(await cli("dlq", "list", "--json"))) == 5

    # fix everything, replay --all: undecodable ones are skipped --------------------------
    BROKEN_RESERVE.clear()
    BROKEN_SHIP.clear()
    everything_replayed = await cli("dlq", "replay", "--all")
    assert everything_replayed.exit_code == 0, everything_replayed.output
    assert "replayed 3 dead letter(s)" in everything_replayed.stdout
    assert "skipped 2 dead letter(s) that do not decode" in everything_replayed.stderr

    async def fixed() -> bool:
        reserved = "SELECT count(*) FROM reserved WHERE order_id = 'broken-2'"
        ship_sql = "SELECT count(*) FROM shipped WHERE event_id = ?"
        return (
            await count(inventory, reserved) == 1
            and await count(shipping, ship_sql, events["ship-broken"].id) == 1
        )

    await eventually(fixed)

    async def invalid_dead_again() -> bool:
        listed = ok_json(await cli("dlq", "list", "--json"))
        return sorted(x["reason"] for x in listed) == ["invalid-event", *["undecodable"] * 2]

    await eventually(invalid_dead_again)
    async with connect(urls["broker"]) as broker:
        await caught_up(broker, "inventory", "shipping")
    # Every effect exactly once: failed attempts rolled back, replays ran only where they failed.
    assert await count(inventory, "SELECT count(*) FROM reserved") == 5  # all but `invalid`
    assert await count(inventory, "SELECT count(*) FROM audited") == 6  # every decodable event
    assert await count(shipping, "SELECT count(*) FROM shipped") == 6

    # purge the rest --------------------------------------------------------------------
    purged = await cli("dlq", "purge", "--all", "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 3 dead letter(s)" in purged.stdout
    assert ok_json(await cli("dlq", "list", "--json")) == []
    statuses = [x["status"] for x in ok_json(await cli("dlq", "list", "--all", "--json"))]
    assert sorted(statuses) == ["purged"] * 3 + ["replayed"] * 5
    nothing = await cli("dlq", "replay", "--all")
    assert nothing.exit_code == 0 and "replayed 0 dead letter(s)" in nothing.stdout


async def test_later_handlers_still_run_when_an_earlier_one_is_dead_lettered(
    urls: dict[str, str], running: Callable[[Service], Awaitable[None]]
) -> None:
    service = Service(
        "twohandlers",
        broker=urls["broker"],
        store=urls["inventory"],
        migrations=["CREATE TABLE seen (event_id TEXT NOT NULL)"],
        retry=RETRY,
    )

    @service.handler(TOPIC)
    async def fails(event: Event, ctx: Context) -> None:
        raise RuntimeError("always")

    @service.handler(TOPIC)
    async def records(event: Event, ctx: Context) -> None:
        await ctx.execute("INSERT INTO seen(event_id) VALUES (?)", (event.id,))

    event = booked("x")
    async with connect(urls["broker"]) as broker:
        await broker.admin.create_topic(TOPIC, 1)
        await broker.publish_events(TOPIC, [event])
    await running(service)
    async with connect(urls["broker"]) as broker:
        await caught_up(broker, "twohandlers")
    assert service.stats.dead_lettered == 1
    assert await count(service, "SELECT count(*) FROM seen") == 1


def dead_letter_message(
    event: Event,
    *,
    topic: str,
    offset: int,
    handler: str | None,
    error: Exception,
    binary: bool = False,
) -> Message:
    """A dead letter as the dispatcher writes it, for a record at `topic[0]@offset`."""
    original = event_to_message(event, binary=binary)
    record = Record(topic, 0, offset, 0, original.value, original.key, original.headers)
    headers = dlq.describe(
        record,
        reason=dlq.REASON_PERMANENT,
        error=error,
        traceback_text="Traceback (most recent call last):\n  ...\nValueError: nope\n",
        handler=handler,
        attempts=1,
    )
    return Message(original.value, original.key, original.headers + headers)


def seed(url: str, topic: str, messages: list[Message], partitions: int = 1) -> None:
    async def go() -> None:
        async with connect(url) as broker:
            await broker.admin.create_topic(topic, partitions, exist_ok=True)
            await broker.publish(topic, messages)

    asyncio.run(go())


def test_purge_confirmation_missing_topic_and_paging(urls: dict[str, str]) -> None:
    url = urls["broker"]
    cli = make_cli(url)
    kept, gone = Event(type="KEPT", key="k", data={}), Event(type="GONE", data={})
    seed(url, "live", [])
    seed(
        url,
        "legacy.dlq",
        [
            dead_letter_message(
                kept,
                topic="live",
                offset=5,
                handler="legacy.h",
                error=ValueError("nope"),
                binary=True,
            ),
            dead_letter_message(gone, topic="gone", offset=0, handler=None, error=KeyError(1)),
        ],
    )
    # A topic that only looks like a dead-letter topic's neighbour is not one.
    seed(url, "legacy.dlq-archive", [Message(b"x")])

    assert_clean_failure(cli("dlq", "replay", gone.id), "original topic 'gone' no longer exists")
    assert_clean_failure(
        cli("dlq", "replay", kept.id, gone.id), "original topic 'gone' no longer exists"
    )
    assert len(ok_json(cli("dlq", "list", "--json"))) == 2  # nothing replayed by the refusals

    # purge asks on a terminal, and does nothing unless told yes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tidings.cli.dlq, "_interactive", lambda: True)
        declined = cli("dlq", "purge", gone.id, input="n\n")
        assert declined.exit_code == 1, declined.output
        assert "Purge these 1 dead letter(s)?" in declined.stderr
        assert "nothing was purged" in declined.stderr
        assert len(ok_json(cli("dlq", "list", "--json"))) == 2
        accepted = cli("dlq", "purge", gone.id, "--json", input="y\n")
        assert accepted.exit_code == 0, accepted.output
        # (CliRunner echoes the typed answer into stdout; a terminal would not.)
        assert json.loads(accepted.stdout[accepted.stdout.index("{") :])["count"] == 1
    [left] = ok_json(cli("dlq", "list", "--json"))
    assert left["id"] == kept.id and left["handler"] == "legacy.h"
    assert left["event"]["headers"] == {}  # dead-letter headers are not event headers
    shown = cli("dlq", "show", gone.id)
    assert shown.exit_code == 0, shown.output
    assert "status:       purged at" in shown.stdout
    assert_clean_failure(cli("dlq", "purge", gone.id, "--yes"), "already purged")

    # replay with a handler: tidings-replay-for names it; the key picks the partition
    replayed = ok_json(cli("dlq", "replay", "--service", "legacy", "--json"))
    assert replayed["count"] == 1 and replayed["replayed"][0]["topic"] == "live"

    async def live_records() -> list[Record]:
        async with connect(url) as broker:
            return await read_topic(broker, "live")

    [record] = asyncio.run(live_records())
    assert record.header(dlq.REPLAY_FOR) == b"legacy.h"
    assert not any(name.startswith("tidings-dlq-") for name, _ in record.headers)
    assert record.key == b"k"
    assert record.header("ce_id") == kept.id.encode()  # binary mode, as it was

    # many letters over several partitions are all read (several pages each)
    many = [
        dead_letter_message(
            Event(type="MANY", data={"n": n}), topic="live", offset=n, handler=None, error=OSError()
        )
        for n in range(2 * dlq.READ_PAGE + 10)
    ]
    seed(url, "bulk.dlq", many, partitions=2)
    listed = ok_json(cli("dlq", "list", "--service", "bulk", "--json"))
    assert len(listed) == len(many)
    assert len({x["id"] for x in listed}) == len(many)
    purged = cli("dlq", "purge", "--type", "MANY", "--yes")
    assert purged.exit_code == 0, purged.output
    assert f"purged {len(many)} dead letter(s)" in purged.stdout
    assert ok_json(cli("dlq", "list", "--json")) == []
