"""`python -m bench pipeline`: the whole service pipeline on the embedded default, in one process.

Two `tidings.Service`s share one SQLite broker file; each has its own SQLite store; durable
defaults everywhere (WAL, `synchronous=full`); the topic has the default 4 partitions. Events
are typed (`EventModel`) and as small as a realistic order event gets: `event_bytes` is the
measured size of the message the relay publishes (the CloudEvents envelope alone is ~330 bytes,
so ~390, not 300). Everything runs on one event loop, as a single-process deployment would.

* `sqlite_raw_insert_rows_per_s` - the ceiling, measured in the same run on the same disk: plain
  sqlite3, WAL + `synchronous=FULL`, one row per event, 1000-row transactions (as `bench broker`);
  `sqlite_raw_commit_{p50,p99}_ms` - one-row durable transactions (BEGIN, INSERT, COMMIT).
* `publish_alone_events_per_s`, `relay_alone_events_per_s`, `consume_alone_events_per_s` - each
  stage on its own first (events/5 events): the producer publishing with its relay running and
  no consumer; then the consumer draining that backlog.
* `e2e_events_per_s` - a producer service publishes in transactions of 100 events
  (`async with producer.transaction() as ctx: ctx.publish(...)` x100); its outbox relay moves them
  to the broker; a consumer service's handler (inbox row, automatic; one effect row queued with
  `ctx.defer`, or `await ctx.execute` with `--write execute`) commits per batch, then acks
  (offsets are committed by the consumer's heartbeat, at most 1 s later, off the critical path).
  Timed from the first publish until the consumer's store holds every effect (polled every
  5 ms). `publish_events_per_s` is the producer's rate in the same run; `relay_events_per_s`
  when the relay had moved everything to the broker. `vs_raw` = value /
  `sqlite_raw_insert_rows_per_s`. `loop_lag_*` = how late a 5 ms timer fired on the shared
  event loop meanwhile (time it was held without yielding).
* `e2e_latency_{p50,p90,p99,max}_ms` - open-loop load of 1,000 events/s, one event per
  transaction, each publish started on a timer (absolute schedule) in its own task. From the
  moment the producer's `async with` exits (commit done) to the moment the consumer's store
  transaction holding the effect has committed. That second moment is taken when the dispatcher
  acks the batch, which it does right after the commit returns: this benchmark wraps the
  consumer's `ack` (no change to tidings) as a post-commit hook. `*_handler_end_*` is the same up
  to the end of the handler (before the commit), `*_publish_tx_*` the producer side (publish
  due -> committed). If the producer cannot keep the rate, publishes more than one second
  behind schedule are skipped and the lines say `overloaded`, with the rate achieved.
  `e2e_latency_at_100_per_s_*` - the same at 100 events/s: the pipeline's latency unloaded.
* `place_order_{p50,p90,p99}_ms` - request code: `async with service.transaction() as ctx:` one
  INSERT of a business row and one `ctx.publish` (one outbox row), durable, with the service
  running (`run()`: its outbox relay publishes each order to the broker as in production).
  One request every 2-8 ms (the relay has time to drain between requests);
  `place_order_closed_loop_*` sends the next request as soon as the previous one returns, so
  requests compete with the relay for the store's single writer. `vs_raw` = value /
  `sqlite_raw_commit_p50_ms`.
* `tracing_overhead_pct` - the e2e pipeline (at most 30,000 events) on fresh files untraced
  and traced (OpenTelemetry, every event sampled: a create span per publish, a process span
  per event and handler, a send span per relay publish; exported over OTLP/HTTP to
  TIDINGS_JAEGER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT when set, else dropped),
  alternating, twice each: the throughput lost (target <= 25). `tracing_cpu_us_per_event` is
  the process CPU time tracing adds per event (every thread: spans, processors, export);
  `*_sampled_10pct` the same with 10% of traces sampled (parent-based).

Targets are printed in the `target` field; `meets_target` says whether this run met them.
`--phases` runs a subset (for profiling one path, e.g. `--phases e2e`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench._common import emit, machine, percentile, workdir
from tidings.event import event_to_message
from tidings.schema import EventModel
from tidings.service import Context, Service

BENCH = "pipeline"
TX_EVENTS = 100
PARTITIONS = 4  # tidings.service.DEFAULT_PARTITIONS: what a consumed topic gets by default
ORDER_IDS = 10_000
POOL = 5_000
LATENCY_RATE = 1000
LATENCY_WARMUP = 100
LOW_RATE = 100
POLL_S = 0.005
LAG_TICK_S = 0.005
PHASES = ("raw", "e2e", "latency", "place_order", "tracing")
EFFECT_INSERT = (
    "INSERT INTO effects(event_id, order_id, total_cents, handled_ns) VALUES (?, ?, ?, ?)"
)

TARGETS = {
    "e2e_events_per_s": ">= 20000",
    "e2e_latency_p50_ms": "<= 3 (at 1,000 events/s)",
    "e2e_latency_p99_ms": "<= 20 (at 1,000 events/s)",
    "place_order_p50_ms": "<= 1",
}


class BenchOrderPlaced(EventModel, type="BENCH_ORDER_PLACED", version=1):
    """The smallest realistic order event: the CloudEvents envelope alone is ~330 bytes."""

    order_id: str
    total_cents: int


@dataclass(frozen=True)
class Settings:
    quick: bool
    events: int
    dir: str | None
    phases: tuple[str, ...]
    raw_seconds: float
    raw_commits: int
    e2e_max_seconds: float
    latency_seconds: float
    low_rate_seconds: float
    place_orders: int
    closed_loop_seconds: float
    write: str = "defer"


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench pipeline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short run (smoke tests, CI)")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="events through the sustained pipeline, in transactions of 100 "
        "(default 100000, quick 10000)",
    )
    parser.add_argument(
        "--dir", default=None, help="where to create the database files (default: a temp dir)"
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--write",
        choices=("defer", "execute"),
        default="defer",
        help="how the consumer's handler writes its effect row: ctx.defer (default) or await"
        " ctx.execute",
    )
    args = parser.parse_args(list(argv))
    quick = args.quick
    events = args.events if args.events is not None else (10_000 if quick else 100_000)
    if events < TX_EVENTS:
        parser.error(f"--events must be >= {TX_EVENTS}")
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    unknown = sorted(set(phases) - set(PHASES))
    if unknown or not phases:
        parser.error(f"--phases: unknown {', '.join(unknown) or '(empty)'}; use {PHASES}")
    return Settings(
        quick=quick,
        events=-(-events // TX_EVENTS) * TX_EVENTS,
        dir=args.dir,
        phases=phases,
        raw_seconds=0.5 if quick else 2.0,
        raw_commits=200 if quick else 1000,
        e2e_max_seconds=20.0 if quick else 60.0,
        latency_seconds=2.0 if quick else 10.0,
        low_rate_seconds=1.5 if quick else 3.0,
        place_orders=300 if quick else 1000,
        closed_loop_seconds=1.0 if quick else 2.0,
        write=args.write,
    )


# payloads -------------------------------------------------------------------------------


def _order(rng: random.Random) -> BenchOrderPlaced:
    return BenchOrderPlaced(
        order_id=f"ord-{rng.randrange(ORDER_IDS):06d}", total_cents=rng.randrange(100, 100_000)
    )


def _encoded_size(model: BenchOrderPlaced, source: str) -> int:
    """Bytes of the message the relay publishes for `model` (as `ctx.publish` builds it)."""
    event = model.to_event(key=model.order_id, source=source)
    return event_to_message(event).size


def build_pool(source: str) -> tuple[list[BenchOrderPlaced], int]:
    """Pre-built event models (building them is the caller's cost, not tidings'), and the mean
    size of the message each becomes (envelope, data, key, content-type header)."""
    rng = random.Random(42)
    pool = [_order(rng) for _ in range(POOL)]
    sample = pool[:200]
    size = round(sum(_encoded_size(m, source) for m in sample) / len(sample))
    return pool, size


# raw SQLite ceiling ---------------------------------------------------------------------


@dataclass
class Raw:
    rows_per_s: float | None = None
    commit_p50_ms: float | None = None
    commit_p99_ms: float | None = None


def _raw_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def raw_sqlite(directory: str, event_bytes: int, settings: Settings) -> Raw:
    """Plain sqlite3, the broker's and stores' file settings: 1000-row transactions, then
    one-row transactions (the cost of one durable commit)."""
    rng = random.Random(3)
    rows = [(rng.randbytes(event_bytes),) for _ in range(20_000)]
    chunks = [rows[i : i + 1000] for i in range(0, len(rows), 1000)]
    raw = Raw()
    conn = _raw_connect(os.path.join(directory, "raw.db"))
    try:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        written = index = 0
        start = time.perf_counter()
        while True:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events(payload) VALUES (?)", chunks[index])
            conn.execute("COMMIT")
            written += len(chunks[index])
            index = (index + 1) % len(chunks)
            elapsed = time.perf_counter() - start
            if (written >= settings.events and elapsed >= settings.raw_seconds) or elapsed > 30:
                break
        raw.rows_per_s = written / elapsed
        emit(
            BENCH,
            "sqlite_raw_insert_rows_per_s",
            raw.rows_per_s,
            "rows/s",
            rows=written,
            batch=1000,
            event_bytes=event_bytes,
            seconds=elapsed,
            synchronous="full",
            note="ceiling: plain sqlite3, WAL, one row per event, 1000-row transactions",
        )

        conn.execute("CREATE TABLE commits (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        samples = []
        for n in range(settings.raw_commits + 20):
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO commits(payload) VALUES (?)", rows[n % len(rows)])
            conn.execute("COMMIT")
            if n >= 20:
                samples.append((time.perf_counter() - t0) * 1000)
        samples.sort()
        raw.commit_p50_ms = percentile(samples, 50)
        raw.commit_p99_ms = percentile(samples, 99)
        for name, value in (("p50", raw.commit_p50_ms), ("p99", raw.commit_p99_ms)):
            emit(
                BENCH,
                f"sqlite_raw_commit_{name}_ms",
                value,
                "ms",
                samples=len(samples),
                rows_per_tx=1,
                event_bytes=event_bytes,
                synchronous="full",
                note="BEGIN + one INSERT + COMMIT (fsync), plain sqlite3: one durable commit",
            )
    finally:
        conn.close()
    return raw


# the pipeline ---------------------------------------------------------------------------


@dataclass
class Tracker:
    """Per-event timestamps (perf_counter_ns) for the latency phase."""

    active: bool = False
    committed: dict[str, int] = field(default_factory=dict)  # producer commit returned
    scheduled: dict[str, int] = field(default_factory=dict)  # publish was due
    handled: dict[str, int] = field(default_factory=dict)  # handler finished (pre-commit)
    acked: dict[str, int] = field(default_factory=dict)  # consumer commit returned
    positions: dict[tuple[str, int, int], str] = field(default_factory=dict)

    def on_handled(self, position: tuple[str, int, int] | None, event_id: str) -> None:
        if self.active and position is not None:
            self.handled[event_id] = time.perf_counter_ns()
            self.positions[position] = event_id

    def on_ack(self, batch: Any, now: int) -> None:
        if not self.active:
            return
        for record in batch.records:
            event_id = self.positions.pop((batch.topic, batch.partition, record.offset), None)
            if event_id is not None:
                self.acked[event_id] = now


def install_ack_hook(service: Service, tracker: Tracker) -> None:
    """Make the consumer's `ack` a post-commit hook: the dispatcher acks a batch right after
    the store transaction that applied it has committed. Instance patch; tidings unchanged."""
    broker: Any = service.broker
    subscribe = broker.subscribe

    def hooked_subscribe(*args: Any, **kwargs: Any) -> Any:
        consumer = subscribe(*args, **kwargs)
        ack = consumer.ack

        def hooked_ack(batch: Any) -> None:
            now = time.perf_counter_ns()
            ack(batch)
            tracker.on_ack(batch, now)

        consumer.ack = hooked_ack
        return consumer

    broker.subscribe = hooked_subscribe


class LoopLag:
    """How late the event loop runs a periodic timer: how long other work holds the loop
    without yielding (a request handler in this process waits at least that long)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self.samples.append((loop.time() - due) * 1000)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.create_task(self._run())

    def stop(self) -> dict[str, float]:
        if self._task is not None:
            self._task.cancel()
        lags = sorted(self.samples) or [0.0]
        return {
            "loop_lag_p50_ms": percentile(lags, 50),
            "loop_lag_p99_ms": percentile(lags, 99),
            "loop_lag_max_ms": lags[-1],
        }


@dataclass
class Pipeline:
    producer: Service
    consumer: Service
    tracker: Tracker
    effect_write: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    consumer_started: bool = False

    async def start_consumer(self) -> None:
        if not self.consumer_started:
            self.tasks.append(await start_service(self.consumer))
            self.consumer_started = True


async def start_service(service: Service) -> asyncio.Task[None]:
    try:
        return await asyncio.wait_for(service.run_in_background(), 30)
    except TimeoutError:
        raise RuntimeError(f"service {service.name} did not start within 30 s") from None


async def stop_services(services: Sequence[Service], tasks: Sequence[asyncio.Task[None]]) -> None:
    for service in services:
        service.stop()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)


async def effects(service: Service) -> int:
    """Effects committed so far (rowid table, never deleted: max(id) == count, O(log n))."""
    rows = await service.store.query("SELECT coalesce(max(id), 0) FROM effects")
    return int(rows[0][0])


async def wait_effects(service: Service, count: int, timeout: float) -> float | None:
    """perf_counter() when `count` effects are committed, None on timeout."""
    deadline = time.perf_counter() + timeout
    while True:
        if await effects(service) >= count:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        await asyncio.sleep(POLL_S)


async def wait_outbox_empty(service: Service, timeout: float) -> float | None:
    """perf_counter() when the service's outbox is empty (all relayed), None on timeout."""
    deadline = time.perf_counter() + timeout
    while True:
        if await service.store.outbox_size() == 0:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        await asyncio.sleep(POLL_S)


async def start_pipeline(directory: str, *, deferred: bool, started: bool = True) -> Pipeline:
    """Both services; the producer (and its relay) runs (unless not `started`: the caller
    starts it), the consumer is started later."""
    broker_url = f"sqlite:///{os.path.join(directory, 'bus.db')}"
    topics = {"orders": PARTITIONS}
    producer = Service(
        "bench-producer",
        broker=broker_url,
        store=f"sqlite:///{os.path.join(directory, 'producer.db')}",
        topics=topics,
    )
    consumer = Service(
        "bench-consumer",
        broker=broker_url,
        store=f"sqlite:///{os.path.join(directory, 'consumer.db')}",
        topics=topics,
        migrations=[
            "CREATE TABLE effects (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL,"
            " order_id TEXT NOT NULL, total_cents INTEGER NOT NULL, handled_ns INTEGER NOT NULL)"
        ],
    )
    tracker = Tracker()

    @consumer.handler("orders")
    async def on_order_placed(event: BenchOrderPlaced, ctx: Context) -> None:
        event_id = ctx.event.id if ctx.event else ""
        params = (event_id, event.order_id, event.total_cents, time.time_ns())
        if deferred:
            ctx.defer(EFFECT_INSERT, params)
        else:
            await ctx.execute(EFFECT_INSERT, params)
        if tracker.active:
            tracker.on_handled(ctx.position, event_id)

    install_ack_hook(consumer, tracker)
    pipeline = Pipeline(producer, consumer, tracker, "ctx.defer" if deferred else "ctx.execute")
    if started:
        pipeline.tasks.append(await start_service(producer))
    return pipeline


async def publish_batch(producer: Service, models: Sequence[BenchOrderPlaced]) -> None:
    async with producer.transaction() as ctx:
        for model in models:
            ctx.publish("orders", model, key=model.order_id)


async def publish_many(producer: Service, pool: list[BenchOrderPlaced], total: int) -> None:
    """`total` events in transactions of TX_EVENTS, one transaction after the other."""
    index = 0
    for _ in range(total // TX_EVENTS):
        if index + TX_EVENTS > len(pool):
            index = 0
        await publish_batch(producer, pool[index : index + TX_EVENTS])
        index += TX_EVENTS


async def warm_up(pipeline: Pipeline, pool: list[BenchOrderPlaced]) -> None:
    """Push a few transactions through (group joined, partitions owned, caches warm)."""
    await pipeline.start_consumer()
    base = await effects(pipeline.consumer)
    await publish_many(pipeline.producer, pool, 3 * TX_EVENTS)
    if await wait_effects(pipeline.consumer, base + 3 * TX_EVENTS, 30) is None:
        raise RuntimeError("warm-up events did not reach the consumer within 30 s")


async def stages_alone(
    pipeline: Pipeline, pool: list[BenchOrderPlaced], raw: Raw, event_bytes: int, s: Settings
) -> None:
    """Each stage on its own, before the pipeline runs as a whole: the producer publishing
    with its relay running and no consumer; then the consumer draining that backlog."""
    producer, consumer = pipeline.producer, pipeline.consumer
    total = max(TX_EVENTS, s.events // 5 // TX_EVENTS * TX_EVENTS)
    base = {"events": total, "tx_events": TX_EVENTS, "event_bytes": event_bytes}
    start = time.perf_counter()
    await publish_many(producer, pool, total)
    published_s = time.perf_counter() - start
    emit(
        BENCH,
        "publish_alone_events_per_s",
        total / published_s,
        "events/s",
        **base,
        seconds=published_s,
        vs_raw=total / published_s / raw.rows_per_s if raw.rows_per_s else None,
        note="producer service alone (its relay running, no consumer): transactions of 100"
        " ctx.publish() committed",
    )
    relayed = await wait_outbox_empty(producer, s.e2e_max_seconds)
    if relayed is None:
        raise RuntimeError(f"the relay did not drain {total} events in {s.e2e_max_seconds} s")
    emit(
        BENCH,
        "relay_alone_events_per_s",
        total / (relayed - start),
        "events/s",
        **base,
        seconds=relayed - start,
        note="same run: first publish -> the relay had moved every event to the broker",
    )
    start = time.perf_counter()
    await pipeline.start_consumer()
    done = await wait_effects(consumer, total, s.e2e_max_seconds)
    if done is None:
        raise RuntimeError(f"the consumer did not apply {total} events in {s.e2e_max_seconds} s")
    emit(
        BENCH,
        "consume_alone_events_per_s",
        total / (done - start),
        "events/s",
        **base,
        partitions=PARTITIONS,
        max_batch=consumer.max_batch,
        seconds=done - start,
        note="consumer service alone draining that backlog (group join included): decode,"
        " typed model, inbox row + one effect row per event, one transaction per batch",
    )


def _relayed(service: Service) -> int:
    runner = service.runner
    return runner.relay.published if runner is not None else 0


async def e2e(
    pipeline: Pipeline,
    pool: list[BenchOrderPlaced],
    raw: Raw,
    event_bytes: int,
    s: Settings,
    *,
    prefix: str = "e2e",
    quiet: bool = False,
) -> float:
    """The sustained pipeline's rate; `quiet` emits only `<prefix>_events_per_s`."""
    producer, consumer = pipeline.producer, pipeline.consumer
    base_effects = await effects(consumer)
    base_relayed = _relayed(producer)
    total = s.events
    relay_done: list[float] = []

    async def watch_relay() -> None:
        while _relayed(producer) - base_relayed < total:
            await asyncio.sleep(POLL_S)
        relay_done.append(time.perf_counter())

    lag = LoopLag()
    lag.start()
    start = time.perf_counter()
    watcher = asyncio.create_task(watch_relay())
    done_task = asyncio.create_task(wait_effects(consumer, base_effects + total, s.e2e_max_seconds))
    await publish_many(producer, pool, total)
    published_s = time.perf_counter() - start
    done = await done_task
    lags = lag.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(watcher), 5)
    watcher.cancel()
    applied = await effects(consumer) - base_effects
    elapsed = (done if done is not None else time.perf_counter()) - start
    context: dict[str, Any] = {
        "events": total,
        "tx_events": TX_EVENTS,
        "partitions": PARTITIONS,
        "event_bytes": event_bytes,
        "seconds": elapsed,
        "effect_write": pipeline.effect_write,
        "applied": applied,
    }
    if done is None:
        context["incomplete"] = f"only {applied} of {total} effects after {elapsed:.0f} s"
    rate = applied / elapsed
    if quiet:
        emit(BENCH, f"{prefix}_events_per_s", rate, "events/s", **context)
        return rate
    emit(
        BENCH,
        f"{prefix}_events_per_s",
        rate,
        "events/s",
        **context,
        vs_raw=rate / raw.rows_per_s if raw.rows_per_s else None,
        target=TARGETS["e2e_events_per_s"],
        meets_target=rate >= 20_000,
        **lags,
        note="first publish -> last effect committed in the consumer's store; vs_raw = value /"
        " sqlite_raw_insert_rows_per_s (each event costs, durably: an outbox row written and"
        " deleted, a broker record, an inbox row and an effect row); loop_lag = how late a"
        f" {LAG_TICK_S * 1000:.0f} ms timer fired on the shared event loop meanwhile",
    )
    emit(
        BENCH,
        "publish_events_per_s",
        total / published_s,
        "events/s",
        events=total,
        tx_events=TX_EVENTS,
        event_bytes=event_bytes,
        seconds=published_s,
        vs_raw=total / published_s / raw.rows_per_s if raw.rows_per_s else None,
        note="producer side of the e2e run: transactions of 100 ctx.publish() committed,"
        " with the relay and the consumer running in the same process",
    )
    if relay_done:
        relay_s = relay_done[0] - start
        emit(
            BENCH,
            "relay_events_per_s",
            total / relay_s,
            "events/s",
            events=total,
            seconds=relay_s,
            note="e2e run: first publish -> the relay had published every event to the broker",
        )
    group = await consumer.broker.admin.describe_group(consumer.name)
    emit(
        BENCH,
        "e2e_duplicates",
        consumer.stats.duplicates,
        "events",
        uncommitted_offsets_at_end=group.lag,
        note="redelivered events the inbox skipped. Offsets are committed by the consumer's"
        " heartbeat (<= 1 s after the ack), so some are still uncommitted when the last effect"
        " commits; a crash there means redelivery, which the inbox absorbs",
    )
    return rate


TRACING_VARIANTS = {"untraced": None, "traced": 1.0, "traced_sampled_10pct": 0.1}
TRACING_EVENTS = 30_000


async def tracing_cost(
    directory: str, pool: list[BenchOrderPlaced], raw: Raw, event_bytes: int, s: Settings
) -> None:
    """The e2e pipeline on fresh files untraced, traced with every event sampled (create,
    send and process spans) and with 10% sampled (parent-based: a trace is kept or dropped
    whole), alternating, twice each. Spans go over OTLP/HTTP to Jaeger when
    TIDINGS_JAEGER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT names one, else to an exporter
    that drops them."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from tidings.telemetry.tracing import instrument

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    endpoint = os.environ.get("TIDINGS_JAEGER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    s = replace(s, events=min(s.events, TRACING_EVENTS))
    rates: dict[str, list[float]] = {name: [] for name in TRACING_VARIANTS}
    cpu_us: dict[str, list[float]] = {name: [] for name in TRACING_VARIANTS}
    for round_ in range(2):
        for name, ratio in TRACING_VARIANTS.items():
            where = os.path.join(directory, f"tracing-{round_}-{name}")
            os.makedirs(where)
            pipeline = await start_pipeline(where, deferred=s.write == "defer", started=False)
            providers = []
            for service in (pipeline.producer, pipeline.consumer) if ratio else ():
                provider = TracerProvider(
                    resource=Resource.create({SERVICE_NAME: service.name}),
                    sampler=ParentBased(TraceIdRatioBased(ratio)),
                )
                exporter = (
                    OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
                    if endpoint
                    else Dropped()
                )
                provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000))
                providers.append(provider)
                instrument(service, provider)
            pipeline.tasks.append(await start_service(pipeline.producer))
            try:
                await warm_up(pipeline, pool)
                cpu = time.process_time()
                rates[name].append(
                    await e2e(pipeline, pool, raw, event_bytes, s, prefix=f"e2e_{name}", quiet=True)
                )
                for provider in providers:
                    provider.force_flush()  # exporting these spans is part of the cost
                cpu_us[name].append((time.process_time() - cpu) / s.events * 1e6)
            finally:
                await stop_services([pipeline.producer, pipeline.consumer], pipeline.tasks)
                for provider in providers:
                    provider.shutdown()
    off, cpu_off = max(rates["untraced"]), min(cpu_us["untraced"])
    exporter_name = "otlp/http " + endpoint if endpoint else "dropped (no OTLP endpoint set)"
    for name in ("traced", "traced_sampled_10pct"):
        on, cpu_on = max(rates[name]), min(cpu_us[name])
        suffix = "" if name == "traced" else "_sampled_10pct"
        emit(
            BENCH,
            f"tracing_cpu_us_per_event{suffix}",
            cpu_on - cpu_off,
            "us",
            untraced_cpu_us_per_event=cpu_off,
            traced_cpu_us_per_event=cpu_on,
            exporter=exporter_name,
            note="process CPU time (all threads: services, relay, span processors, OTLP"
            " export) per event through producer and consumer, traced minus untraced, lowest"
            " of two runs each",
        )
        overhead = (off - on) / off * 100
        extra: dict[str, Any] = {}
        if name == "traced":
            extra = {"target": "<= 25 (100% sampled)", "meets_target": overhead <= 25}
        emit(
            BENCH,
            f"tracing_overhead_pct{suffix}",
            overhead,
            "%",
            untraced_events_per_s=off,
            traced_events_per_s=on,
            events=s.events,
            exporter=exporter_name,
            **extra,
            note="throughput lost at the pipeline's top speed, best of two alternating runs"
            " each; tracing off installs nothing (no middleware, no hooks), so with the extra"
            " installed but off the pipeline runs the untraced code",
        )


async def latency(
    pipeline: Pipeline,
    pool: list[BenchOrderPlaced],
    raw: Raw,
    event_bytes: int,
    *,
    rate: int,
    seconds: float,
    prefix: str,
    with_targets: bool,
) -> None:
    """Open-loop paced publishing, one event per transaction, each in its own task started on
    an absolute schedule; latencies per event from the producer's commit to the consumer's."""
    producer, tracker = pipeline.producer, pipeline.tracker
    warmup = min(LATENCY_WARMUP, int(rate * seconds) // 10)
    total = int(rate * seconds) + warmup
    max_pending = rate  # one second behind schedule
    for table in (tracker.committed, tracker.scheduled, tracker.handled, tracker.acked):
        table.clear()
    tracker.positions.clear()
    tracker.active = True
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    errors: list[BaseException] = []
    pending = 0
    skipped = 0

    def done_one(_: object) -> None:
        nonlocal pending
        pending -= 1

    async def publish_one(n: int, due_ns: int) -> None:
        model = pool[n % len(pool)]
        try:
            async with producer.transaction() as ctx:
                envelope = ctx.publish("orders", model, key=model.order_id)
        except Exception as exc:
            errors.append(exc)
            return
        now = time.perf_counter_ns()  # the transaction has committed
        tracker.committed[envelope.id] = now
        tracker.scheduled[envelope.id] = due_ns

    interval = 1.0 / rate
    lag = LoopLag()
    lag.start()
    start = loop.time()
    start_ns = time.perf_counter_ns()
    for n in range(total):
        due = start + n * interval
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if pending >= max_pending:
            skipped += 1  # a second behind schedule: the producer cannot sustain this rate
            continue
        pending += 1
        task = asyncio.create_task(publish_one(n, start_ns + int(n * interval * 1e9)))
        task.add_done_callback(done_one)
        tasks.append(task)
    await asyncio.gather(*tasks)
    committed_s = (max(tracker.committed.values(), default=start_ns) - start_ns) / 1e9
    deadline = time.monotonic() + 30
    while len(tracker.acked) < len(tracker.committed) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    lags = lag.stop()
    tracker.active = False
    if errors:
        raise RuntimeError(f"{len(errors)} paced publishes failed, first: {errors[0]!r}")

    order = sorted(tracker.committed, key=tracker.scheduled.__getitem__)[warmup:]
    missing = [e for e in order if e not in tracker.acked]
    commit_ms = sorted(
        (tracker.acked[e] - tracker.committed[e]) / 1e6 for e in order if e in tracker.acked
    )
    handler_ms = sorted(
        (tracker.handled[e] - tracker.committed[e]) / 1e6 for e in order if e in tracker.handled
    )
    publish_ms = sorted((tracker.committed[e] - tracker.scheduled[e]) / 1e6 for e in order)
    achieved = len(tracker.committed) / committed_s if committed_s > 0 else 0.0
    context: dict[str, Any] = {
        "samples": len(commit_ms),
        "rate_per_s": rate,
        "achieved_rate_per_s": round(achieved),
        "tx_events": 1,
        "partitions": PARTITIONS,
        "event_bytes": event_bytes,
        "sqlite_raw_commit_p50_ms": raw.commit_p50_ms,
        **lags,
    }
    if skipped:
        context["skipped_publishes"] = skipped
        context["overloaded"] = (
            f"the producer committed only ~{achieved:.0f} one-event transactions/s; publishes"
            f" more than {max_pending} behind schedule were skipped, so these latencies are at"
            f" that rate (with a 1 s queue of transactions waiting), not {rate:,}/s"
        )
    if missing:
        context["missing"] = len(missing)
    limits = {"p50": 3.0, "p99": 20.0}
    for name, pct in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        value = percentile(commit_ms, pct)
        extra: dict[str, Any] = {}
        if with_targets and name in limits:
            extra = {
                "target": TARGETS[f"e2e_latency_{name}_ms"],
                "meets_target": value <= limits[name] and not skipped,
            }
        emit(
            BENCH,
            f"{prefix}_{name}_ms",
            value,
            "ms",
            **context,
            **extra,
            note="producer commit returned -> consumer's effect transaction commit returned"
            " (taken at the dispatcher's ack, right after its COMMIT; fsync included)",
        )
    for name, pct in (("p50", 50), ("p99", 99)):
        emit(
            BENCH,
            f"{prefix}_handler_end_{name}_ms",
            percentile(handler_ms, pct),
            "ms",
            samples=len(handler_ms),
            rate_per_s=rate,
            sqlite_raw_commit_p50_ms=raw.commit_p50_ms,
            effect_write=pipeline.effect_write,
            note="producer commit returned -> end of the handler, BEFORE the consumer's commit"
            " (excludes that commit; with ctx.defer also the effect INSERT, which runs after the"
            " handler returns), for comparison with the line above",
        )
    for name, pct in (("p50", 50), ("p99", 99)):
        emit(
            BENCH,
            f"{prefix}_publish_tx_{name}_ms",
            percentile(publish_ms, pct),
            "ms",
            samples=len(publish_ms),
            rate_per_s=rate,
            sqlite_raw_commit_p50_ms=raw.commit_p50_ms,
            note="producer side of the paced run: publish due -> its one-event transaction"
            " committed (waiting behind earlier transactions and the relay included)",
        )


# place order ----------------------------------------------------------------------------


async def place_order(
    directory: str, pool: list[BenchOrderPlaced], raw: Raw, event_bytes: int, s: Settings
) -> None:
    service = Service(
        "bench-orders",
        broker=f"sqlite:///{os.path.join(directory, 'bus.db')}",
        store=f"sqlite:///{os.path.join(directory, 'orders.db')}",
        topics={"order-events": PARTITIONS},
        migrations=[
            "CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,"
            " total_cents INTEGER NOT NULL, status TEXT NOT NULL)"
        ],
    )
    task = await start_service(service)
    counter = 0

    async def one() -> float:
        nonlocal counter
        model = pool[counter % len(pool)]
        order_id = f"o-{counter:08d}"
        customer_id = f"cus-{counter % 100_000:06d}"
        t0 = time.perf_counter()
        async with service.transaction() as ctx:
            await ctx.execute(
                "INSERT INTO orders(id, customer_id, total_cents, status)"
                " VALUES (?, ?, ?, 'PLACED')",
                (order_id, customer_id, model.total_cents),
            )
            ctx.publish("order-events", model, key=order_id)
        elapsed = (time.perf_counter() - t0) * 1000
        counter += 1
        return elapsed

    try:
        for _ in range(20):  # warm-up
            await one()
            await asyncio.sleep(0.005)
        rng = random.Random(11)
        paced: list[float] = []
        for _ in range(s.place_orders):
            paced.append(await one())
            await asyncio.sleep(rng.uniform(0.002, 0.008))
        closed: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < s.closed_loop_seconds:
            closed.append(await one())
        closed_s = time.perf_counter() - start
        deadline = time.monotonic() + 30
        while await service.store.outbox_size() and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        relayed = service.runner.relay.published if service.runner else 0
    finally:
        await stop_services([service], [task])

    paced.sort()
    closed.sort()
    base = {
        "rows_per_tx": "1 business row + 1 outbox row",
        "event_bytes": event_bytes,
        "relay": "running",
        "sqlite_raw_commit_p50_ms": raw.commit_p50_ms,
    }
    for name, pct in (("p50", 50), ("p90", 90), ("p99", 99)):
        value = percentile(paced, pct)
        extra: dict[str, Any] = {}
        if name == "p50":
            extra = {"target": TARGETS["place_order_p50_ms"], "meets_target": value <= 1.0}
        emit(
            BENCH,
            f"place_order_{name}_ms",
            value,
            "ms",
            samples=len(paced),
            mode="paced, one request every 2-8 ms",
            **base,
            vs_raw=value / raw.commit_p50_ms if raw.commit_p50_ms else None,
            **extra,
            note="async with service.transaction(): INSERT + ctx.publish, until the commit"
            " returned; vs_raw = value / sqlite_raw_commit_p50_ms",
        )
    for name, pct in (("p50", 50), ("p99", 99)):
        emit(
            BENCH,
            f"place_order_closed_loop_{name}_ms",
            percentile(closed, pct),
            "ms",
            samples=len(closed),
            mode="closed loop: next request as soon as the previous returns",
            orders_per_s=len(closed) / closed_s,
            **base,
            relayed=relayed,
        )


# main -----------------------------------------------------------------------------------


async def run(settings: Settings, directory: str) -> None:
    pool, event_bytes = build_pool("bench-producer")
    raw = Raw()
    if "raw" in settings.phases:
        raw = raw_sqlite(directory, event_bytes, settings)
    if "e2e" in settings.phases or "latency" in settings.phases:
        pipeline = await start_pipeline(directory, deferred=settings.write == "defer")
        try:
            if "e2e" in settings.phases:
                await stages_alone(pipeline, pool, raw, event_bytes, settings)
                await e2e(pipeline, pool, raw, event_bytes, settings)
            else:
                await warm_up(pipeline, pool)
            if "latency" in settings.phases:
                await latency(
                    pipeline,
                    pool,
                    raw,
                    event_bytes,
                    rate=LATENCY_RATE,
                    seconds=settings.latency_seconds,
                    prefix="e2e_latency",
                    with_targets=True,
                )
                await latency(
                    pipeline,
                    pool,
                    raw,
                    event_bytes,
                    rate=LOW_RATE,
                    seconds=settings.low_rate_seconds,
                    prefix=f"e2e_latency_at_{LOW_RATE}_per_s",
                    with_targets=False,
                )
        finally:
            await stop_services([pipeline.producer, pipeline.consumer], pipeline.tasks)
            if not pipeline.consumer_started:
                await pipeline.consumer.close()
    if "place_order" in settings.phases:
        await place_order(directory, pool, raw, event_bytes, settings)
    if "tracing" in settings.phases:
        await tracing_cost(directory, pool, raw, event_bytes, settings)


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    started = time.perf_counter()
    with workdir(settings.dir, "tidings-bench-pipeline-") as directory:
        machine(BENCH, directory)
        asyncio.run(run(settings, directory))
    emit(
        BENCH,
        "total_runtime_s",
        time.perf_counter() - started,
        "s",
        quick=settings.quick,
        phases=",".join(settings.phases),
        target=TARGETS,
    )
    return 0
