"""`python -m bench broker`: throughput and latency of the embedded SQLite broker.

Measured in one run, with the durable default (`synchronous=full`, WAL) on the same disk:

* `sqlite_raw_insert_rows_per_s` - the ceiling: plain sqlite3, same file settings, one row per
  event, `executemany` in transactions of 1000 rows into a rowid table;
* `publish_events_per_s` - `broker.publish(topic, batch)` in batches of 1000 and 100 into a topic
  of 8 partitions, keys drawn from 10,000 order ids; `publish_concurrent_events_per_s` - 4
  asyncio tasks publishing at once (the writer thread group-commits them);
* `consume_events_per_s` - one consumer reading everything published, acking per batch;
  `consume_decode_events_per_s` - the same, decoding every record to an Event;
* `idle_latency_{p50,p90,p99,max}_ms` - a consumer in another process waits idle in
  `fetch()`; this process publishes one event at a time, 5-20 ms apart, with its send time in
  a header; the consumer records receive time minus send time (same machine, same clock).
  `idle_publish_call_*_ms` is how long those `publish()` calls took: the commit's share.

Publish metrics share a name across batch sizes: tell them apart by the `batch` field.

Events are real tidings events (`tidings.event.event_to_message`) when that module exists,
padded so the encoded message is ~300 bytes; otherwise 300-byte JSON messages.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import multiprocessing
import os
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from bench._common import emit, machine, percentile, workdir

BENCH = "broker"
EVENT_BYTES = 300
PARTITIONS = 8
ORDER_IDS = 10_000
POOL = 20_000
CONCURRENT_TASKS = 4
SENT_HEADER = "bench-sent-ns"
SEQ_HEADER = "bench-seq"
LATENCY_WARMUP = 10


@dataclass(frozen=True)
class Settings:
    quick: bool
    events: int
    dir: str | None
    samples: int
    raw_seconds: float
    publish_seconds: float
    publish_max_seconds: float
    short_seconds: float


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench broker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short run (smoke tests, CI)")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="events published in batches of 1000 and then consumed (default 200000, quick 20000)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="cross-process latency samples (default 500, quick 100)",
    )
    parser.add_argument(
        "--dir", default=None, help="where to create the database files (default: a temp dir)"
    )
    args = parser.parse_args(list(argv))
    quick = args.quick
    events = args.events if args.events is not None else (20_000 if quick else 200_000)
    samples = args.samples if args.samples is not None else (100 if quick else 500)
    if events < 1000:
        parser.error("--events must be >= 1000")
    if samples < 1:
        parser.error("--samples must be >= 1")
    return Settings(
        quick=quick,
        events=events,
        dir=args.dir,
        samples=samples,
        raw_seconds=0.5 if quick else 2.0,
        publish_seconds=0.5 if quick else 3.0,
        publish_max_seconds=5.0 if quick else 40.0,
        short_seconds=0.5 if quick else 2.0,
    )


# payloads -------------------------------------------------------------------------------


@dataclass
class Payloads:
    messages: list[Any]  # tidings Message
    kind: str  # "event" (tidings.event) or "message" (plain 300-byte JSON values)
    event_bytes: int
    decode: Callable[[Any], object]  # record -> decoded event
    decoder: str
    note: str | None = None


def _order_id(n: int) -> str:
    return f"ord-{n:06d}"


def _order_data(n: int, order_id: str, pad: int, *, rich: bool = True) -> dict[str, Any]:
    """An ORDER_PLACED payload; `pad` characters of filler bring the message to EVENT_BYTES.

    `rich=False` is the minimal payload, for envelopes already near EVENT_BYTES on their own."""
    if not rich:
        return {"order_id": order_id, "total_cents": 3998, "note": "x" * pad}
    return {
        "order_id": order_id,
        "customer_id": f"cus-{(n * 7919) % 100_000:06d}",
        "items": [{"sku": "SKU-1042", "qty": 2, "price_cents": 1999}],
        "total_cents": 3998,
        "currency": "EUR",
        "note": "x" * pad,
    }


def _event_payloads(rng: random.Random) -> Payloads:
    ev: Any = importlib.import_module("tidings.event")

    rich = True

    def build(n: int, order_id: str, pad: int) -> Any:
        data = _order_data(n, order_id, pad, rich=rich)
        fields = {"type": "ORDER_PLACED", "key": order_id, "data": data}
        try:
            event = ev.Event(**fields)
        except TypeError:  # an envelope that insists on a source
            event = ev.Event(**fields, source="bench")
        return ev.event_to_message(event)

    # The padding needed is the same for every order id (ids, UUIDs, times are fixed width).
    if build(0, _order_id(0), 0).size > EVENT_BYTES:
        rich = False
    pad = 0
    probe = build(0, _order_id(0), pad)
    for _ in range(4):
        missing = EVENT_BYTES - probe.size
        if missing == 0 or (missing < 0 and pad == 0):
            break
        pad = max(0, pad + missing)
        probe = build(0, _order_id(0), pad)
    messages = [build(n, _order_id(rng.randrange(ORDER_IDS)), pad) for n in range(POOL)]
    ev.event_from_record  # noqa: B018 - fail here, not mid-run, if the decoder is missing
    return Payloads(
        messages=messages,
        kind="event",
        event_bytes=round(sum(m.size for m in messages) / len(messages)),
        decode=ev.event_from_record,
        decoder="tidings.event.event_from_record",
    )


def _raw_payloads(rng: random.Random, note: str) -> Payloads:
    from tidings import Message

    def build(n: int, order_id: str, pad: int) -> Any:
        value = msgspec.json.encode({"type": "ORDER_PLACED", "data": _order_data(n, order_id, pad)})
        return Message(value=value, key=order_id.encode())

    base = build(0, _order_id(0), 0).size
    pad = max(0, EVENT_BYTES - base)
    messages = []
    for n in range(POOL):
        messages.append(build(n, _order_id(rng.randrange(ORDER_IDS)), pad))
    json_decoder = msgspec.json.Decoder()
    return Payloads(
        messages=messages,
        kind="message",
        event_bytes=round(sum(m.size for m in messages) / len(messages)),
        decode=lambda record: json_decoder.decode(record.value),
        decoder="msgspec.json (stand-in: tidings.event not available)",
        note=note,
    )


def build_payloads(rng: random.Random) -> Payloads:
    try:
        importlib.import_module("tidings.event")
    except ImportError:
        return _raw_payloads(rng, "tidings.event does not exist yet")
    try:
        return _event_payloads(rng)
    except Exception as exc:  # an API that does not match this benchmark yet
        return _raw_payloads(rng, f"tidings.event unusable here ({type(exc).__name__}: {exc})")


# measurements ---------------------------------------------------------------------------


def raw_sqlite_insert(path: str, payloads: Payloads, settings: Settings) -> None:
    """The ceiling: plain sqlite3 with the broker's file settings, one row per event."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        rows = [
            ((m.key or b"") + m.value + b"".join(k.encode() + v for k, v in m.headers),)
            for m in payloads.messages
        ]
        chunks = [rows[i : i + 1000] for i in range(0, len(rows), 1000)]
        written = 0
        index = 0
        start = time.perf_counter()
        while True:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events(payload) VALUES (?)", chunks[index])
            conn.execute("COMMIT")
            written += len(chunks[index])
            index = (index + 1) % len(chunks)
            elapsed = time.perf_counter() - start
            if (written >= settings.events and elapsed >= settings.raw_seconds) or (
                elapsed >= settings.publish_max_seconds
            ):
                break
    finally:
        conn.close()
    emit(
        BENCH,
        "sqlite_raw_insert_rows_per_s",
        written / elapsed,
        "rows/s",
        events=written,
        batch=1000,
        event_bytes=len(rows[0][0]),
        seconds=elapsed,
        synchronous="full",
    )


def _batches(payloads: Payloads, size: int) -> list[list[Any]]:
    messages = payloads.messages
    return [messages[i : i + size] for i in range(0, len(messages) - size + 1, size)]


async def _publish_loop(
    broker: Any,
    topic: str,
    batches: list[list[Any]],
    first: int,
    start: float,
    min_events: int,
    min_seconds: float,
    max_seconds: float,
) -> int:
    sent = 0
    index = first
    while True:
        batch = batches[index % len(batches)]
        index += 1
        await broker.publish(topic, batch)
        sent += len(batch)
        elapsed = time.perf_counter() - start
        if (sent >= min_events and elapsed >= min_seconds) or elapsed >= max_seconds:
            return sent


async def publish(
    broker: Any,
    topic: str,
    payloads: Payloads,
    *,
    batch: int,
    tasks: int,
    min_events: int,
    min_seconds: float,
    max_seconds: float,
) -> int:
    batches = _batches(payloads, batch)
    await broker.admin.create_topic(topic, PARTITIONS)
    await broker.publish(topic, batches[0][:1])  # warm: topic cache, connections
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(
            _publish_loop(
                broker,
                topic,
                batches,
                task * len(batches) // tasks,
                start,
                min_events // tasks,
                min_seconds,
                max_seconds,
            )
            for task in range(tasks)
        )
    )
    elapsed = time.perf_counter() - start
    sent = sum(counts)
    metric = "publish_events_per_s" if tasks == 1 else "publish_concurrent_events_per_s"
    context: dict[str, Any] = {}
    if tasks > 1:
        context["tasks"] = tasks
    emit(
        BENCH,
        metric,
        sent / elapsed,
        "events/s",
        events=sent,
        batch=batch,
        **context,
        partitions=PARTITIONS,
        event_bytes=payloads.event_bytes,
        payload=payloads.kind,
        seconds=elapsed,
    )
    return sent + 1


async def consume(broker: Any, topic: str, total: int, payloads: Payloads, *, decode: bool) -> None:
    group = "bench-consume-decode" if decode else "bench-consume"
    consumer = broker.subscribe(group, [topic], max_batch=1000)
    decoder = payloads.decode
    received = 0
    batches = 0
    start = time.perf_counter()
    try:
        while received < total:
            batch = await consumer.fetch(timeout=30.0)
            if batch is None:
                raise RuntimeError(
                    f"consumer got nothing for 30 s after {received} of {total} events"
                )
            if decode:
                for record in batch.records:
                    decoder(record)
            received += len(batch)
            batches += 1
            consumer.ack(batch)
        elapsed = time.perf_counter() - start
    finally:
        await consumer.close()
    context: dict[str, Any] = {"decoder": payloads.decoder} if decode else {}
    emit(
        BENCH,
        "consume_decode_events_per_s" if decode else "consume_events_per_s",
        received / elapsed,
        "events/s",
        events=received,
        max_batch=1000,
        batches=batches,
        partitions=PARTITIONS,
        event_bytes=payloads.event_bytes,
        payload=payloads.kind,
        **context,
        seconds=elapsed,
    )


# cross-process latency ------------------------------------------------------------------


def _latency_child(url: str, topic: str, expected: int, pipe: Connection) -> None:
    """The consumer process: idle in fetch(), records receive time minus send time."""
    try:
        asyncio.run(_latency_consume(url, topic, expected, pipe))
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


async def _latency_consume(url: str, topic: str, expected: int, pipe: Connection) -> None:
    import tidings

    broker = tidings.connect(url)
    try:
        consumer = broker.subscribe("bench-latency", [topic], auto_offset_reset="latest")
        await consumer.fetch(timeout=0.01)  # joins the group
        deadline = time.monotonic() + 30
        while len(consumer.assignment()) < PARTITIONS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only got partitions {sorted(map(str, consumer.assignment()))}")
            await consumer.fetch(timeout=0.02)
        pipe.send(("ready", None))
        samples: list[tuple[int, int]] = []
        while len(samples) < expected:
            batch = await consumer.fetch()
            received = time.time_ns()
            if batch is None:
                continue
            for record in batch.records:
                sent = record.header(SENT_HEADER)
                seq = record.header(SEQ_HEADER)
                if sent is not None and seq is not None:
                    samples.append((int(seq), received - int(sent)))
            consumer.ack(batch)
        pipe.send(("samples", samples))
        await consumer.close()
    finally:
        await broker.close()


async def latency(broker: Any, url: str, payloads: Payloads, settings: Settings) -> None:
    topic = "latency"
    await broker.admin.create_topic(topic, PARTITIONS)
    expected = settings.samples + LATENCY_WARMUP
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=_latency_child, args=(url, topic, expected, child), name="bench-latency-consumer"
    )
    process.start()
    child.close()
    try:
        kind, value = await _receive(parent, process, 60.0)
        if kind != "ready":
            raise RuntimeError(f"latency consumer failed: {value}")
        rng = random.Random(7)
        publish_ms: list[float] = []
        for seq in range(expected):
            base = payloads.messages[rng.randrange(len(payloads.messages))]
            sent = time.time_ns()
            headers = (
                *base.headers,
                (SENT_HEADER, str(sent).encode()),
                (SEQ_HEADER, str(seq).encode()),
            )
            message = msgspec.structs.replace(base, headers=headers)
            t0 = time.perf_counter()
            await broker.publish(topic, [message])
            if seq >= LATENCY_WARMUP:
                publish_ms.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(rng.uniform(0.005, 0.020))
        kind, value = await _receive(parent, process, 60.0)
        if kind != "samples":
            raise RuntimeError(f"latency consumer failed: {value}")
    finally:
        await asyncio.to_thread(process.join, 10)
        if process.is_alive():
            process.kill()
        parent.close()
    latencies = sorted(ns / 1e6 for seq, ns in value if seq >= LATENCY_WARMUP)
    context = {
        "samples": len(latencies),
        "partitions": PARTITIONS,
        "event_bytes": payloads.event_bytes,
        "interval_ms": "5-20",
        "processes": 2,
    }
    for name, pct in (("p50", 50), ("p90", 90), ("p99", 99)):
        emit(BENCH, f"idle_latency_{name}_ms", percentile(latencies, pct), "ms", **context)
    emit(BENCH, "idle_latency_max_ms", latencies[-1], "ms", **context)
    publish_ms.sort()
    for name, pct in (("p50", 50), ("p99", 99), ("max", 100)):
        emit(
            BENCH,
            f"idle_publish_call_{name}_ms",
            percentile(publish_ms, pct),
            "ms",
            samples=len(publish_ms),
            batch=1,
            note="time broker.publish() of one event takes (commit + fsync), part of the latency",
        )


async def _receive(pipe: Connection, process: Any, timeout: float) -> tuple[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pipe.poll, 0.1):
            result: tuple[str, Any] = pipe.recv()
            return result
        if not process.is_alive() and not pipe.poll():
            raise RuntimeError(f"latency consumer exited with code {process.exitcode}")
    raise RuntimeError(f"latency consumer did not answer within {timeout:.0f} s")


# main -----------------------------------------------------------------------------------


async def run(settings: Settings, directory: str) -> None:
    import tidings

    rng = random.Random(42)
    payloads = build_payloads(rng)
    if payloads.note:
        emit(BENCH, "payload", payloads.kind, None, note=payloads.note)

    raw_sqlite_insert(os.path.join(directory, "raw.db"), payloads, settings)

    url = f"sqlite:///{os.path.join(directory, 'bench.db')}"
    broker = tidings.connect(url)
    try:
        total = await publish(
            broker,
            "orders",
            payloads,
            batch=1000,
            tasks=1,
            min_events=settings.events,
            min_seconds=settings.publish_seconds,
            max_seconds=settings.publish_max_seconds,
        )
        for topic, batch, tasks in (
            ("orders-b100", 100, 1),
            ("orders-c1000", 1000, CONCURRENT_TASKS),
            ("orders-c100", 100, CONCURRENT_TASKS),
        ):
            await publish(
                broker,
                topic,
                payloads,
                batch=batch,
                tasks=tasks,
                min_events=0,
                min_seconds=settings.short_seconds,
                max_seconds=settings.publish_max_seconds,
            )

        await consume(broker, "orders", total, payloads, decode=False)
        await consume(broker, "orders", total, payloads, decode=True)

        await latency(broker, url, payloads, settings)
    finally:
        await broker.close()


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    started = time.perf_counter()
    with workdir(settings.dir, "tidings-bench-broker-") as directory:
        machine(BENCH, directory)
        asyncio.run(run(settings, directory))
    emit(BENCH, "total_runtime_s", time.perf_counter() - started, "s", quick=settings.quick)
    return 0
