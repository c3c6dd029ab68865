"""`python -m bench order_cpu`: where the order system's CPU goes, per order and per process.

The order system as `bench sync_vs_events` runs it (one OS process per service, the same HTTP
client), driven open loop at a fixed `--rate` for `--seconds` after a warm-up, every order then
waited for until final. The CPU time (user + system, from /proc) each process spent meanwhile,
divided by the orders placed:

* `cpu_per_order_ms` - all of the order system: its seven services' processes and, with
  `--backend kafka-pg`, the PostgreSQL and Kafka server processes of this machine (any other
  work they do meanwhile counts too); the processes one by one in `processes`;
* `client_cpu_per_order_ms` - the bench's own process (the HTTP client; making its 64
  connections costs ~0.5 s, which shows in short runs);
* `response_p50_ms` / `_p99_ms` and `time_to_final_p50_ms` / `_p99_ms` at that rate;
* `pg_transactions_per_order` (kafka-pg) - transactions PostgreSQL committed or rolled back in
  the database meanwhile, per order;
* `orders_final` - every order placed reached a final status (true/false).

Capacity on two cores is 2 s of CPU per second divided by (`cpu_per_order_ms` +
`client_cpu_per_order_ms`); batches grow with the rate, so the cost per order falls as it rises.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import sync_vs_events as sve
from bench._capacity import OpenLoopClient, open_loop
from bench._common import emit, machine, percentile, workdir

BENCH = "order_cpu"
WARM_UP_S = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    rate: float
    seconds: float
    backend: str
    bootstrap: str | None
    dsn: str | None
    dir: str | None


def parse(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench order_cpu", description=__doc__)
    parser.add_argument("--rate", type=float, default=300.0, help="orders/s (default 300)")
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="seconds of measured load (default 15)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 orders/s for 3 s")
    parser.add_argument("--backend", choices=sve.BACKENDS, default="sqlite")
    parser.add_argument("--bootstrap", default=os.environ.get("TIDINGS_KAFKA_BOOTSTRAP"))
    parser.add_argument("--dsn", default=os.environ.get("TIDINGS_POSTGRES_DSN"))
    parser.add_argument("--dir", default=None, help="the services' files (default: a temp dir)")
    args = parser.parse_args(list(argv))
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")
    if args.backend == "kafka-pg" and not (args.bootstrap and args.dsn):
        parser.error(
            "--backend kafka-pg needs --bootstrap and --dsn (or TIDINGS_KAFKA_BOOTSTRAP and "
            'TIDINGS_POSTGRES_DSN: eval "$(scripts/services env)")'
        )
    rate, seconds = (50.0, 3.0) if args.quick else (args.rate, args.seconds)
    return Settings(rate, seconds, args.backend, args.bootstrap, args.dsn, args.dir)


def _server_name(cmdline: list[str]) -> str | None:
    """PostgreSQL's and Kafka's processes on this machine, by name; None for the others."""
    if not cmdline:
        return None
    if cmdline[0].startswith("postgres") or cmdline[0].endswith("/postgres"):
        return "postgres"
    if os.path.basename(cmdline[0]) == "java" and any("kafka" in part for part in cmdline):
        return "kafka"
    return None


def _cpu(pid: int | str) -> float | None:
    """CPU seconds (user + system) of process `pid` so far; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(services: dict[str, int], servers: bool) -> dict[str, float]:
    """CPU seconds so far of the services' processes (name -> pid) and, if `servers`, of this
    machine's PostgreSQL and Kafka processes (summed by name)."""
    totals = {name: seconds for name, pid in services.items() if (seconds := _cpu(pid))}
    if not servers:
        return totals
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/cmdline", "rb") as f:
                cmdline = [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
        except OSError:  # the process ended meanwhile
            continue
        name = _server_name(cmdline)
        if name is not None and (seconds := _cpu(entry.name)) is not None:
            totals[name] = totals.get(name, 0.0) + seconds
    return totals


async def pg_transactions(dsn: str | None) -> int | None:
    """Transactions the database has committed and rolled back so far (None: not PostgreSQL)."""
    if dsn is None:
        return None
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else None


async def run(settings: Settings, directory: str) -> None:
    from examples.orders.cluster import ProcessCluster
    from examples.orders.load import CATALOG
    from examples.orders.services import inventory
    from examples.orders.settings import Settings as OrderSettings

    kafka_pg = settings.backend == "kafka-pg"
    backend_settings = sve.parse(
        ["--backend", settings.backend, "--no-capacity"]
        + (
            ["--bootstrap", settings.bootstrap or "", "--dsn", settings.dsn or ""]
            if kafka_pg
            else []
        )
    )
    path = Path(directory)
    with sve.backend(backend_settings) as context:
        order_settings = OrderSettings.in_directory(path, payment_failure_rate=0.0)
        cluster = ProcessCluster(order_settings, path, sve.TOKEN, sve.HOST, 0)
        await cluster.start()
        try:
            stock = {p: 10**9 if in_stock else 0 for p, (_, in_stock) in CATALOG.items()}
            await inventory.seed(cluster.services["inventory"], stock)
            store = cluster.services["orders"].store
            client = OpenLoopClient(cluster.api_url, {"Authorization": f"Bearer {sve.TOKEN}"})

            def requests(count: int, phase: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
                return [(r.body, r.headers) for r in sve.sample_requests(count, phase)]

            warm = await open_loop(
                client,
                requests(max(2, round(settings.rate * WARM_UP_S)), "warm-up"),
                settings.rate,
                sve.SETTLE_TIMEOUT_S,
            )
            await sve._settle(store, warm.order_ids)
            dsn = settings.dsn if kafka_pg else None
            pids = {name: process.pid for name, process in cluster.processes.items()}
            before, client_before = cpu_seconds(pids, kafka_pg), time.process_time()
            xacts_before = await pg_transactions(dsn)
            result = await open_loop(
                client,
                requests(max(2, round(settings.rate * settings.seconds)), "measured"),
                settings.rate,
                5.0,
            )
            rows = await sve._settle(store, result.order_ids)
            after, client_after = cpu_seconds(pids, kafka_pg), time.process_time()
            xacts_after = await pg_transactions(dsn)
        finally:
            await cluster.stop()

    orders = len(result.order_ids)
    if not orders:
        raise RuntimeError(f"no order was placed: {result.summary()}")
    per_process = {
        name: round((after.get(name, seconds) - seconds) / orders * 1000, 3)
        for name, seconds in before.items()
    }
    times = sve._to_final_ms(rows)
    base = {
        "rate": settings.rate,
        "seconds": settings.seconds,
        "orders": orders,
        "sent": result.sent,
        "backend": settings.backend,
        **context,
    }
    emit(
        BENCH,
        "cpu_per_order_ms",
        sum(per_process.values()),
        "ms",
        **base,
        processes=dict(sorted(per_process.items(), key=lambda kv: -kv[1])),
        note="CPU time of the order system's processes (and, on kafka-pg, this machine's"
        " PostgreSQL and Kafka) over the measured load and its settling, per order",
    )
    emit(
        BENCH,
        "client_cpu_per_order_ms",
        (client_after - client_before) / orders * 1000,
        "ms",
        **base,
    )
    emit(BENCH, "response_p50_ms", result.pct(50), "ms", **base)
    emit(BENCH, "response_p99_ms", result.pct(99), "ms", **base)
    if times:
        emit(BENCH, "time_to_final_p50_ms", percentile(times, 50), "ms", **base)
        emit(BENCH, "time_to_final_p99_ms", percentile(times, 99), "ms", **base)
    if xacts_before is not None and xacts_after is not None:
        per_order = (xacts_after - xacts_before) / orders
        emit(BENCH, "pg_transactions_per_order", per_order, None, **base)
    final = len(rows) == len(set(result.order_ids)) and all(r[0] != "PENDING" for r in rows)
    emit(BENCH, "orders_final", final, None, **base, errors=dict(result.errors))


def main(argv: Sequence[str]) -> int:
    settings = parse(argv)
    with workdir(settings.dir, "tidings-order-cpu-") as directory:
        machine(BENCH, directory)
        asyncio.run(run(settings, directory))
    return 0
