"""Giant events: `Service(max_event_bytes=...)` at `ctx.publish`, and the claim check - a
payload kept in a blob store, the event carrying `dataref`, handlers receiving the payload - on
the embedded broker with SQLite stores and on Kafka with PostgreSQL stores."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.sites import BACKENDS, Site, site
from tests.support import eventually, read_topic
from tidings import (
    BlobInfo,
    BlobNotFoundError,
    ConfigError,
    Context,
    DirectoryBlobStore,
    DuplicateEventError,
    Event,
    EventModel,
    MessageTooLargeError,
    Retry,
    Service,
    StorageError,
    ops,
)
from tidings.cli import app
from tidings.runtime.claimcheck import collect_garbage, default_blob_store

MB = 1024 * 1024


class Uploaded(EventModel, type="FILE_UPLOADED", version=1):
    name: str
    content: str


@pytest.fixture(params=BACKENDS)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    with site(request.param, tmp_path) as chosen:
        yield chosen


async def letters_of(service: Service) -> list[ops.DeadLetter]:
    where = ops.DeadLetterFilter(service=service.name)
    return await ops.select_dead_letters(service.broker, where=where)


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def pair(where: Site, **producer: object) -> tuple[Service, Service, str, list[Event]]:
    """A producer and a consumer service on `where`, sharing its blob directory; the consumer
    records what its handler received."""
    topic = where.name("uploads")
    received: list[Event] = []
    producer_name, consumer_name = where.name("producer"), where.name("archive")
    source = Service(
        producer_name,
        broker=where.broker,
        store=where.store(producer_name),
        topics={topic: 2},
        blobs=str(where.blobs),
        **producer,  # type: ignore[arg-type]
    )
    sink = Service(
        consumer_name,
        broker=where.broker,
        store=where.store(consumer_name),
        blobs=str(where.blobs),
        migrations=["CREATE TABLE files (id TEXT PRIMARY KEY, size BIGINT, sha TEXT)"],
    )

    @sink.handler(topic)
    async def archive(event: Event, ctx: Context) -> None:
        data = event.data
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        received.append(event)
        await ctx.execute(
            "INSERT INTO files(id, size, sha) VALUES (?, ?, ?)",
            (event.id, len(payload), hashlib.sha256(payload).hexdigest()),
        )

    return source, sink, topic, received


@pytest.fixture
async def services() -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        await service.close()


async def test_a_50_mb_payload_goes_through_a_flow_by_claim_check(
    where: Site, running: Callable[[Service], object]
) -> None:
    source, sink, topic, received = pair(where, claim_check_over=256 * 1024)
    payload = os.urandom(50 * MB)
    digest = hashlib.sha256(payload).hexdigest()
    await running(source)  # type: ignore[misc]
    await running(sink)  # type: ignore[misc]
    async with source.transaction() as ctx:  # over the threshold: claim-checked by itself
        big = ctx.publish(topic, Event(type="ARCHIVE", key="f-1", data=payload))
        small = ctx.publish(topic, Uploaded(name="readme", content="x" * 1000), key="f-1")
        doc = ctx.publish(
            topic, Uploaded(name="doc", content="y" * 2000), key="f-2", claim_check=True
        )
    del payload
    assert big.dataref is not None and small.dataref is None and doc.dataref is not None

    async def archived() -> bool:
        return len(await sink.store.query("SELECT id FROM files")) == 3

    await eventually(archived, timeout=120)
    rows = {row[0]: row[1:] for row in await sink.store.query("SELECT id, size, sha FROM files")}
    assert rows[big.id] == (50 * MB, digest)
    doc_json = json.dumps({"name": "doc", "content": "y" * 2000}).encode()
    assert rows[doc.id] == (len(doc_json), hashlib.sha256(doc_json).hexdigest())
    by_id = {event.id: event for event in received}
    assert by_id[doc.id].data == {"name": "doc", "content": "y" * 2000}
    assert by_id[big.id].dataref == big.dataref  # it says where the payload came from

    records = await read_topic(source.broker, topic)
    sizes = {json.loads(r.value)["id"]: len(r.value) for r in records}
    assert sizes[big.id] < 2048 and sizes[doc.id] < 2048  # the events carry references only
    files = blob_files(where.blobs)
    compact = json.dumps({"name": "doc", "content": "y" * 2000}, separators=(",", ":"))
    assert sorted(f.stat().st_size for f in files) == [len(compact), 50 * MB]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(where.blobs.stat().st_mode) == 0o700


async def test_max_event_bytes_refuses_an_event_at_publish_and_writes_nothing(
    tmp_path: Path, services: list[Service]
) -> None:
    broker = f"sqlite:///{tmp_path}/bus.db?max_message_bytes=20000"
    capped = Service(
        "capped",
        broker=broker,
        store=f"sqlite:///{tmp_path}/c.db",
        topics={"t": 1},
        max_event_bytes=1000,
        blobs=str(tmp_path / "blobs"),
        migrations=["CREATE TABLE notes (n INTEGER)"],
    )
    services.append(capped)
    async with capped.transaction() as ctx:
        with pytest.raises(MessageTooLargeError, match=r"max_event_bytes=1000\) allows at most"):
            ctx.publish("t", Event(type="T", key="k", data="x" * 1000))
        ctx.publish("t", Event(type="T", key="k", data="fits"))
        await ctx.execute("INSERT INTO notes VALUES (1)")  # the transaction carries on
    assert await capped.store.outbox_size() == 1
    assert await capped.store.query("SELECT n FROM notes") == [(1,)]

    roomy = Service(
        "roomy",
        broker=broker,
        store=f"sqlite:///{tmp_path}/r.db",
        topics={"t": 1},
        max_event_bytes=10 * MB,
    )
    services.append(roomy)
    async with roomy.transaction() as ctx:  # never above the broker's limit
        with pytest.raises(MessageTooLargeError, match="the broker accepts at most 20000"):
            ctx.publish("t", Event(type="T", data="x" * 30000))
        with pytest.raises(MessageTooLargeError, match="claim_check=True"):
            ctx.publish("t", Event(type="T", data="x" * 30000), claim_check=False)
    assert await roomy.store.outbox_size() == 0
    for wrong in (0, -5, 1.5, "1000"):
        with pytest.raises(ConfigError, match="max_event_bytes"):
            Service("bad", max_event_bytes=wrong)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="claim_check_over"):
        Service("bad", claim_check_over=0)


async def test_a_claim_check_keeps_an_event_under_max_event_bytes(
    tmp_path: Path, services: list[Service]
) -> None:
    service = Service(
        "small",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/s.db",
        topics={"t": 1},
        max_event_bytes=2000,
        claim_check_over=1500,
        blobs=str(tmp_path / "b"),
    )
    services.append(service)
    async with service.transaction() as ctx:
        event = ctx.publish("t", Event(type="T", key="k", data={"text": "z" * 100_000}))
    assert event.dataref is not None and event.dataref.startswith("tidings-blob:small/")
    assert [f.name for f in blob_files(tmp_path / "b")] == [event.dataref.rsplit("/", 1)[1]]


async def test_blobs_of_a_rolled_back_transaction_are_deleted(
    tmp_path: Path, services: list[Service]
) -> None:
    service = Service(
        "writer",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/w.db",
        topics={"t": 1},
        blobs=str(tmp_path / "blobs"),
    )
    services.append(service)
    same = Event(type="T", key="k", data=b"payload" * 1000)
    with pytest.raises(DuplicateEventError):  # fails after the blobs were written
        async with service.transaction() as ctx:
            ctx.publish("t", same, claim_check=True)
            ctx.publish("t", same, claim_check=True)
    with pytest.raises(RuntimeError):  # fails before anything was written
        async with service.transaction() as ctx:
            ctx.publish("t", Event(type="T", data=b"never"), claim_check=True)
            raise RuntimeError("changed my mind")
    assert blob_files(tmp_path / "blobs") == []
    assert await service.store.outbox_size() == 0


async def test_a_failing_handlers_blobs_do_not_outlive_its_attempts(
    where: Site, running: Callable[[Service], object]
) -> None:
    """Each attempt writes its blobs when its transaction flushes, then fails (the same event
    id twice: DuplicateEventError from the outbox, after the blobs): they go with the
    rollback, of the batch's transaction and then of the handler's savepoint."""
    topic, out = where.name("in"), where.name("out")
    name = where.name("flaky")
    attempts: list[int] = []
    flaky = Service(
        name,
        broker=where.broker,
        store=where.store(name),
        topics={topic: 1, out: 1},
        blobs=str(where.blobs),
        retry=Retry(immediate=2, max_attempts=3),
    )

    @flaky.handler(topic)
    async def relay(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        twice = Event(type="BIG", key="k", data=b"b" * 100_000)
        ctx.publish(out, twice, claim_check=True)
        ctx.publish(out, twice, claim_check=True)

    await running(flaky)  # type: ignore[misc]
    async with flaky.transaction() as ctx:
        ctx.publish(topic, Event(type="GO", key="k"))

    async def dead_lettered() -> bool:
        return len(await letters_of(flaky)) == 1

    await eventually(dead_lettered, timeout=60)
    [letter] = await letters_of(flaky)
    assert letter.exception == "tidings.errors.DuplicateEventError"
    assert letter.reason == "permanent-error" and len(attempts) == 2  # batch, then alone
    assert blob_files(where.blobs) == []


async def test_a_missing_blob_is_dead_lettered_and_the_partition_moves_on(
    where: Site, running: Callable[[Service], object]
) -> None:
    source, sink, topic, received = pair(where)
    await source.start()
    async with source.transaction() as ctx:
        lost = ctx.publish(topic, Event(type="A", key="k", data=b"lost" * 100), claim_check=True)
        broken = ctx.publish(topic, Event(type="A", key="k", data=[1, 2]), claim_check=True)
        after = ctx.publish(topic, Event(type="A", key="k", data={"n": 3}))
    await running(source)  # type: ignore[misc]

    async def relayed() -> bool:
        return await source.store.outbox_size() == 0

    await eventually(relayed)
    assert lost.dataref is not None and broken.dataref is not None
    lost_path = where.blobs / lost.dataref.removeprefix("tidings-blob:")
    kept = lost_path.read_bytes()
    lost_path.unlink()
    (where.blobs / broken.dataref.removeprefix("tidings-blob:")).write_bytes(b"[1, 2")
    await running(sink)  # type: ignore[misc]

    async def moved_on() -> bool:
        return any(event.id == after.id for event in received)

    async def dead_lettered() -> bool:
        return len(await letters_of(sink)) == 2

    await eventually(moved_on, timeout=60)
    await eventually(dead_lettered, timeout=60)
    letters = {x.event_id: x for x in await letters_of(sink)}
    assert set(letters) == {lost.id, broken.id}
    assert letters[lost.id].reason == letters[broken.id].reason == "undecodable"
    assert "is not in the blob store" in (letters[lost.id].message or "")
    assert "is not JSON" in (letters[broken.id].message or "")
    assert letters[lost.id].exception == "tidings.runtime.claimcheck.ClaimCheckError"

    lost_path.write_bytes(kept)  # the blob is back (restored from a backup, say): replay it
    await ops.replay_dead_letters(sink.broker, [letters[lost.id]])

    async def delivered() -> bool:
        return any(event.id == lost.id for event in received)

    await eventually(delivered, timeout=60)
    assert [e.data for e in received if e.id == lost.id] == [b"lost" * 100]


async def test_a_dataref_cannot_leave_the_blob_store(tmp_path: Path) -> None:
    from tidings.runtime.claimcheck import ClaimCheckError, resolve

    store = DirectoryBlobStore(tmp_path / "blobs")
    (tmp_path / "secret.json").write_text("{}")
    for ref in ("tidings-blob:../secret.json", "tidings-blob:/etc/passwd", "tidings-blob:a//b"):
        with pytest.raises(ClaimCheckError, match="invalid dataref"):
            await resolve(store, Event(type="T", dataref=ref))
    foreign = Event(type="T", dataref="https://example.com/payload")
    assert await resolve(store, foreign) is foreign  # another producer's reference: untouched


async def test_directory_blob_store(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path / "root")
    assert [info async for info in store.list()] == []
    await store.put("svc/a.bin", b"alpha")
    await store.put("svc/a.bin", b"again")  # replaced whole
    await store.put("other/b.json", b"{}")
    assert await store.get("svc/a.bin") == b"again"
    infos = sorted([info async for info in store.list()], key=lambda i: i.name)
    assert [(i.name, i.size) for i in infos] == [("other/b.json", 2), ("svc/a.bin", 5)]
    assert [i.name async for i in store.list("svc/")] == ["svc/a.bin"]
    assert all(isinstance(i, BlobInfo) and i.created.tzinfo is UTC for i in infos)
    await store.delete("svc/a.bin")
    await store.delete("svc/a.bin")  # gone already: fine
    with pytest.raises(BlobNotFoundError):
        await store.get("svc/a.bin")
    for name in ("", "../x", "a/../b", "/abs", "a//b", "a b", "x" * 300):
        with pytest.raises(ConfigError):
            await store.put(name, b"")
    (tmp_path / "root" / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(StorageError, match="cannot write blob"):
            await store.put("ro/x", b"")


def aged_blobs(root: Path) -> None:
    """keeper/old.bin, keeper/.x.partial (a write cut short) and someone/old.bin written 8 days
    ago, keeper/new.bin now."""
    store = DirectoryBlobStore(root)
    for name in ("keeper/old.bin", "keeper/new.bin", "someone/old.bin", "keeper/.x.partial"):
        asyncio.run(store.put(name, b"x"))
    week_ago = (datetime.now(UTC) - timedelta(days=8)).timestamp()
    for name in ("keeper/old.bin", "someone/old.bin", "keeper/.x.partial"):
        os.utime(root / name, (week_ago, week_ago))


def names(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in blob_files(root)]


async def test_a_running_service_deletes_its_blobs_past_retention(
    tmp_path: Path, running: Callable[[Service], object]
) -> None:
    root = tmp_path / "blobs"
    await asyncio.to_thread(aged_blobs, root)
    keeper = Service(
        "keeper",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/k.db",
        blobs=str(root),
        blob_retention_s=7 * 24 * 3600,
    )
    await running(keeper)  # type: ignore[misc]

    async def collected() -> bool:
        return not (root / "keeper/old.bin").exists()

    await eventually(collected)
    # another service's blobs are its own to collect
    assert names(root) == ["keeper/new.bin", "someone/old.bin"]
    store = DirectoryBlobStore(root)
    assert await collect_garbage(store, prefix="keeper/", retention_s=0) == ["keeper/new.bin"]


def test_tidings_blobs_list_and_gc(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    aged_blobs(root)
    cli = CliRunner()
    listed = cli.invoke(app, ["blobs", "list", "--dir", str(root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [b["name"] for b in json.loads(listed.output)] == [
        "keeper/.x.partial",
        "keeper/new.bin",
        "keeper/old.bin",
        "someone/old.bin",
    ]
    table = cli.invoke(
        app, ["blobs", "list", "--service", "someone"], env={"TIDINGS_BLOBS": str(root)}
    )
    assert table.exit_code == 0 and "someone/old.bin" in table.output
    assert "keeper" not in table.output
    gc = cli.invoke(
        app,
        ["blobs", "gc", "--dir", str(root), "--service", "keeper", "--retention", "7d", "--json"],
    )
    assert gc.exit_code == 0, gc.output
    assert json.loads(gc.output) == {"deleted": ["keeper/.x.partial", "keeper/old.bin"]}
    everything = cli.invoke(app, ["blobs", "gc", "--dir", str(root), "--retention", "3600"])
    assert everything.exit_code == 0 and "deleted 1 blob(s)" in everything.output
    assert names(root) == ["keeper/new.bin"]
    bad = cli.invoke(app, ["blobs", "gc", "--dir", str(root), "--retention", "soon"])
    assert bad.exit_code == 2 and "invalid duration" in bad.output
    bad_service = cli.invoke(app, ["blobs", "list", "--dir", str(root), "--service", "../x"])
    assert bad_service.exit_code == 2 and "invalid blob name" in bad_service.output
    broker = ["--broker", f"sqlite:///{tmp_path}/bus.db"]  # blobs/ next to it: root
    default = cli.invoke(app, [*broker, "blobs", "list"], env={"TIDINGS_BLOBS": ""})
    assert default.exit_code == 0 and "keeper/new.bin" in default.output
    other = ["--broker", f"sqlite:///{tmp_path}/x/bus.db"]
    elsewhere = cli.invoke(app, [*other, "blobs", "list"], env={"TIDINGS_BLOBS": ""})
    assert elsewhere.exit_code == 0 and "no blobs in" in elsewhere.output


def test_the_default_blob_directory_is_next_to_the_embedded_broker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/data/bus.db"
    chosen = default_blob_store(None, url, environ={})
    assert isinstance(chosen, DirectoryBlobStore) and chosen.root == tmp_path / "data" / "blobs"
    configured = default_blob_store(None, url, environ={"TIDINGS_BLOBS": str(tmp_path / "x")})
    assert isinstance(configured, DirectoryBlobStore) and configured.root == tmp_path / "x"
    on_kafka = default_blob_store(None, "kafka://h:9092", environ={})
    assert isinstance(on_kafka, DirectoryBlobStore)
    assert on_kafka.root == Path(".tidings/blobs").absolute()


class MemoryBlobs:
    """A BlobStore of one's own (what an S3 adapter would be): four methods."""

    url = "memory://blobs"

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> None:
        self.blobs[name] = data

    async def get(self, name: str) -> bytes:
        try:
            return self.blobs[name]
        except KeyError:
            raise BlobNotFoundError(name) from None

    async def delete(self, name: str) -> None:
        self.blobs.pop(name, None)

    async def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        for name, data in list(self.blobs.items()):
            if name.startswith(prefix):
                yield BlobInfo(name, len(data), datetime.now(UTC))


async def test_any_blob_store_can_be_plugged_in(
    tmp_path: Path, running: Callable[[Service], object]
) -> None:
    shared = MemoryBlobs()
    broker = f"sqlite:///{tmp_path}/bus.db"
    received: list[object] = []
    source = Service(
        "s3-producer",
        broker=broker,
        store=f"sqlite:///{tmp_path}/p.db",
        topics={"t": 1},
        blobs=shared,
    )
    sink = Service("s3-consumer", broker=broker, store=f"sqlite:///{tmp_path}/c.db", blobs=shared)

    @sink.handler("t")
    async def take(event: Event, ctx: Context) -> None:
        received.append(event.data)

    await running(source)  # type: ignore[misc]
    await running(sink)  # type: ignore[misc]
    async with source.transaction() as ctx:
        ctx.publish(
            "t", Event(type="T", key="k", data={"rows": list(range(1000))}), claim_check=True
        )

    async def arrived() -> bool:
        return bool(received)

    await eventually(arrived)
    assert received == [{"rows": list(range(1000))}]
    assert [name.split("/")[0] for name in shared.blobs] == ["s3-producer"]
    assert not (tmp_path / "blobs").exists()
    await asyncio.sleep(0)
