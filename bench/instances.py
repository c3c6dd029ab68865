"""`python -m bench instances`: the order system on Kafka + PostgreSQL run as operators run it.

Two OS processes each of inventory, payment and loyalty (one of the others), a steady open-loop
order rate for `--seconds`, 20% of payments declined (so inventory releases stock while it
reserves it for other orders: the hot rows), and every `--kill-every` seconds one process of a
doubled service killed with SIGKILL and started again. Needs the local servers (`eval
"$(scripts/services env)"`). Printed, one JSON line each:

* `time_to_final_p50_ms` / `_p99_ms` - an order's commit to its final status;
* `release_p50_ms` / `release_p99_ms` - PAYMENT_FAILED (the event's time) to the order's stock
  released in inventory's database (polled every 50 ms) (target p99 <= 1,000);
* `max_partition_stall_s` - the longest time any consumer group's partition went without its
  committed offset advancing while records waited (offsets are committed about once a second;
  sampled every 0.25 s), over the whole run, and `max_partition_stall_s_steady` outside the
  `KILL_WINDOW_S` after each kill, where the killed member's partitions wait for its session
  to time out (target <= 2);
* `deadlock_retries` - transactions PostgreSQL aborted as deadlocks or serialization failures,
  counted in every process's log (target: near 0);
* `invariants` - the demo's checks (every order final, stock and payments consistent, each
  event applied once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import sync_vs_events as sve
from bench._capacity import OpenLoopClient, open_loop
from bench._common import emit, machine, percentile, workdir

BENCH = "instances"
DOUBLED = ("inventory", "payment", "loyalty")
KILL_WINDOW_S = 15.0
"""After a SIGKILL, the dead member keeps its partitions until its session times out (10 s),
then the group rebalances: stalls that start in this window are the kill's."""
COMMIT_SLACK_S = 2.0
"""A killed member's last commit may be this long before the kill (commits are ~1 s apart)."""
CONFLICT = re.compile(rb"DeadlockDetected|SerializationFailure|deadlock detected")


@dataclass(frozen=True)
class Settings:
    rate: float
    seconds: float
    kill_every: float
    failure_rate: float
    instances: int
    dir: str | None
    bootstrap: str | None
    dsn: str | None
    instance_ids: bool = False
    quick: bool = False
    backend: str = "kafka-pg"
    tracing: float | None = None  # `sync_vs_events.backend` reads it: never traced here
    otlp_endpoint: str | None = None


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench instances", description=__doc__)
    parser.add_argument("--rate", type=float, default=None, help="orders/s (default 40)")
    parser.add_argument("--seconds", type=float, default=None, help="load (default 60)")
    parser.add_argument(
        "--kill-every",
        type=float,
        default=None,
        help="seconds between kills (default 15; 0: no kills)",
    )
    parser.add_argument("--failure-rate", type=float, default=0.2, help="payments declined")
    parser.add_argument("--instances", type=int, default=2, help="processes per doubled service")
    parser.add_argument(
        "--instance-ids",
        action="store_true",
        help="give each process a stable TIDINGS_INSTANCE_ID (its relay lease and Kafka"
        " static membership survive its restart)",
    )
    parser.add_argument("--dir", default=None)
    parser.add_argument("--bootstrap", default=os.environ.get("TIDINGS_KAFKA_BOOTSTRAP"))
    parser.add_argument("--dsn", default=os.environ.get("TIDINGS_POSTGRES_DSN"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 s, a kill at 6 s")
    args = parser.parse_args(argv)
    if not args.bootstrap or not args.dsn:
        parser.error('needs Kafka and PostgreSQL: eval "$(scripts/services env)"')
    if args.instances < 1 or not 0 <= args.failure_rate <= 1:
        parser.error("--instances >= 1 and 0 <= --failure-rate <= 1")
    quick = args.quick
    return Settings(
        rate=args.rate or (20.0 if quick else 40.0),
        seconds=args.seconds or (12.0 if quick else 60.0),
        kill_every=(6.0 if quick else 15.0) if args.kill_every is None else args.kill_every,
        failure_rate=args.failure_rate,
        instances=args.instances,
        dir=args.dir,
        bootstrap=args.bootstrap,
        dsn=args.dsn,
        instance_ids=args.instance_ids,
        quick=quick,
    )


class Stalls:
    """Per (group, topic, partition): how long its committed offset has not moved while
    records wait."""

    def __init__(self, groups: Sequence[str]) -> None:
        self.groups = groups
        self.last: dict[tuple[str, str, int], tuple[int | None, float]] = {}
        self.worst: list[tuple[float, float, tuple[str, str, int]]] = []
        """(stall seconds, when it began, partition) of each stall that ended or is open."""
        self.open: dict[tuple[str, str, int], float] = {}

    async def sample(self, broker: Any) -> None:
        now = time.monotonic()
        for group in self.groups:
            with contextlib.suppress(Exception):  # a group mid-rebalance: next sample
                info = await broker.admin.describe_group(group)
                for p in info.partitions:
                    key = (group, p.topic, p.partition)
                    committed, since = self.last.get(key, (None, now))
                    if p.committed != committed or p.lag == 0:
                        if key in self.open:
                            began = self.open.pop(key)
                            self.worst.append((now - began, began, key))
                        self.last[key] = (p.committed, now)
                    elif key not in self.open:
                        self.open[key] = since

    def close(self) -> None:
        now = time.monotonic()
        for key, began in self.open.items():
            self.worst.append((now - began, began, key))
        self.open.clear()

    def longest(self, outside: Sequence[float] = ()) -> tuple[float, str]:
        """The longest stall (seconds, which partition), ignoring those that began within
        KILL_WINDOW_S after a time in `outside` (or COMMIT_SLACK_S before it)."""
        kept = [
            (s, k)
            for s, began, k in self.worst
            if not any(-COMMIT_SLACK_S <= began - t <= KILL_WINDOW_S for t in outside)
        ]
        if not kept:
            return 0.0, ""
        seconds, (group, topic, partition) = max(kept)
        return seconds, f"{group} {topic}[{partition}]"


async def run(settings: Settings, directory: str) -> None:
    from examples.orders.checks import LogCounter
    from examples.orders.cluster import ProcessCluster
    from examples.orders.events import TOPICS
    from examples.orders.load import CATALOG
    from examples.orders.serve import NAMES, instance_key
    from examples.orders.services import inventory
    from examples.orders.settings import Settings as OrderSettings

    path = Path(directory)
    instances = dict.fromkeys(DOUBLED, settings.instances)
    victims = [instance_key(name, n) for n in range(1, settings.instances + 1) for name in DOUBLED]
    with sve.backend(settings) as backend_context:  # type: ignore[arg-type]
        order_settings = OrderSettings.in_directory(
            path, payment_failure_rate=settings.failure_rate
        )
        cluster = ProcessCluster(
            order_settings, path, sve.TOKEN, sve.HOST, 0, instances, settings.instance_ids
        )
        try:
            await cluster.start()
            stock = {p: sve.STOCK if s else 0 for p, (_, s) in CATALOG.items()}
            await inventory.seed(cluster.services["inventory"], stock)
            orders_store = cluster.services["orders"].store
            inventory_store = cluster.services["inventory"].store
            broker = cluster.services["orders"].broker
            auth = {"Authorization": f"Bearer {sve.TOKEN}"}
            async with sve.http_client(cluster.api_url, 10, 5.0, **auth) as http:
                warm = await sve.measure(http, sve.sample_requests(20, "instances-warmup"), 10, 5)
            await sve._settle(orders_store, warm.order_ids)  # every group joined and running
            await sve.lag_back_to_zero(broker, NAMES, sve.SETTLE_TIMEOUT_S)
            stalls = Stalls(NAMES)
            released: dict[str, float] = {}
            kills: list[float] = []
            done = asyncio.Event()

            async def watch() -> None:
                while not done.is_set():
                    await stalls.sample(broker)
                    await asyncio.sleep(0.25)

            async def watch_releases() -> None:
                while not done.is_set():
                    rows = await inventory_store.query(
                        "SELECT DISTINCT order_id FROM reservations WHERE status = 'RELEASED'"
                    )
                    now = time.time()
                    for (order_id,) in rows:
                        released.setdefault(str(order_id), now)
                    await asyncio.sleep(0.05)

            async def chaos() -> None:
                turn = 0
                while True:
                    await asyncio.sleep(settings.kill_every)
                    key = victims[turn % len(victims)]
                    turn += 1
                    kills.append(time.monotonic())
                    await cluster.restart(key)

            watchers = [asyncio.create_task(watch()), asyncio.create_task(watch_releases())]
            killer = asyncio.create_task(chaos() if settings.kill_every > 0 else asyncio.sleep(0))
            count = max(2, round(settings.rate * settings.seconds))
            requests = [(r.body, r.headers) for r in sve.sample_requests(count, "instances")]
            client = OpenLoopClient(cluster.api_url, auth)
            try:
                result = await open_loop(client, requests, settings.rate, 5.0)
            finally:
                killer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await killer
            await cluster.start()  # a process killed at the very end is back
            rows = await sve._settle(orders_store, result.order_ids)
            lag_zero_s = await sve.lag_back_to_zero(broker, NAMES, sve.SETTLE_TIMEOUT_S)
            await asyncio.sleep(1.0)  # the last releases, seen by the poll
            done.set()
            await asyncio.gather(*watchers)
            stalls.close()

            context = {
                "rate": settings.rate,
                "seconds": settings.seconds,
                "sent": result.sent,
                "accepted": result.ok,
                "instances": {k: settings.instances for k in DOUBLED},
                "kills": len(kills),
                "kill_every_s": settings.kill_every,
                "payment_failure_rate": settings.failure_rate,
                "instance_ids": settings.instance_ids,
                **backend_context,
            }
            finals = sve._to_final_ms(rows)
            statuses = dict(sve.Counter(r[0] for r in rows))
            for p in (50, 99):
                emit(
                    BENCH,
                    f"time_to_final_p{p}_ms",
                    percentile(finals, p) if finals else None,
                    "ms",
                    statuses=statuses,
                    lag_back_to_zero_s=lag_zero_s,
                    **context,
                )
            failed_at = {
                str(order_id): datetime.fromisoformat(str(t)).timestamp()
                for order_id, t in await orders_store.query(
                    "SELECT order_id, time FROM order_events WHERE type = 'PAYMENT_FAILED'"
                )
            }
            releases = sorted(
                (released[o] - t) * 1000 for o, t in failed_at.items() if o in released
            )
            for p in (50, 99):
                extra: dict[str, Any] = {}
                if p == 99:
                    extra = {
                        "target": "<= 1000",
                        "meets_target": bool(releases) and percentile(releases, 99) <= 1000,
                    }
                emit(
                    BENCH,
                    f"release_p{p}_ms",
                    percentile(releases, p) if releases else None,
                    "ms",
                    payment_failed=len(failed_at),
                    released=len(releases),
                    poll_ms=50,
                    **extra,
                    **context,
                )
            worst, where = stalls.longest()
            steady, steady_where = stalls.longest(kills)
            emit(BENCH, "max_partition_stall_s", worst, "s", partition=where, **context)
            emit(
                BENCH,
                "max_partition_stall_s_steady",
                steady,
                "s",
                partition=steady_where,
                target="<= 2",
                meets_target=steady <= 2,
                excluded=f"stalls beginning within {KILL_WINDOW_S:g} s after a kill",
                **context,
            )
            conflicts = {
                log.stem: len(CONFLICT.findall(log.read_bytes()))
                for log in sorted((path / "logs").glob("*.log"))
            }
            emit(
                BENCH,
                "deadlock_retries",
                sum(conflicts.values()),
                "transactions",
                per_process={k: v for k, v in conflicts.items() if v},
                **context,
            )
            log = LogCounter(broker, TOPICS)
            checks, failed = await sve.settled_invariants(
                cluster.services, log, order_settings.mailbox
            )
            emit(
                BENCH,
                "invariants",
                not failed,
                None,
                checks=len(checks),
                failed=failed,
                restarts=cluster.restarts,
                **backend_context,
            )
        finally:
            await cluster.stop()


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    started = time.perf_counter()
    with workdir(settings.dir, "tidings-bench-instances-") as directory:
        machine(BENCH, directory)
        asyncio.run(run(settings, directory))
    emit(
        BENCH,
        "total_runtime_s",
        time.perf_counter() - started,
        "s",
        quick=settings.quick,
        loadavg_1min_after=os.getloadavg()[0],
    )
    return 0
