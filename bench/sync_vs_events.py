"""`python -m bench sync_vs_events`: the article's headline, synchronous vs event-driven placeOrder.

The article's synchronous `placeOrder` makes six sequential calls and answers after the last:
inventory.reserve 100 ms, payment.charge 200 ms, email.sendConfirmation 150 ms, analytics.track
50 ms, fulfillment.start 100 ms, loyalty.addPoints 50 ms ("Total: 650ms"; "Email down = order
fails"). The event-driven one saves the order and publishes ORDER_PLACED ("Total: 15ms (43x
faster!)"). Both sides here are real HTTP servers on 127.0.0.1, measured by this process with
httpx, closed loop, `--concurrency` requests in flight:

* **sync** - six downstream simulators, one OS process each (Starlette on uvicorn), each
  sleeping its latency and answering 200; a sync order service (its own OS process) whose
  `POST /orders` calls them one after another with httpx and answers 200 only if all six
  succeeded, else 503 naming the failed service (no compensation: the stock stays reserved
  and the card charged, as in the article's code).
* **events** - the real tidings order system (`examples/orders`, one OS process per service,
  `examples.orders.cluster.ProcessCluster`, embedded SQLite broker and stores, durable
  defaults) in a temporary directory; `POST /orders` with a bearer token, an Idempotency-Key
  and a correlation id, answered 202 once the order and its ORDER_PLACED outbox row are
  committed. The other six services consume meanwhile, on the same cores.

* **bare** - a bare Starlette endpoint (`POST /orders` answers 202 with a fixed body and
  touches no database) served by the same server stack as the order API
  (`examples.orders.api.serving`, its own OS process) and measured by the same client at the
  same concurrency, beside the idle order system: the floor that HTTP alone sets on this
  machine.

A request succeeds if it answers 2xx within `--timeout`; nothing is retried. Response times
are those of every request, success or failure (a timed-out request counts as the timeout).

Metrics: `{sync,events,bare_http}_p50_ms`, `_p99_ms`, `_success_rate`, the same one request at
a time (`*_sequential`) for events and bare; `events_vs_bare_p50` (and `_sequential`): how
close the order API comes to bare HTTP; the same with the email service down (`*_email_down`:
sync kills the email simulator, events SIGTERMs the email service, which is started again
afterwards); `speedup` = sync_p50 / events_p50; `events_time_to_final_*_ms` - from an order's
commit to its final status (CONFIRMED / REJECTED / CANCELLED), the work the sync side does
before it answers (here with no simulated latency in the downstream handlers);
`article_claim` - 650 ms, 15 ms, 43x.

**Capacity** (`capacity_orders_per_s`): orders sent open-loop at a steady rate (request i at
i / rate seconds, whatever the answers) for `--capacity-seconds` (60), by 64 workers, each an httpx
client with one keep-alive connection (`bench._capacity`: one shared pool collapses under
open-loop overload), the same for both sides; a request's response time runs from when it
was due. A rate passes if every
request answered 2xx with response p99 <= 1 s, the client kept the rate (>= 95%), every order
of the window ended final with time-to-final p99 <= 1 s, and every consumer group's lag was
back to 0 within `LAG_GRACE_S` of the last order's final status. The search starts near the
closed-loop rate, goes up by 1.5x while rates pass (down by half while they fail), then halves
the bracket twice. `bare_capacity_requests_per_s`: the same search against the bare endpoint (every
request 2xx, the rate kept, response p99 <= 1 s; `--bare-capacity-seconds`, 20);
`capacity_vs_bare` is their ratio. `invariants`: the order system's invariants
(`examples.orders.checks`) after every phase, every order final.

`--backend kafka-pg` runs the order system on Kafka and PostgreSQL (`--bootstrap`, `--dsn`, or
`TIDINGS_KAFKA_BOOTSTRAP` / `TIDINGS_POSTGRES_DSN`): the example's topics are deleted before
and after (other runs' events would be consumed), consumer groups get a prefix of their own
and each service a schema of its own, dropped afterwards. `--tracing RATIO` traces the order
system's services (OpenTelemetry through the standard variables: parent-based sampling of
RATIO of the orders, OTLP/HTTP to `$OTEL_EXPORTER_OTLP_ENDPOINT` or
`$TIDINGS_JAEGER_OTLP_ENDPOINT`) - the cost of tracing as users run it; every order line
says `tracing`. `--quick` for a smoke run (40 requests, capacity trials of 3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench._capacity import OpenLoopClient, OpenResult, Verdict, open_loop, search
from bench._common import emit, machine, percentile, workdir

BENCH = "sync_vs_events"
HOST = "127.0.0.1"
TOKEN = "bench-sync-vs-events"  # noqa: S105 (a throwaway bearer token for a local cluster)

# The article's synchronous placeOrder, in order: (service, call, latency in ms).
DOWNSTREAM: tuple[tuple[str, str, int], ...] = (
    ("inventory", "reserve", 100),
    ("payment", "charge", 200),
    ("email", "send-confirmation", 150),
    ("analytics", "track", 50),
    ("fulfillment", "start", 100),
    ("loyalty", "add-points", 50),
)
DOWN = "email"
ARTICLE_SYNC_MS = 650
ARTICLE_EVENTS_MS = 15
ARTICLE_SPEEDUP = 43
SIMULATED_MS = sum(ms for _, _, ms in DOWNSTREAM)
STARTUP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
BACKENDS = ("sqlite", "kafka-pg")
STOCK = 10**9
"""Units of each product in stock (but the sold-out one): thousands of orders never run out."""
TIME_TO_FINAL_P99_MAX_MS = 1000.0
RESPONSE_P99_MAX_MS = 1000.0
"""A steady rate is one the API answers within this too (p99): a backlog of requests is not."""
RATE_KEPT = 0.95
LAG_GRACE_S = 10.0
"""Seconds after an open-loop window's last order is final by which every group's committed
offsets must have caught up (they are committed about once a second)."""
CAPACITY_START = 0.8
"""The capacity search starts at this share of the closed-loop rate at --concurrency."""


@dataclass(frozen=True)
class Settings:
    requests: int
    concurrency: int
    timeout: float
    dir: str | None
    quick: bool = False
    backend: str = "sqlite"
    bootstrap: str | None = None
    dsn: str | None = None
    capacity_seconds: float = 60.0
    bare_capacity_seconds: float = 20.0
    capacity: bool = True
    tracing: float | None = None
    """The share of orders traced (parent-based), or None: tracing off."""
    otlp_endpoint: str | None = None

    @property
    def capacity_trials(self) -> int:
        return 2 if self.quick else 8

    @property
    def capacity_refine(self) -> int:
        return 0 if self.quick else 2


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench sync_vs_events", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measured requests per closed-loop phase and side (default 200; --quick 40)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=10,
        help="requests in flight at once, both sides (default 10)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds a request may take before it counts as failed (default 5)",
    )
    parser.add_argument(
        "--dir", default=None, help="where to create the event side's files (default: a temp dir)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 40 requests, capacity trials of 3 s"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="the order system's broker and stores: sqlite (default) or kafka-pg",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("TIDINGS_KAFKA_BOOTSTRAP"),
        help="Kafka for --backend kafka-pg (default: $TIDINGS_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TIDINGS_POSTGRES_DSN"),
        help="PostgreSQL for --backend kafka-pg (default: $TIDINGS_POSTGRES_DSN)",
    )
    parser.add_argument(
        "--capacity-seconds",
        type=float,
        default=None,
        help="seconds of each capacity trial of the order system (default 60; --quick 3)",
    )
    parser.add_argument(
        "--bare-capacity-seconds",
        type=float,
        default=None,
        help="seconds of each capacity trial of the bare endpoint (default 20; --quick 2)",
    )
    parser.add_argument(
        "--no-capacity", action="store_true", help="skip the capacity search (both sides)"
    )
    parser.add_argument(
        "--tracing",
        type=float,
        default=None,
        metavar="RATIO",
        help="trace the order system's services, sampling RATIO (0-1] of orders whole, exported"
        " over OTLP/HTTP to $OTEL_EXPORTER_OTLP_ENDPOINT or $TIDINGS_JAEGER_OTLP_ENDPOINT"
        " (default: off)",
    )
    args = parser.parse_args(list(argv))
    requests = args.requests if args.requests is not None else (40 if args.quick else 200)
    if not 1 <= requests <= 100_000:
        parser.error(f"--requests must be between 1 and 100000, not {requests}")
    if not 1 <= args.concurrency <= 1000:
        parser.error(f"--concurrency must be between 1 and 1000, not {args.concurrency}")
    if not 0 < args.timeout <= 600:
        parser.error(f"--timeout must be more than 0 and at most 600 seconds, not {args.timeout}")
    capacity_s = args.capacity_seconds or (3.0 if args.quick else 60.0)
    bare_s = args.bare_capacity_seconds or (2.0 if args.quick else 20.0)
    for name, value in (("--capacity-seconds", capacity_s), ("--bare-capacity-seconds", bare_s)):
        if not 1 <= value <= 3600:
            parser.error(f"{name} must be between 1 and 3600, not {value}")
    if args.backend == "kafka-pg" and not (args.bootstrap and args.dsn):
        parser.error(
            "--backend kafka-pg needs --bootstrap and --dsn (or TIDINGS_KAFKA_BOOTSTRAP and"
            ' TIDINGS_POSTGRES_DSN: eval "$(scripts/services env)")'
        )
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "TIDINGS_JAEGER_OTLP_ENDPOINT"
    )
    if args.tracing is not None:
        if not 0 < args.tracing <= 1:
            parser.error(f"--tracing must be more than 0 and at most 1, not {args.tracing}")
        if not endpoint:
            parser.error(
                "--tracing needs a collector: OTEL_EXPORTER_OTLP_ENDPOINT or"
                ' TIDINGS_JAEGER_OTLP_ENDPOINT (scripts/services start jaeger; eval "$(scripts/'
                'services env)")'
            )
    return Settings(
        requests,
        args.concurrency,
        args.timeout,
        args.dir,
        quick=args.quick,
        backend=args.backend,
        bootstrap=args.bootstrap,
        dsn=args.dsn,
        capacity_seconds=capacity_s,
        bare_capacity_seconds=bare_s,
        capacity=not args.no_capacity,
        tracing=args.tracing,
        otlp_endpoint=endpoint if args.tracing is not None else None,
    )


# the synchronous side: HTTP servers in child processes ---------------------------------------


def _listen() -> socket.socket:
    """A listening socket on a free port: connections queue until uvicorn accepts them.

    IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    without it Nagle's algorithm and delayed ACKs add ~40 ms to every response."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(2048)
    return sock


async def _serve(app: Any, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    await uvicorn.Server(config).serve(sockets=[sock])


def _downstream_app(name: str, call: str, latency_ms: int) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def handle(request: Request) -> Response:
        order = await request.json()
        await asyncio.sleep(latency_ms / 1000)
        return JSONResponse({"service": name, "call": call, "userId": order.get("userId")})

    return Starlette(routes=[Route(f"/{call}", handle, methods=["POST"])])


def _downstream_child(name: str, call: str, latency_ms: int, conn: Connection) -> None:
    sock = _listen()
    conn.send(sock.getsockname()[1])
    conn.close()
    asyncio.run(_serve(_downstream_app(name, call, latency_ms), sock))


def _sync_orders_app(client: httpx.AsyncClient, calls: list[tuple[str, str]]) -> Any:
    """`POST /orders`: the article's synchronous placeOrder over HTTP."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def place(request: Request) -> Response:
        try:
            order = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        done: list[str] = []
        for name, url in calls:  # sequential: each must succeed
            try:
                response = await client.post(url, json=order)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                return JSONResponse(
                    {"error": f"{name}: {type(exc).__name__}", "failedService": name, "done": done},
                    status_code=503,
                )
            done.append(name)
        return JSONResponse({"success": True, "done": done})

    return Starlette(routes=[Route("/orders", place, methods=["POST"])])


def _sync_orders_child(
    calls: list[tuple[str, str]], timeout: float, concurrency: int, conn: Connection
) -> None:
    sock = _listen()
    conn.send(sock.getsockname()[1])
    conn.close()

    async def main() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=concurrency * 2)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await _serve(_sync_orders_app(client, calls), sock)

    asyncio.run(main())


class SyncSystem:
    """The six downstream simulators and the sync order service, one OS process each."""

    def __init__(self, timeout: float, concurrency: int) -> None:
        self.timeout, self.concurrency = timeout, concurrency
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[str, Any] = {}
        self.url = ""

    async def _spawn(self, name: str, target: Any, *args: Any) -> int:
        parent, child = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=target, args=(*args, child), name=f"bench-sync-{name}", daemon=True
        )
        process.start()
        child.close()
        self.processes[name] = process
        try:
            if not await asyncio.to_thread(parent.poll, STARTUP_TIMEOUT_S):
                raise RuntimeError(f"{name} server did not start in {STARTUP_TIMEOUT_S} s")
            return int(parent.recv())
        except EOFError:
            raise RuntimeError(
                f"{name} server exited with {process.exitcode} while starting"
            ) from None
        finally:
            parent.close()

    async def start(self) -> None:
        calls = []
        for name, call, latency_ms in DOWNSTREAM:
            port = await self._spawn(name, _downstream_child, name, call, latency_ms)
            calls.append((name, f"http://{HOST}:{port}/{call}"))
        port = await self._spawn(
            "orders", _sync_orders_child, calls, self.timeout, self.concurrency
        )
        self.url = f"http://{HOST}:{port}"

    async def kill(self, name: str) -> None:
        """The service is down: SIGKILL, so connecting to it is refused."""
        process = self.processes[name]
        process.kill()
        await asyncio.to_thread(process.join, 10)

    async def close(self) -> None:
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        for process in self.processes.values():
            await asyncio.to_thread(process.join, 5)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)


def _bare_app() -> Any:
    """`POST /orders` answering 202 with a fixed body, touching no database."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def place(request: Request) -> Response:
        await request.body()
        return JSONResponse(
            {"orderId": "ord-bare", "status": "PENDING", "total": 0.0}, status_code=202
        )

    return Starlette(routes=[Route("/orders", place, methods=["POST"])])


def _bare_child(conn: Connection) -> None:
    """The bare endpoint on the order API's own server stack and event loop."""
    from examples.orders.api import run_loop, serving

    async def main() -> None:
        async with serving(_bare_app(), HOST, 0) as server:
            conn.send(server.port)
            conn.close()
            await asyncio.Event().wait()

    run_loop(main())


class BareServer(SyncSystem):
    """The bare endpoint, its own OS process."""

    async def start(self) -> None:
        port = await self._spawn("bare", _bare_child)
        self.url = f"http://{HOST}:{port}"


# measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderRequest:
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class Result:
    times_ms: list[float] = field(default_factory=list)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    order_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.times_ms)

    @property
    def success_rate(self) -> float:
        return self.ok / self.count if self.count else 0.0

    def pct(self, p: float) -> float:
        return percentile(sorted(self.times_ms), p)


def _error_kind(response: httpx.Response) -> str:
    kind = f"HTTP {response.status_code}"
    with contextlib.suppress(ValueError, AttributeError):
        failed = response.json().get("failedService")
        if failed:
            kind += f" ({failed} failed)"
    return kind


async def measure(
    client: httpx.AsyncClient, requests: list[OrderRequest], concurrency: int, timeout: float
) -> Result:
    """POST every request to /orders, `concurrency` at a time; no retries."""
    result = Result()
    gate = asyncio.Semaphore(concurrency)

    async def one(request: OrderRequest) -> None:
        async with gate:
            started = time.perf_counter()
            kind: str | None = None
            try:
                async with asyncio.timeout(timeout):
                    response = await client.post(
                        "/orders", json=request.body, headers=request.headers
                    )
                if 200 <= response.status_code < 300:
                    order_id = response.json().get("orderId")
                    if order_id:
                        result.order_ids.append(str(order_id))
                else:
                    kind = _error_kind(response)
            except TimeoutError:
                kind = "timeout"
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            result.times_ms.append((time.perf_counter() - started) * 1000)
            if kind is None:
                result.ok += 1
            else:
                result.errors[kind] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    result.seconds = time.perf_counter() - started
    return result


def http_client(base_url: str, concurrency: int, timeout: float, **headers: str) -> Any:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=timeout + 1.0,  # asyncio.timeout(timeout) decides; this is a backstop
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


def report(side: str, suffix: str, result: Result, settings: Settings, **context: Any) -> None:
    common = {
        "side": side,
        "requests": result.count,
        "concurrency": context.pop("concurrency", settings.concurrency),
        "timeout_s": settings.timeout,
        "ok": result.ok,
        "failed": result.count - result.ok,
        "errors": dict(result.errors),
        "seconds": result.seconds,
        **context,
    }
    emit(BENCH, f"{side}_p50_ms{suffix}", result.pct(50), "ms", **common)
    emit(BENCH, f"{side}_p99_ms{suffix}", result.pct(99), "ms", **common)
    emit(BENCH, f"{side}_success_rate{suffix}", result.success_rate, None, **common)


def sample_requests(count: int, phase: str) -> list[OrderRequest]:
    """Sample orders of the demo (examples.orders.load), each with its own Idempotency-Key."""
    from examples.orders.load import sample_orders

    return [
        OrderRequest(
            body=order.body,
            headers={
                "Idempotency-Key": f"bench-{phase}-{n:06d}",
                "X-Correlation-Id": f"corr-bench-{phase}-{n:06d}",
            },
        )
        for n, order in enumerate(sample_orders(count, seed=zlib.crc32(phase.encode()) % 1000))
    ]


# the two sides -------------------------------------------------------------------------------


async def run_sync(settings: Settings) -> Result:
    system = SyncSystem(settings.timeout, settings.concurrency)
    started = time.perf_counter()
    try:
        await system.start()
        context = {
            "processes": len(system.processes),
            "simulated_ms": SIMULATED_MS,
            "calls": ",".join(f"{n}.{c} {ms}ms" for n, c, ms in DOWNSTREAM),
            "startup_s": time.perf_counter() - started,
        }
        async with http_client(system.url, settings.concurrency, settings.timeout) as client:
            await measure(
                client,
                sample_requests(settings.concurrency, "sync-warmup"),
                settings.concurrency,
                settings.timeout,
            )
            normal = await measure(
                client,
                sample_requests(settings.requests, "sync"),
                settings.concurrency,
                settings.timeout,
            )
            report("sync", "", normal, settings, **context)
            await system.kill(DOWN)
            down = await measure(
                client,
                sample_requests(settings.requests, "sync-email-down"),
                settings.concurrency,
                settings.timeout,
            )
            report("sync", "_email_down", down, settings, **context, down=DOWN)
        return normal
    finally:
        await system.close()


async def _settle(
    store: Any, order_ids: list[str], timeout: float = SETTLE_TIMEOUT_S
) -> list[tuple[str, str, str]]:
    """Wait until the orders are final (or `timeout`); their (status, created, updated)."""
    if not order_ids:
        return []
    ids = sorted(set(order_ids))
    deadline = time.monotonic() + timeout
    while True:
        rows: list[tuple[str, str, str]] = []
        for first in range(0, len(ids), 500):
            chunk = ids[first : first + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT status, created_at, updated_at FROM orders WHERE id IN ({marks})"  # noqa: S608
            rows += [(str(s), str(c), str(u)) for s, c, u in await store.query(sql, chunk)]
        if all(r[0] != "PENDING" for r in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


def _to_final_ms(rows: list[tuple[str, str, str]]) -> list[float]:
    return sorted(
        (datetime.fromisoformat(updated) - datetime.fromisoformat(created)).total_seconds() * 1000
        for status, created, updated in rows
        if status != "PENDING"
    )


def _report_final(rows: list[tuple[str, str, str]], suffix: str, **context: Any) -> None:
    times = _to_final_ms(rows)
    statuses = Counter(r[0] for r in rows)
    context = {
        "orders": len(rows),
        "statuses": dict(statuses),
        **context,
        "note": "commit of the order -> its final status, as the orders service recorded both;"
        " downstream handlers here do no simulated work (payment latency 0)",
    }
    if times:
        emit(BENCH, f"events_time_to_final_p50_ms{suffix}", percentile(times, 50), "ms", **context)
        emit(BENCH, f"events_time_to_final_p99_ms{suffix}", percentile(times, 99), "ms", **context)


async def settled_invariants(services: Any, log: Any, mailbox: Path) -> tuple[list[Any], list[str]]:
    """The order system's invariant checks, once they hold or SETTLE_TIMEOUT_S has passed;
    (checks, the failed ones described)."""
    from examples.orders.checks import check_invariants

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        checks = await check_invariants(services, log, mailbox)
        failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
        if not failed or time.monotonic() > deadline:
            return checks, failed
        await asyncio.sleep(0.5)


async def total_lag(broker: Any, groups: Sequence[str]) -> int:
    """Records the groups have not committed yet, summed."""
    lag = 0
    for group in groups:
        lag += (await broker.admin.describe_group(group)).lag
    return lag


async def lag_back_to_zero(broker: Any, groups: Sequence[str], within: float) -> float | None:
    """Seconds until every group's lag is 0, or None if it is not within `within` seconds."""
    started = time.monotonic()
    while True:
        if await total_lag(broker, groups) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            return None
        await asyncio.sleep(0.25)


# backends ------------------------------------------------------------------------------------


def _example_topics() -> list[str]:
    from examples.orders.events import TOPICS
    from examples.orders.serve import NAMES

    return [*TOPICS, *(f"{name}.dlq" for name in NAMES)]


def _delete_kafka_topics(bootstrap: str) -> None:
    """Delete the example's topics (with other runs' events in them) and wait until gone."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = _example_topics()
    present = [t for t in topics if t in admin.list_topics(timeout=10).topics]
    if present:
        for future in admin.delete_topics(present, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # deleted meanwhile by someone else
                future.result()
    deadline = time.monotonic() + 60
    while set(topics) & set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kafka at {bootstrap} did not delete the example's topics")
        time.sleep(0.2)


def _drop_schemas(dsn: str, prefix: str) -> None:
    import psycopg
    from examples.orders.serve import NAMES
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in NAMES:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(f"{prefix}_{name}")
                )
            )


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in this process's environment (which the services' processes inherit),
    the previous values back afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _tracing_environment(settings: Settings) -> dict[str, str]:
    """The standard OpenTelemetry variables that turn the services' tracing on (or none)."""
    if settings.tracing is None:
        return {}
    assert settings.otlp_endpoint
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": settings.otlp_endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(settings.tracing),
    }


@contextlib.contextmanager
def backend(settings: Settings) -> Iterator[dict[str, Any]]:
    """The order system's backend for this run, through TIDINGS_BROKER / TIDINGS_STORE (and
    the OTEL_* variables with --tracing), which the services' processes inherit; what it is,
    for the results."""
    tracing = {"tracing": settings.tracing if settings.tracing is not None else "off"}
    if settings.backend == "sqlite":
        with environment(_tracing_environment(settings)):
            yield {"broker": "sqlite", "store": "sqlite", **tracing}
        return
    assert settings.bootstrap and settings.dsn
    run = uuid.uuid4().hex[:8]
    schema = f"bench_{run}"
    _delete_kafka_topics(settings.bootstrap)
    separator = "&" if "?" in settings.dsn else "?"
    variables = {
        "TIDINGS_BROKER": f"kafka://{settings.bootstrap}?group_prefix=bench-{run}-",
        "TIDINGS_STORE": f"{settings.dsn}{separator}schema={schema}_{{service}}",
        **_tracing_environment(settings),
    }
    try:
        with environment(variables):
            yield {"broker": "kafka", "store": "postgresql", "schema_prefix": schema, **tracing}
    finally:
        with contextlib.suppress(Exception):
            _drop_schemas(settings.dsn, schema)
        with contextlib.suppress(Exception):
            _delete_kafka_topics(settings.bootstrap)


# capacity ------------------------------------------------------------------------------------


class Capacity:
    """The capacity search of one side: open-loop trials at rates the search picks."""

    def __init__(
        self,
        name: str,
        client: OpenLoopClient,
        settings: Settings,
        seconds: float,
        judge: Callable[[OpenResult], Awaitable[Verdict]],
    ) -> None:
        self.name, self.client, self.settings = name, client, settings
        self.seconds, self.judge = seconds, judge
        self.trial_count = 0

    async def trial(self, rate: float) -> Verdict:
        self.trial_count += 1
        count = max(2, round(rate * self.seconds))
        phase = f"{self.name}-capacity-{self.trial_count}"
        requests = [(r.body, r.headers) for r in sample_requests(count, phase)]
        result = await open_loop(self.client, requests, rate, self.settings.timeout)
        return await self.judge(result)

    async def run(self, first_guess: float) -> tuple[float | None, list[dict[str, Any]]]:
        def report(rate: float, ok: bool, measured: dict[str, Any]) -> None:
            emit(
                BENCH,
                f"{self.name}_capacity_trial",
                round(rate, 1),
                "per_s",
                passed=ok,
                seconds=self.seconds,
                **measured,
            )

        return await search(
            self.trial,
            first_guess,
            refine=self.settings.capacity_refine,
            max_trials=self.settings.capacity_trials,
            report=report,
        )


def _kept(result: OpenResult) -> list[str]:
    """Why an open-loop run did not keep its rate, if it did not."""
    problems = []
    if result.ok < result.sent:
        problems.append(f"{result.sent - result.ok} requests failed")
    if result.achieved < RATE_KEPT * result.rate:
        problems.append(f"sent {result.achieved:.0f}/s of {result.rate:.0f}/s")
    return problems


# the two sides, and the bare endpoint ---------------------------------------------------------


async def run_events(settings: Settings, directory: str) -> tuple[Result, Result]:
    from examples.orders.checks import LogCounter
    from examples.orders.cluster import ProcessCluster
    from examples.orders.events import TOPICS
    from examples.orders.load import CATALOG
    from examples.orders.serve import NAMES
    from examples.orders.services import inventory
    from examples.orders.settings import Settings as OrderSettings

    path = Path(directory)
    with backend(settings) as backend_context:
        order_settings = OrderSettings.in_directory(path, payment_failure_rate=0.0)
        cluster = ProcessCluster(order_settings, path, TOKEN, HOST, 0)
        bare = BareServer(settings.timeout, settings.concurrency)
        started = time.perf_counter()
        try:
            await cluster.start()
            await bare.start()
            stock = {p: STOCK if s else 0 for p, (_, s) in CATALOG.items()}
            await inventory.seed(cluster.services["inventory"], stock)
            store = cluster.services["orders"].store
            broker = cluster.services["orders"].broker
            context = {
                "processes": len(cluster.processes),
                **backend_context,
                "startup_s": time.perf_counter() - started,
            }
            bare_context = {"server": "examples.orders.api.serving", "beside": "idle order system"}
            auth = {"Authorization": f"Bearer {TOKEN}"}
            conc, timeout = settings.concurrency, settings.timeout
            async with (
                http_client(cluster.api_url, conc, timeout, **auth) as client,
                http_client(bare.url, conc, timeout, **auth) as bare_client,
            ):
                await measure(bare_client, sample_requests(conc, "bare-warmup"), conc, timeout)
                warm = await measure(client, sample_requests(conc, "events-warmup"), conc, timeout)
                await _settle(store, warm.order_ids)

                bare_normal = await measure(
                    bare_client, sample_requests(settings.requests, "bare"), conc, timeout
                )
                report("bare_http", "", bare_normal, settings, **bare_context)
                normal = await measure(
                    client, sample_requests(settings.requests, "events"), conc, timeout
                )
                report("events", "", normal, settings, **context)
                _report_final(await _settle(store, normal.order_ids), "", **backend_context)

                bare_seq = await measure(
                    bare_client, sample_requests(settings.requests, "bare-seq"), 1, timeout
                )
                report(
                    "bare_http", "_sequential", bare_seq, settings, **bare_context, concurrency=1
                )
                sequential = await measure(
                    client, sample_requests(settings.requests, "events-seq"), 1, timeout
                )
                report("events", "_sequential", sequential, settings, **context, concurrency=1)
                await _settle(store, sequential.order_ids)
                for suffix, events, base in (
                    ("", normal, bare_normal),
                    ("_sequential", sequential, bare_seq),
                ):
                    emit(
                        BENCH,
                        f"events_vs_bare_p50{suffix}",
                        events.pct(50) / base.pct(50),
                        "x",
                        events_p50_ms=events.pct(50),
                        bare_http_p50_ms=base.pct(50),
                        concurrency=1 if suffix else conc,
                        note="events_p50 / bare_http_p50 in the same run, same client",
                    )

                await cluster.terminate((DOWN,))
                mailbox = order_settings.mailbox
                emails_before = len(list(mailbox.glob("*.eml")))
                down = await measure(
                    client, sample_requests(settings.requests, "events-email-down"), conc, timeout
                )
                rows = await _settle(store, down.order_ids)
                confirmed = sum(1 for r in rows if r[0] == "CONFIRMED")
                report(
                    "events",
                    "_email_down",
                    down,
                    settings,
                    **context,
                    down=DOWN,
                    email_running=cluster.running(DOWN),
                    confirmed_while_down=confirmed,
                    final_while_down=sum(1 for r in rows if r[0] != "PENDING"),
                    statuses_while_down=dict(Counter(r[0] for r in rows)),
                    emails_sent_while_down=len(list(mailbox.glob("*.eml"))) - emails_before,
                )
                await cluster.start((DOWN,))  # the confirmations go out now
                await lag_back_to_zero(broker, NAMES, SETTLE_TIMEOUT_S)

            if settings.capacity:
                await run_capacity(
                    settings, cluster.api_url, bare.url, store, broker, NAMES, normal, bare_normal
                )

            log = LogCounter(broker, TOPICS)
            checks, failed = await settled_invariants(cluster.services, log, mailbox)
            orders = await store.query("SELECT status, count(*) FROM orders GROUP BY status")
            emit(
                BENCH,
                "invariants",
                not failed,
                None,
                checks=len(checks),
                failed=failed,
                orders=dict((str(s), int(n)) for s, n in orders),
                **backend_context,
            )
            return normal, sequential
        finally:
            await bare.close()
            await cluster.stop()


async def run_capacity(
    settings: Settings,
    api_url: str,
    bare_url: str,
    store: Any,
    broker: Any,
    groups: Sequence[str],
    closed: Result,
    bare_closed: Result,
) -> None:
    """The highest steady rate of the order system, then of the bare endpoint."""
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def judge_events(result: OpenResult) -> Verdict:
        problems = _kept(result)
        rows = await _settle(store, result.order_ids, timeout=max(10.0, settings.capacity_seconds))
        pending = sum(1 for r in rows if r[0] == "PENDING")
        times = _to_final_ms(rows)
        p50 = percentile(times, 50) if times else None
        p99 = percentile(times, 99) if times else None
        if pending or len(rows) < result.ok:
            problems.append(f"{pending + result.ok - len(rows)} orders not final")
        if p99 is not None and p99 > TIME_TO_FINAL_P99_MAX_MS:
            problems.append(f"time to final p99 {p99:.0f} ms")
        if result.pct(99) > RESPONSE_P99_MAX_MS:
            problems.append(f"response p99 {result.pct(99):.0f} ms")
        back = await lag_back_to_zero(broker, groups, LAG_GRACE_S)
        if back is None:
            problems.append(f"lag not back to 0 within {LAG_GRACE_S:.0f} s")
            # the next trial starts on a drained system
            await lag_back_to_zero(broker, groups, 4 * SETTLE_TIMEOUT_S)
        measured = {
            **result.summary(),
            "time_to_final_p50_ms": p50,
            "time_to_final_p99_ms": p99,
            "lag_back_to_0_s": None if back is None else round(back, 2),
            "problems": problems,
        }
        return not problems, measured

    async def judge_bare(result: OpenResult) -> Verdict:
        problems = _kept(result)
        if result.pct(99) > RESPONSE_P99_MAX_MS:
            problems.append(f"response p99 {result.pct(99):.0f} ms")
        return not problems, {**result.summary(), "problems": problems}

    client = OpenLoopClient(api_url, auth)
    events = Capacity("events", client, settings, settings.capacity_seconds, judge_events)
    rate, trials = await events.run(CAPACITY_START * closed.count / closed.seconds)
    client = OpenLoopClient(bare_url, auth)
    bare = Capacity("bare", client, settings, settings.bare_capacity_seconds, judge_bare)
    bare_rate, bare_trials = await bare.run(
        CAPACITY_START * bare_closed.count / bare_closed.seconds
    )
    emit(
        BENCH,
        "bare_capacity_requests_per_s",
        bare_rate,
        "requests/s",
        seconds=settings.bare_capacity_seconds,
        trials=bare_trials,
        note="highest open-loop rate with every request 2xx, the rate kept and response p99 <="
        " 1 s; None if no rate passed",
    )
    emit(
        BENCH,
        "capacity_orders_per_s",
        rate,
        "orders/s",
        seconds=settings.capacity_seconds,
        bare_capacity_requests_per_s=bare_rate,
        tracing=settings.tracing if settings.tracing is not None else "off",
        trials=trials,
        note="highest open-loop order rate for which every request answered 2xx (p99 <= 1 s),"
        " every order ended final with time-to-final p99 <= 1 s and every group's lag returned"
        " to 0; None if no rate passed",
    )
    emit(
        BENCH,
        "capacity_vs_bare",
        rate / bare_rate if rate and bare_rate else None,
        None,
        capacity_orders_per_s=rate,
        bare_capacity_requests_per_s=bare_rate,
    )


async def run(settings: Settings, directory: str) -> None:
    emit(
        BENCH,
        "article_claim",
        f"sync {ARTICLE_SYNC_MS} ms, events {ARTICLE_EVENTS_MS} ms, {ARTICLE_SPEEDUP}x faster",
        None,
        sync_ms=ARTICLE_SYNC_MS,
        events_ms=ARTICLE_EVENTS_MS,
        speedup=ARTICLE_SPEEDUP,
        sync_calls="+".join(str(ms) for _, _, ms in DOWNSTREAM),
        events_steps="db insert 10 ms + kafka publish 5 ms",
        email_down="sync: order fails; events: order succeeds",
    )
    sync = await run_sync(settings)
    events, sequential = await run_events(settings, directory)
    sync_p50, events_p50 = sync.pct(50), events.pct(50)
    emit(
        BENCH,
        "speedup",
        sync_p50 / events_p50,
        "x",
        sync_p50_ms=sync_p50,
        events_p50_ms=events_p50,
        concurrency=settings.concurrency,
        speedup_sequential=sync_p50 / sequential.pct(50),
        article=ARTICLE_SPEEDUP,
        backend=settings.backend,
        note="sync_p50 / events_p50 at the same concurrency; `speedup_sequential` divides by"
        " events_p50_ms_sequential",
    )


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with workdir(settings.dir, "tidings-bench-sync-vs-events-") as directory:
        machine(BENCH, directory)
        asyncio.run(run(settings, directory))
    emit(
        BENCH,
        "total_runtime_s",
        time.perf_counter() - started,
        "s",
        requests=settings.requests,
        concurrency=settings.concurrency,
        backend=settings.backend,
        tracing=settings.tracing if settings.tracing is not None else "off",
        quick=settings.quick,
        loadavg_1min_before=load_before,
        loadavg_1min_after=os.getloadavg()[0],
        note="other work on the machine shares its cores with both sides",
    )
    return 0
