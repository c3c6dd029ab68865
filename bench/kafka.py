"""`python -m bench kafka`: tidings on real Apache Kafka (and PostgreSQL), against baselines.

Needs the local servers (`eval "$(scripts/services env)"`: TIDINGS_KAFKA_BOOTSTRAP,
TIDINGS_POSTGRES_DSN; `scripts/services start` if they are not running). Every run uses topics,
consumer groups and PostgreSQL schemas named after a fresh run id, and deletes them at the end
(Kafka auto topic creation is off: topics are created explicitly, 4 partitions).

Consumption, no-op handler, the same events (`tidings.event.event_to_message`, ~400 bytes,
keyed by order id, one header) in one 4-partition topic, each consumer in a fresh group from
`earliest`:

* `raw_consume_events_per_s` - a hand-written confluent-kafka loop: `consume(num_messages=1000)`,
  check each message's error, no-op handler, `commit(asynchronous=True)` after each batch
  (auto-commit off), with tidings' librdkafka fetch settings (`tidings.brokers.kafka.
  CONSUMER_DEFAULTS`: `fetch.queue.backoff.ms=10`; librdkafka's default of 1000 ms stalls any
  consumer slower than the fetcher for most of each second);
* `tidings_consume_events_per_s` - `broker.subscribe(group, [topic], max_batch=1000)`:
  `fetch()`, no-op handler on the batch's records, `ack(batch)` (tidings commits acked offsets
  every second, on revoke and on close). tidings builds a record when it is first read, so a
  no-op handler builds none;
* `overhead_vs_raw_pct` = (raw / tidings - 1) * 100 (target <= 20);
* `overhead_read_vs_raw_pct` - context, not a target: the same two consumers with a handler that
  reads every event's value, key, headers, offset and timestamp, as every real consumer does
  (`raw_read` / `tidings_read` rates in the line): what building the records costs;
* `faststream_consume_events_per_s` - FastStream's confluent backend as it ships (librdkafka's
  defaults), in its own venv (a subprocess, `bench/_faststream_consumer.py`): batch subscriber,
  `max_records=1000`, `AckPolicy.ACK` (commit after the handler), raw bodies (no decoding),
  no-op handler, logging off;
* `ratio_vs_faststream` = tidings / FastStream, each framework as it ships (target >= 3);
* `faststream_tuned_consume_events_per_s` and `ratio_vs_faststream_tuned` - context, not a
  target: the same FastStream consumer given tidings' fetch settings.

Rates are timed from the first batch received to the last one handled, counting the events
after the first batch: the group join (seconds on Kafka) is excluded for every consumer alike.
One raw warm-up round (not counted), then `--rounds` rounds, each running every consumer above
one after the other. The machine is shared, and the rates move with its load (the
raw loop between ~150k and ~700k events/s): the headline overhead and ratio are the medians of
the per-round values (consumers measured seconds apart), with the best and median rates of each
consumer alongside (all rounds in `rounds`).

PostgreSQL:

* `pg_relay_events_per_s` - the outbox of a PostgresStore (fresh schema) pre-filled with
  `--relay-events` events (transactions of 1000 `tx.add_outbox`), then
  `Relay(store, broker).relay_once()` (batches of 1000) in a loop until the outbox is empty,
  then `relay.settle()` (the removal of published rows runs in the background) (target
  >= 20,000/s);
* `pg_kafka_e2e_events_per_s` - a producer `Service` (PostgreSQL store) in its own process
  (`bench/_pg_producer.py`; in production a producer and its consumers are separate services)
  publishes through its outbox in transactions of 100 `ctx.publish`, its relay moves them to
  Kafka, and one consumer `Service` in this process (PostgreSQL store, handler: one INSERT,
  queued with `ctx.defer`; `--e2e-write execute` awaits `ctx.execute` instead) applies them.
  From the first publish until the effects table holds every event (max(id) polled every
  10 ms, confirmed by count(*)), after a warm-up that joins the group (target >= 10,000/s
  with one consumer process);
* `pg_consume_events_per_s` - context, not a target: a second consumer (fresh group and
  schema) then drains the events that run left in the topic, with no producer to wait for;
  `pg_consume_traced_events_per_s` a third with tracing on (a process span per event, every
  event sampled, exported over OTLP to TIDINGS_JAEGER_OTLP_ENDPOINT or
  OTEL_EXPORTER_OTLP_ENDPOINT when set), and `tracing_overhead_consume_pct` what it loses
  (target <= 25).
* `pg_place_order_{p50,p99}_ms` - context, not a target: request code on PostgreSQL, one
  business row and one `ctx.publish` per transaction, one at a time (after a 20% warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import emit, machine, percentile, workdir
from bench.pipeline import BenchOrderPlaced, build_pool, start_service, stop_services
from tidings.brokers.kafka import CONSUMER_DEFAULTS
from tidings.service import Context, Service

BENCH = "kafka"
PARTITIONS = 4
MAX_BATCH = 1000
TX_EVENTS = 100
PLACE_ORDERS = 2000
PUBLISH_TASKS = 4
DEFAULT_BOOTSTRAP = "127.0.0.1:59092"
DEFAULT_DSN = "postgresql://tidings:tidings@127.0.0.1:55432/tidings"
DEFAULT_FASTSTREAM_VENV = "/tmp/bench-faststream-venv"
FASTSTREAM_HELPER = Path(__file__).resolve().parent / "_faststream_consumer.py"

CONSUMERS = ("raw", "tidings", "raw_read", "tidings_read", "faststream", "faststream_tuned")
PHASES = ("consume", "pg_relay", "pg_e2e", "pg_place_order")
EFFECT_INSERT = "INSERT INTO effects(event_id, order_id, total_cents) VALUES (?, ?, ?)"

TARGETS = {
    "overhead_vs_raw_pct": "<= 20",
    "ratio_vs_faststream": ">= 3",
    "pg_relay_events_per_s": ">= 20000",
    "pg_kafka_e2e_events_per_s": ">= 10000",
}


@dataclass(frozen=True)
class Settings:
    quick: bool
    events: int
    relay_events: int
    e2e_events: int
    rounds: int
    dir: str | None
    bootstrap: str
    dsn: str
    faststream_venv: str
    faststream: bool
    e2e_write: str = "defer"
    phases: tuple[str, ...] = PHASES
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def kafka_url(self) -> str:
        return f"kafka://{self.bootstrap}"


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench kafka", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short run (smoke tests, CI)")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="events for the consume comparisons (default 300000, quick 20000)",
    )
    parser.add_argument(
        "--relay-events",
        type=int,
        default=None,
        help="events pre-filled into the outbox for the relay (default 50000, quick 10000)",
    )
    parser.add_argument(
        "--e2e-events",
        type=int,
        default=None,
        help="events through the PostgreSQL -> Kafka pipeline (default 100000, quick 10000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="consume rounds (raw, tidings, FastStream each), medians reported (default 5,"
        " quick 1)",
    )
    parser.add_argument(
        "--e2e-write",
        choices=("defer", "execute"),
        default="defer",
        help="how the end-to-end handler writes its effect: ctx.defer (default; one pipeline"
        " per batch on PostgreSQL) or await ctx.execute (one round trip per event)",
    )
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("TIDINGS_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP),
        help="Kafka bootstrap servers (default $TIDINGS_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TIDINGS_POSTGRES_DSN", DEFAULT_DSN),
        help="PostgreSQL DSN (default $TIDINGS_POSTGRES_DSN)",
    )
    parser.add_argument(
        "--faststream-venv",
        default=DEFAULT_FASTSTREAM_VENV,
        help="venv holding faststream[confluent]; created (python3.11) if missing",
    )
    parser.add_argument("--no-faststream", action="store_true", help="skip the FastStream run")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default {','.join(PHASES)})",
    )
    args = parser.parse_args(list(argv))
    quick = args.quick
    events = args.events if args.events is not None else (20_000 if quick else 300_000)
    relay = args.relay_events if args.relay_events is not None else (10_000 if quick else 50_000)
    e2e = args.e2e_events if args.e2e_events is not None else (10_000 if quick else 100_000)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 5)
    if events < 2 * MAX_BATCH:
        parser.error(f"--events must be >= {2 * MAX_BATCH}")
    if relay < 1000 or e2e < TX_EVENTS or rounds < 1:
        parser.error("--relay-events >= 1000, --e2e-events >= 100, --rounds >= 1")
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or set(phases) - set(PHASES):
        parser.error(f"--phases: choose from {', '.join(PHASES)}")
    return Settings(
        quick=quick,
        events=-(-events // MAX_BATCH) * MAX_BATCH,
        relay_events=-(-relay // 1000) * 1000,
        e2e_events=-(-e2e // TX_EVENTS) * TX_EVENTS,
        rounds=rounds,
        dir=args.dir,
        bootstrap=args.bootstrap,
        dsn=args.dsn,
        faststream_venv=args.faststream_venv,
        faststream=not args.no_faststream,
        e2e_write=args.e2e_write,
        phases=phases,
    )


# helpers --------------------------------------------------------------------------------


def _pg_url(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"


@dataclass
class Cleanup:
    """What this run created on the servers (deleted at the end, whatever happened)."""

    groups: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)


async def produce(broker: Any, topic: str, messages: list[Any], total: int) -> float:
    """`total` messages into `topic` via tidings (batches of 1000, 4 tasks); returns seconds."""
    batches = [messages[i : i + MAX_BATCH] for i in range(0, len(messages), MAX_BATCH)]
    count = total // MAX_BATCH
    start = time.perf_counter()

    async def worker(k: int) -> None:
        for n in range(k, count, PUBLISH_TASKS):
            await broker.publish(topic, batches[n % len(batches)])

    await asyncio.gather(*(worker(k) for k in range(PUBLISH_TASKS)))
    return time.perf_counter() - start


def _noop(records: Any) -> None:
    return None


def _read_messages(messages: Any) -> None:
    """What a hand-written consumer reads to process its events: every message's fields."""
    for m in messages:
        _ = (m.value(), m.key(), m.headers(), m.offset(), m.timestamp())


def _read_records(records: Any) -> None:
    """The same fields of every tidings record."""
    for r in records:
        _ = (r.value, r.key, r.headers, r.offset, r.timestamp)


def raw_consume(
    bootstrap: str, topic: str, group: str, total: int, handler: Any = _noop
) -> dict[str, Any]:
    """The baseline: a plain confluent-kafka loop (blocking; run in a thread)."""
    import confluent_kafka as ck

    consumer = ck.Consumer(
        {
            **CONSUMER_DEFAULTS,
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received = 0
    first: float | None = None
    first_n = 0
    last = 0.0
    deadline = time.monotonic() + 120
    try:
        while received < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"raw consumer: only {received} of {total} events in 120 s")
            messages = consumer.consume(num_messages=MAX_BATCH, timeout=1.0)
            if not messages:
                continue
            good = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == ck.KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"raw consumer: {error}")
                good.append(message)
            if not good:
                continue
            handler(good)
            consumer.commit(asynchronous=True)
            now = time.perf_counter()
            if first is None:
                first, first_n = now, len(good)
            received += len(good)
            last = now
    finally:
        consumer.close()
    assert first is not None
    return {"events": received, "timed_events": received - first_n, "seconds": last - first}


async def tidings_consume(
    broker: Any, topic: str, group: str, total: int, handler: Any = _noop
) -> dict[str, Any]:
    consumer = broker.subscribe(group, [topic], max_batch=MAX_BATCH)
    received = 0
    batches = 0
    first: float | None = None
    first_n = 0
    last = 0.0
    try:
        while received < total:
            batch = await consumer.fetch(timeout=60.0)
            if batch is None:
                raise RuntimeError(f"tidings consumer: nothing for 60 s after {received} events")
            handler(batch.records)
            consumer.ack(batch)
            now = time.perf_counter()
            if first is None:
                first, first_n = now, len(batch)
            received += len(batch)
            batches += 1
            last = now
    finally:
        await consumer.close()
    assert first is not None
    return {
        "events": received,
        "timed_events": received - first_n,
        "seconds": last - first,
        "batches": batches,
    }


def _rate(result: dict[str, Any]) -> float:
    return float(result["timed_events"] / result["seconds"]) if result["seconds"] > 0 else 0.0


# FastStream ------------------------------------------------------------------------------


def faststream_python(venv: str) -> tuple[str | None, str | None]:
    """The venv's python with faststream[confluent] importable (installing it if needed), or
    (None, why)."""
    python = os.path.join(venv, "bin", "python")
    check = [python, "-c", "import faststream.confluent, confluent_kafka"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python, None
    try:
        if not os.path.exists(python):
            base = "python3.11"
            subprocess.run([base, "-m", "venv", venv], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "faststream[confluent]"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        return None, f"installing faststream[confluent] into {venv} failed: {' | '.join(tail)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installing faststream[confluent] into {venv} failed: {exc!r}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, f"faststream[confluent] not importable in {venv} after install"
    return python, None


async def faststream_consume(
    python: str, bootstrap: str, topic: str, group: str, total: int, settings: dict[str, Any]
) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        python,
        str(FASTSTREAM_HELPER),
        bootstrap,
        topic,
        group,
        str(total),
        str(MAX_BATCH),
        json.dumps(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 360)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError("FastStream consumer did not finish within 360 s") from None
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"FastStream consumer failed ({process.returncode}): {' | '.join(tail)}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# consume comparisons ---------------------------------------------------------------------


async def consume_comparisons(broker: Any, payloads: Any, s: Settings, cleanup: Cleanup) -> None:
    topic = f"bench-{s.run_id}-consume"
    await broker.admin.create_topic(topic, PARTITIONS)
    produced_s = await produce(broker, topic, payloads.messages, s.events)
    emit(
        BENCH,
        "produce_events_per_s",
        s.events / produced_s,
        "events/s",
        events=s.events,
        batch=MAX_BATCH,
        tasks=PUBLISH_TASKS,
        partitions=PARTITIONS,
        event_bytes=payloads.event_bytes,
        seconds=produced_s,
        note="setup: tidings broker.publish() filling the consume topic (acks=all, idempotent)",
    )
    base = {
        "events": s.events,
        "partitions": PARTITIONS,
        "max_batch": MAX_BATCH,
        "event_bytes": payloads.event_bytes,
        "payload": payloads.kind,
    }

    python: str | None = None
    fs_why: str | None = "skipped (--no-faststream)"
    if s.faststream:
        python, fs_why = await asyncio.to_thread(faststream_python, s.faststream_venv)

    # warm-up (not counted): the broker's first reads of a new topic, this process's imports
    group = f"bench-{s.run_id}-warmup"
    cleanup.groups.append(group)
    warmup = await asyncio.to_thread(raw_consume, s.bootstrap, topic, group, s.events)

    rates: dict[str, list[float]] = {name: [] for name in CONSUMERS}
    tidings_batches: list[int] = []
    fs_versions: dict[str, Any] = {}
    fs_errors: dict[str, str] = {}
    for n in range(s.rounds):
        for name, handler in (("raw", _noop), ("raw_read", _read_messages)):
            group = f"bench-{s.run_id}-{name}-{n}"
            cleanup.groups.append(group)
            raw = await asyncio.to_thread(raw_consume, s.bootstrap, topic, group, s.events, handler)
            rates[name].append(_rate(raw))
        for name, handler in (("tidings", _noop), ("tidings_read", _read_records)):
            group = f"bench-{s.run_id}-{name}-{n}"
            cleanup.groups.append(group)
            tid = await tidings_consume(broker, topic, group, s.events, handler)
            rates[name].append(_rate(tid))
            if name == "tidings":
                tidings_batches.append(tid["batches"])
        for name, settings in (("faststream", {}), ("faststream_tuned", dict(CONSUMER_DEFAULTS))):
            if python is None or name in fs_errors:
                continue
            group = f"bench-{s.run_id}-{name}-{n}"
            cleanup.groups.append(group)
            try:
                fs = await faststream_consume(python, s.bootstrap, topic, group, s.events, settings)
            except Exception as exc:
                fs_errors[name] = f"{type(exc).__name__}: {exc}"
            else:
                rates[name].append(float(fs["events_per_s"] or 0.0))
                fs_versions = {
                    "faststream": fs.get("faststream"),
                    "faststream_confluent_kafka": fs.get("confluent_kafka"),
                    "faststream_python": fs.get("python"),
                }

    def spread(name: str) -> dict[str, Any]:
        return {
            "best": round(max(rates[name])),
            "median": round(statistics.median(rates[name])),
            "rounds": [round(r) for r in rates[name]],
        }

    def per_round(numerator: str, denominator: str) -> list[float]:
        pairs = zip(rates[numerator], rates[denominator], strict=False)
        return [a / b for a, b in pairs if b]

    emit(
        BENCH,
        "raw_consume_events_per_s",
        statistics.median(rates["raw"]),
        "events/s",
        **base,
        **spread("raw"),
        warmup_events_per_s=round(_rate(warmup)),
        settings=dict(CONSUMER_DEFAULTS),
        note="median of the rounds; confluent-kafka loop: consume(num_messages=1000), error check"
        " per message, no-op handler, commit(asynchronous=True) per batch; first batch -> last"
        " (group join excluded)",
    )
    emit(
        BENCH,
        "tidings_consume_events_per_s",
        statistics.median(rates["tidings"]),
        "events/s",
        **base,
        **spread("tidings"),
        batches=tidings_batches,
        note="median of the rounds; broker.subscribe(): fetch(), no-op handler, ack(batch)"
        " (offsets committed every second and on close); first batch -> last (group join"
        " excluded)",
    )
    overheads = [(r - 1) * 100 for r in per_round("raw", "tidings")]
    overhead = statistics.median(overheads)
    emit(
        BENCH,
        "overhead_vs_raw_pct",
        overhead,
        "%",
        rounds=[round(o, 1) for o in overheads],
        of_medians=round(
            (statistics.median(rates["raw"]) / statistics.median(rates["tidings"]) - 1) * 100, 1
        ),
        target=TARGETS["overhead_vs_raw_pct"],
        meets_target=overhead <= 20,
        note="median over the rounds of (raw / tidings - 1) * 100, both measured seconds apart;"
        " the no-op handler reads no record, and tidings builds a record only when it is read",
    )
    read_overheads = [(r - 1) * 100 for r in per_round("raw_read", "tidings_read")]
    emit(
        BENCH,
        "overhead_read_vs_raw_pct",
        statistics.median(read_overheads),
        "%",
        raw_read_consume_events_per_s=spread("raw_read"),
        tidings_read_consume_events_per_s=spread("tidings_read"),
        rounds=[round(o, 1) for o in read_overheads],
        note="context, not a target: the same two consumers with a handler that reads every"
        " event's value, key, headers, offset and timestamp (message methods vs Record fields),"
        " as any real consumer does: what building the records costs",
    )

    def faststream_lines(name: str, ratio_name: str, target: str | None, what: str) -> None:
        why = fs_errors.get(name) or fs_why
        if not rates[name]:
            emit(BENCH, f"{name}_consume_events_per_s", None, "events/s", note=why)
            emit(BENCH, ratio_name, None, "x", target=target, meets_target=None, note=why)
            return
        emit(
            BENCH,
            f"{name}_consume_events_per_s",
            statistics.median(rates[name]),
            "events/s",
            **base,
            **spread(name),
            **fs_versions,
            process="subprocess, own venv",
            error=fs_errors.get(name),
            note=f"median of the rounds; {what}; FastStream confluent batch subscriber,"
            " max_records=1000, AckPolicy.ACK (commit after the handler), raw bodies (custom"
            " decoder), no-op handler, logger=None; first batch -> last",
        )
        ratios = per_round("tidings", name)
        ratio = statistics.median(ratios)
        emit(
            BENCH,
            ratio_name,
            ratio,
            "x",
            rounds=[round(r, 2) for r in ratios],
            of_medians=round(
                statistics.median(rates["tidings"]) / statistics.median(rates[name]), 2
            ),
            target=target,
            meets_target=None if target is None else ratio >= 3,
            note=f"median over the rounds of tidings / FastStream ({what}; FastStream in its"
            " own process, right after tidings)",
        )

    faststream_lines(
        "faststream",
        "ratio_vs_faststream",
        TARGETS["ratio_vs_faststream"],
        "each framework as it ships: FastStream with librdkafka's defaults, tidings with its own",
    )
    faststream_lines(
        "faststream_tuned",
        "ratio_vs_faststream_tuned",
        None,
        "context, not a target: FastStream given tidings' librdkafka fetch settings"
        " (fetch.queue.backoff.ms=10 instead of librdkafka's 1000)",
    )


# PostgreSQL outbox relay -----------------------------------------------------------------


async def pg_relay(broker: Any, payloads: Any, s: Settings, cleanup: Cleanup) -> None:
    from tidings.runtime.relay import Relay
    from tidings.stores import connect_store

    topic = f"bench-{s.run_id}-relay"
    schema = f"bench_{s.run_id}_relay"
    cleanup.schemas.append(schema)
    await broker.admin.create_topic(topic, PARTITIONS)
    await broker.publish(topic, payloads.messages[:1])  # warm: metadata, connections
    store = connect_store(_pg_url(s.dsn, schema))
    await store.start()
    try:
        messages = payloads.messages
        fill_start = time.perf_counter()
        for t in range(s.relay_events // 1000):
            async with store.transaction() as tx:
                for i in range(t * 1000, (t + 1) * 1000):
                    tx.add_outbox(topic, f"{s.run_id}-{i}", messages[i % len(messages)])
        fill_s = time.perf_counter() - fill_start
        relay = Relay(store, broker)
        calls = 0
        start = time.perf_counter()
        while True:
            moved = await relay.relay_once()
            calls += 1
            if moved is None:
                raise RuntimeError("relay lease held by someone else")
            if moved == 0:
                break
        await relay.settle()  # published rows are removed in the background: wait for it
        elapsed = time.perf_counter() - start
        with contextlib.suppress(Exception):
            await store.outbox_release(relay.relay_id)
        left = await store.outbox_size()
    finally:
        await store.close()
    rate = relay.published / elapsed
    emit(
        BENCH,
        "pg_relay_events_per_s",
        rate,
        "events/s",
        events=relay.published,
        relay_batch=relay.batch,
        relay_once_calls=calls,
        partitions=PARTITIONS,
        event_bytes=payloads.event_bytes,
        seconds=elapsed,
        left_in_outbox=left,
        prefill_events_per_s=round(s.relay_events / fill_s),
        target=TARGETS["pg_relay_events_per_s"],
        meets_target=rate >= 20_000 and left == 0,
        note="pre-filled outbox (transactions of 1000 tx.add_outbox), then Relay.relay_once()"
        " until empty: claim (lease) + publish to Kafka (acks=all) + delete, per 1000 rows;"
        " then settle() (the deletes run in the background)",
    )


# PostgreSQL -> Kafka -> PostgreSQL -------------------------------------------------------


class ProducerProcess:
    """`bench/_pg_producer.py` in a subprocess: the producer Service and its relay."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, *args: str) -> ProducerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._pg_producer",
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        producer = cls(process)
        try:
            await producer.expect("ready", 60)
        except BaseException:
            await producer.end()
            raise
        return producer

    async def expect(self, word: str, timeout: float) -> str:
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), timeout)).decode()
        if not line.startswith(word):
            raise RuntimeError(f"producer process: expected {word!r}, got {line.strip()!r}")
        return line[len(word) :].strip()

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()

    async def publish(self, count: int) -> float:
        await self.send(f"publish {count}")
        return float(await self.expect("published", 600))

    async def stop(self) -> int | None:
        """Stops the producer; returns how many events its relay published (None if the
        process had died or did not say)."""
        try:
            await self.send("stop")
            return int(await self.expect("relayed", 90))
        except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
            print(f"bench kafka: producer process did not stop cleanly: {exc!r}", file=sys.stderr)
            return None
        finally:
            await self.end()

    async def end(self) -> None:
        """Waits a little for the process to exit, then kills it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class EffectsConsumer:
    """A consumer Service (PostgreSQL store, fresh schema) whose handler writes one effect row
    per event, with `ctx.defer` or `await ctx.execute` (`--e2e-write`)."""

    def __init__(self, s: Settings, cleanup: Cleanup, name: str, topic: str) -> None:
        schema = name.replace("-", "_")
        cleanup.schemas.append(schema)
        cleanup.groups.append(name)
        deferred = s.e2e_write == "defer"
        self.service = Service(
            name,
            broker=s.kafka_url,
            store=_pg_url(s.dsn, schema),
            topics={topic: PARTITIONS},
            migrations=[
                "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL,"
                " order_id TEXT NOT NULL, total_cents BIGINT NOT NULL)"
            ],
        )

        @self.service.handler(topic)
        async def on_order_placed(event: BenchOrderPlaced, ctx: Context) -> None:
            params = (ctx.event.id if ctx.event else "", event.order_id, event.total_cents)
            if deferred:
                ctx.defer(EFFECT_INSERT, params)
            else:
                await ctx.execute(EFFECT_INSERT, params)

    async def effects(self) -> int:
        rows = await self.service.store.query("SELECT count(*) FROM effects")
        return int(rows[0][0])

    async def max_id(self) -> int:
        rows = await self.service.store.query("SELECT coalesce(max(id), 0) FROM effects")
        return int(rows[0][0])

    async def wait_effects(self, count: int, timeout: float) -> float | None:
        """perf_counter() once `count` effects committed, None on timeout. max(id) (an index,
        cheap) is polled; count(*) only confirms (ids may have gaps)."""
        deadline = time.perf_counter() + timeout
        while True:
            if await self.max_id() >= count and await self.effects() >= count:
                return time.perf_counter()
            if time.perf_counter() > deadline:
                return None
            await asyncio.sleep(0.01)


async def pg_e2e(s: Settings, cleanup: Cleanup) -> None:
    topic = f"bench-{s.run_id}-orders"
    producer_name = f"bench-{s.run_id}-producer"
    p_schema = f"bench_{s.run_id}_producer"
    cleanup.schemas.append(p_schema)
    effects_consumer = EffectsConsumer(s, cleanup, f"bench-{s.run_id}-consumer", topic)
    consumer = effects_consumer.service
    effects, wait_effects = effects_consumer.effects, effects_consumer.wait_effects

    _, event_bytes = build_pool(producer_name)
    warm = 5 * TX_EVENTS
    total = s.e2e_events
    task: asyncio.Task[None] | None = None
    producer: ProducerProcess | None = None
    done_task: asyncio.Task[float | None] | None = None
    relayed: int | None = None
    try:
        task = await start_service(consumer)
        producer = await ProducerProcess.start(
            producer_name, s.kafka_url, _pg_url(s.dsn, p_schema), topic, str(PARTITIONS)
        )
        await producer.publish(warm)
        if await wait_effects(warm, 60) is None:
            raise RuntimeError("warm-up events did not reach the consumer within 60 s")
        start = time.perf_counter()
        done_task = asyncio.create_task(wait_effects(warm + total, 120))
        published_s = await producer.publish(total)
        done = await done_task
        applied = await effects() - warm
        duplicates = consumer.stats.duplicates
    finally:
        try:
            if done_task is not None:
                done_task.cancel()
            if producer is not None:
                relayed = await producer.stop()
        finally:
            await stop_services([consumer], [task] if task else [])
    if relayed is not None:
        relayed -= warm
    elapsed = (done if done is not None else time.perf_counter()) - start
    rate = applied / elapsed
    context: dict[str, Any] = {}
    if done is None:
        context["incomplete"] = f"only {applied} of {total} effects after {elapsed:.0f} s"
    emit(
        BENCH,
        "pg_kafka_e2e_events_per_s",
        rate,
        "events/s",
        events=total,
        tx_events=TX_EVENTS,
        partitions=PARTITIONS,
        event_bytes=event_bytes,
        seconds=elapsed,
        publish_events_per_s=round(total / published_s),
        applied=applied,
        relayed=relayed,
        duplicates=duplicates,
        consumer_max_batch=consumer.max_batch,
        consumer_concurrency=consumer.concurrency,
        consumer_processes=1,
        effect_write=f"ctx.{s.e2e_write}",
        **context,
        target=TARGETS["pg_kafka_e2e_events_per_s"],
        meets_target=rate >= 10_000 and not context,
        note="producer Service (PostgreSQL outbox, tx of 100 ctx.publish, its relay; its own"
        " process, bench/_pg_producer.py) -> Kafka -> consumer Service in this process"
        " (PostgreSQL store: inbox row + one INSERT per event, see effect_write); first"
        " publish -> effects table"
        " holds every event (max(id) polled every 10 ms, confirmed by count(*))",
    )
    await pg_consume(s, cleanup, topic, warm + total)


async def pg_consume(s: Settings, cleanup: Cleanup, topic: str, count: int) -> None:
    """The consumer's own rate: a second consumer (fresh group and schema) drains the `count`
    events the end-to-end run left in `topic`, with no producer to wait for; then a third
    does the same with tracing on (every event sampled, OTLP to Jaeger when one is set)."""
    rates: dict[bool, float | None] = {}
    for traced in (False, True):
        rate, context, batch = await _drain(s, cleanup, topic, count, traced)
        rates[traced] = rate
        emit(
            BENCH,
            "pg_consume_traced_events_per_s" if traced else "pg_consume_events_per_s",
            rate,
            "events/s",
            events=count,
            effect_write=f"ctx.{s.e2e_write}",
            consumer_max_batch=batch,
            **context,
            note="context, not a target: one consumer Service (PostgreSQL store: inbox row + one"
            " INSERT per event) in this process draining the topic the end-to-end run filled,"
            " from its first effect to its last (group join excluded): the consumer's own"
            " ceiling" + ("; traced: a process span per event, exported" if traced else ""),
        )
    off, on = rates[False], rates[True]
    if off and on:
        overhead = (off - on) / off * 100
        emit(
            BENCH,
            "tracing_overhead_consume_pct",
            overhead,
            "%",
            untraced_events_per_s=off,
            traced_events_per_s=on,
            target="<= 25 (100% sampled)",
            meets_target=overhead <= 25,
            note="throughput the consumer loses when every event is traced (one process span"
            " each; the events carry no trace context, so each is a root span)",
        )


async def _drain(
    s: Settings, cleanup: Cleanup, topic: str, count: int, traced: bool
) -> tuple[float | None, dict[str, Any], int]:
    name = f"bench-{s.run_id}-drain" + ("-traced" if traced else "")
    drain = EffectsConsumer(s, cleanup, name, topic)
    provider = None
    if traced:
        provider = _tracer_provider(drain.service.name)
        from tidings.telemetry.tracing import instrument

        instrument(drain.service, provider)
    task = await start_service(drain.service)
    try:
        first = await drain.wait_effects(1, 60)
        first_count = await drain.effects()
        done = await drain.wait_effects(count, 120)
        drained = await drain.effects()
        if provider is not None:
            provider.force_flush()
            done = time.perf_counter()  # the spans' export is part of the cost
    finally:
        await stop_services([drain.service], [task])
        if provider is not None:
            provider.shutdown()
    context: dict[str, Any] = {"applied": drained}
    if first is None or done is None:
        context["incomplete"] = f"only {drained} of {count} effects"
        return None, context, drain.service.max_batch
    rate = (drained - first_count) / (done - first) if done > first else None
    return rate, context, drain.service.max_batch


def _tracer_provider(service_name: str) -> Any:
    """A tracer provider exporting over OTLP/HTTP to TIDINGS_JAEGER_OTLP_ENDPOINT or
    OTEL_EXPORTER_OTLP_ENDPOINT, or dropping spans when neither is set."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    endpoint = os.environ.get("TIDINGS_JAEGER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    exporter = (
        OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces") if endpoint else Dropped()
    )
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000))
    return provider


async def pg_place_order(s: Settings, cleanup: Cleanup) -> None:
    """Request code on PostgreSQL: one business row and one `ctx.publish`, committed."""
    schema = f"bench_{s.run_id}_orders"
    cleanup.schemas.append(schema)
    topic = f"bench-{s.run_id}-placed"  # the relay is not running: nothing reaches Kafka
    service = Service(
        f"bench-{s.run_id}-orders",
        broker=s.kafka_url,
        store=_pg_url(s.dsn, schema),
        migrations=["CREATE TABLE orders (id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL)"],
        topics={topic: PARTITIONS},
    )
    pool, _ = build_pool(service.name)
    count = 300 if s.quick else PLACE_ORDERS
    times: list[float] = []
    try:
        await service.start()
        for n in range(count + count // 5):
            model = pool[n % len(pool)]
            order_id = f"{model.order_id}-{n}"
            started = time.perf_counter()
            async with service.transaction() as ctx:
                await ctx.execute(
                    "INSERT INTO orders(id, total_cents) VALUES (?, ?)",
                    (order_id, model.total_cents),
                )
                ctx.publish(topic, model, key=order_id)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await service.close()
    measured = sorted(times[count // 5 :])
    for name, pct in (("p50", 50), ("p99", 99)):
        emit(
            BENCH,
            f"pg_place_order_{name}_ms",
            percentile(measured, pct),
            "ms",
            samples=len(measured),
            note="context, not a target: async with service.transaction(): one INSERT + one"
            " ctx.publish (outbox row), PostgreSQL store, one at a time, relay not running;"
            " BEGIN, INSERT, outbox INSERT (with the relay's NOTIFY), COMMIT",
        )


# cleanup ---------------------------------------------------------------------------------


def delete_kafka_leftovers(bootstrap: str, run_id: str, groups: list[str]) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=15).topics if run_id in t]
    errors: list[str] = []
    if topics:
        for name, future in admin.delete_topics(topics, operation_timeout=30).items():
            try:
                future.result(30)
            except Exception as exc:
                errors.append(f"topic {name}: {exc}")
    deleted_groups = 0
    if groups:
        for name, future in admin.delete_consumer_groups(groups, request_timeout=15).items():
            try:
                future.result(15)
                deleted_groups += 1
            except Exception as exc:
                if "GROUP_ID_NOT_FOUND" not in str(exc):
                    errors.append(f"group {name}: {exc}")
    return {"topics": len(topics), "groups": deleted_groups, "errors": errors}


def drop_schemas(dsn: str, schemas: list[str]) -> list[str]:
    import psycopg
    from psycopg import sql

    errors: list[str] = []
    if not schemas:
        return errors
    with psycopg.connect(dsn, autocommit=True) as conn:
        for schema in schemas:
            try:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
            except Exception as exc:
                errors.append(f"schema {schema}: {exc}")
    return errors


# main -----------------------------------------------------------------------------------


async def _phase(name: str, metrics: Sequence[str], coro: Any) -> None:
    """Run a phase; if it fails, its metrics are printed as null with the error."""
    try:
        await coro
    except Exception as exc:
        why = f"{name} failed: {type(exc).__name__}: {exc}"
        print(f"bench kafka: {why}", file=sys.stderr)
        for metric in metrics:
            emit(BENCH, metric, None, None, error=why)


async def run(settings: Settings, cleanup: Cleanup) -> None:
    import tidings
    from bench.broker import build_payloads

    payloads = build_payloads(random.Random(42))
    broker = tidings.connect(settings.kafka_url)
    try:
        if "consume" in settings.phases:
            await _phase(
                "consume",
                ["overhead_vs_raw_pct", "ratio_vs_faststream"],
                consume_comparisons(broker, payloads, settings, cleanup),
            )
        if "pg_relay" in settings.phases:
            await _phase(
                "pg_relay",
                ["pg_relay_events_per_s"],
                pg_relay(broker, payloads, settings, cleanup),
            )
    finally:
        await broker.close()
    if "pg_e2e" in settings.phases:
        await _phase(
            "pg_e2e",
            [
                "pg_kafka_e2e_events_per_s",
                "pg_consume_events_per_s",
                "pg_consume_traced_events_per_s",
                "tracing_overhead_consume_pct",
            ],
            pg_e2e(settings, cleanup),
        )
    if "pg_place_order" in settings.phases:
        await _phase(
            "pg_place_order",
            ["pg_place_order_p50_ms", "pg_place_order_p99_ms"],
            pg_place_order(settings, cleanup),
        )


def _setup_line(settings: Settings) -> None:
    from importlib import metadata

    import confluent_kafka as ck

    postgres = None
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(settings.dsn, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            postgres = row[0] if row else None
    emit(
        BENCH,
        "setup",
        settings.run_id,
        None,
        kafka_bootstrap=settings.bootstrap,
        postgres=postgres,
        confluent_kafka=metadata.version("confluent-kafka"),
        librdkafka=ck.libversion()[0],
        psycopg=metadata.version("psycopg"),
        partitions=PARTITIONS,
        events=settings.events,
        relay_events=settings.relay_events,
        e2e_events=settings.e2e_events,
        rounds=settings.rounds,
        phases=list(settings.phases),
        quick=settings.quick,
    )


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    started = time.perf_counter()
    cleanup = Cleanup()
    with workdir(settings.dir, "tidings-bench-kafka-") as directory:
        machine(BENCH, directory)
        _setup_line(settings)
        try:
            asyncio.run(run(settings, cleanup))
        finally:
            kafka = {"errors": ["not run"]}
            with contextlib.suppress(Exception):
                kafka = delete_kafka_leftovers(settings.bootstrap, settings.run_id, cleanup.groups)
            schema_errors = ["not run"]
            with contextlib.suppress(Exception):
                schema_errors = drop_schemas(settings.dsn, cleanup.schemas)
            emit(
                BENCH,
                "cleanup",
                not kafka["errors"] and not schema_errors,
                None,
                topics_deleted=kafka.get("topics"),
                groups_deleted=kafka.get("groups"),
                schemas_dropped=len(cleanup.schemas) if not schema_errors else 0,
                errors=kafka["errors"] + schema_errors or None,
            )
    emit(
        BENCH,
        "total_runtime_s",
        time.perf_counter() - started,
        "s",
        quick=settings.quick,
        target=TARGETS,
    )
    return 0
