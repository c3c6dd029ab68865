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

A request succeeds if it answers 2xx within `--timeout`; nothing is retried. Response times
are those of every request, success or failure (a timed-out request counts as the timeout).

Metrics: `{sync,events}_p50_ms`, `_p99_ms`, `_success_rate`; the same with the email service
down (`*_email_down`: sync kills the email simulator, events SIGTERMs the email service);
`speedup` = sync_p50 / events_p50; `events_p50_ms_sequential` (concurrency 1, the article's
single request); `events_time_to_final_*_ms` - from an order's commit to its final status
(CONFIRMED / REJECTED / CANCELLED), the work the sync side does before it answers (here with
no simulated latency in the downstream handlers); `article_claim` - 650 ms, 15 ms, 43x.
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
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

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


@dataclass(frozen=True)
class Settings:
    requests: int
    concurrency: int
    timeout: float
    dir: str | None


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench sync_vs_events", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=200,
        help="measured requests per phase and side (default 200)",
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
    args = parser.parse_args(list(argv))
    if not 1 <= args.requests <= 100_000:
        parser.error(f"--requests must be between 1 and 100000, not {args.requests}")
    if not 1 <= args.concurrency <= 1000:
        parser.error(f"--concurrency must be between 1 and 1000, not {args.concurrency}")
    if not 0 < args.timeout <= 600:
        parser.error(f"--timeout must be more than 0 and at most 600 seconds, not {args.timeout}")
    return Settings(args.requests, args.concurrency, args.timeout, args.dir)


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
                raise RuntimeError(f"sync {name} simulator did not start in {STARTUP_TIMEOUT_S} s")
            return int(parent.recv())
        except EOFError:
            raise RuntimeError(
                f"sync {name} simulator exited with {process.exitcode} while starting"
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


async def _settle(store: Any, order_ids: list[str]) -> list[tuple[str, str, str]]:
    """Wait until the orders are final (or SETTLE_TIMEOUT_S); their (status, created, updated)."""
    if not order_ids:
        return []
    marks = ",".join("?" * len(order_ids))
    sql = f"SELECT status, created_at, updated_at FROM orders WHERE id IN ({marks})"  # noqa: S608
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        rows = [(str(s), str(c), str(u)) for s, c, u in await store.query(sql, order_ids)]
        if all(r[0] != "PENDING" for r in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


def _to_final_ms(rows: list[tuple[str, str, str]]) -> list[float]:
    return sorted(
        (datetime.fromisoformat(updated) - datetime.fromisoformat(created)).total_seconds() * 1000
        for status, created, updated in rows
        if status != "PENDING"
    )


def _report_final(rows: list[tuple[str, str, str]], suffix: str) -> None:
    times = _to_final_ms(rows)
    statuses = Counter(r[0] for r in rows)
    context = {
        "orders": len(rows),
        "statuses": dict(statuses),
        "note": "commit of the order -> its final status, as the orders service recorded both;"
        " downstream handlers here do no simulated work (payment latency 0)",
    }
    if times:
        emit(BENCH, f"events_time_to_final_p50_ms{suffix}", percentile(times, 50), "ms", **context)
        emit(BENCH, f"events_time_to_final_p99_ms{suffix}", percentile(times, 99), "ms", **context)


async def run_events(settings: Settings, directory: str) -> tuple[Result, Result]:
    from examples.orders.cluster import ProcessCluster
    from examples.orders.load import CATALOG
    from examples.orders.services import inventory
    from examples.orders.settings import Settings as OrderSettings

    path = Path(directory)
    order_settings = OrderSettings.in_directory(path, payment_failure_rate=0.0)
    cluster = ProcessCluster(order_settings, path, TOKEN, HOST, 0)
    started = time.perf_counter()
    try:
        await cluster.start()
        await inventory.seed(cluster.services["inventory"], {p: s for p, (_, s) in CATALOG.items()})
        store = cluster.services["orders"].store
        context = {
            "processes": len(cluster.processes),
            "broker": "sqlite",
            "startup_s": time.perf_counter() - started,
        }
        async with http_client(
            cluster.api_url,
            settings.concurrency,
            settings.timeout,
            Authorization=f"Bearer {TOKEN}",
        ) as client:
            warm = await measure(
                client,
                sample_requests(settings.concurrency, "events-warmup"),
                settings.concurrency,
                settings.timeout,
            )
            await _settle(store, warm.order_ids)
            normal = await measure(
                client,
                sample_requests(settings.requests, "events"),
                settings.concurrency,
                settings.timeout,
            )
            report("events", "", normal, settings, **context)
            _report_final(await _settle(store, normal.order_ids), "")

            sequential = await measure(
                client, sample_requests(settings.requests, "events-seq"), 1, settings.timeout
            )
            report("events", "_sequential", sequential, settings, **context, concurrency=1)
            await _settle(store, sequential.order_ids)

            await cluster.terminate((DOWN,))
            mailbox = order_settings.mailbox
            emails_before = len(list(mailbox.glob("*.eml")))
            down = await measure(
                client,
                sample_requests(settings.requests, "events-email-down"),
                settings.concurrency,
                settings.timeout,
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
        return normal, sequential
    finally:
        await cluster.stop()


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
        loadavg_1min_before=load_before,
        loadavg_1min_after=os.getloadavg()[0],
        note="other work on the machine shares its cores with both sides",
    )
    return 0
