"""Run the whole order system: `python -m examples.orders [--orders N] [--exit] [--processes]`.

Starts every service (consumers and outbox relay each) and the HTTP API, seeds the inventory,
places sample orders through `POST /orders` (ORDER_PLACED v1 and v2, some for a sold-out
product, some declined by the payment gateway) while a live summary shows orders by status,
events per topic, consumer lag and dead letters, waits until every order is final and checks
the invariants. With `--exit` it then stops and exits 1 naming any invariant that failed;
without it, it keeps the API running until Ctrl-C.

`--processes` runs one OS process per service; `--chaos S` (with `--processes`) SIGKILLs a
random service about every S seconds while orders flow and restarts it.

Unless `--exit` or `--no-console`, it also starts the web console (`tidings console`, port
`--console-port`, default 8090) on the same broker, with the analytics service's live order
dashboard, and keeps it running with the API until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from examples.orders.checks import Check, LogCounter, check_invariants
from examples.orders.cluster import InProcessCluster, ProcessCluster
from examples.orders.dashboard import render, take
from examples.orders.events import TOPICS
from examples.orders.load import CATALOG, OrderClient, sample_orders
from examples.orders.serve import NAMES, TOKEN_ENV
from examples.orders.services import inventory
from examples.orders.settings import Settings
from tidings import connect

Cluster = InProcessCluster | ProcessCluster


def api_token(directory: Path) -> tuple[str, Path | None]:
    """`ORDERS_API_TOKEN` if set, else the token in `<dir>/api-token` (made on first run,
    readable only by you). Returns the token and the file it is in, if any."""
    if token := os.environ.get(TOKEN_ENV):
        return token, None
    path = directory / "api-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(24))
    return path.read_text().strip(), path


class Chaos:
    """SIGKILLs a service about every `every` seconds and restarts it after a moment: every
    service once, in a random order, then again (so the order API and each relay get hit).
    `everyone_hit` is set once every service was killed at least once."""

    def __init__(self, cluster: ProcessCluster, every: float, seed: int) -> None:
        self.cluster = cluster
        self.every = every
        self.rng = random.Random(seed)
        self.kills: Counter[str] = Counter()
        self.everyone_hit = asyncio.Event()

    async def run(self) -> None:
        victims: list[str] = []
        while True:
            await asyncio.sleep(self.every * self.rng.uniform(0.5, 1.5))
            if not victims:
                victims = self.rng.sample(NAMES, len(NAMES))
            name = victims.pop()
            self.cluster.kill(name)
            self.kills[name] += 1
            await asyncio.sleep(self.rng.uniform(0.05, 1.0))
            await self.cluster.start((name,))
            if len(self.kills) == len(NAMES):
                self.everyone_hit.set()

    def __str__(self) -> str:
        total = sum(self.kills.values())
        detail = ", ".join(f"{n} {k}" for n, k in sorted(self.kills.items()))
        return f"SIGKILLed {total} time(s)" + (f" ({detail})" if detail else "")


async def main_async(args: argparse.Namespace) -> int:
    console = Console()
    directory: Path = args.dir
    settings = Settings.in_directory(
        directory, payment_failure_rate=args.failure_rate, payment_latency_s=args.payment_latency
    )
    token, token_file = api_token(directory)
    cluster: Cluster
    if args.processes:
        cluster = ProcessCluster(settings, directory, token, args.host, args.port)
    else:
        cluster = InProcessCluster(settings, token, args.host, args.port)
    layout = "one process per service" if args.processes else "one process"
    with console.status(f"starting 7 services ({layout})"):
        await cluster.start()  # stops what it started if it fails
    web: WebConsole | None = None
    if not args.exit and not args.no_console:
        assert settings.broker is not None
        with console.status("starting the web console"):
            web = await WebConsole.start(
                settings.broker,
                args.host,
                args.console_port,
                cluster.analytics_url,
                directory / "logs" / "console.log",
            )
        if web.error:
            console.print(f"[yellow]web console not started: {web.error}")
    chaos_task: asyncio.Task[None] | None = None
    client = OrderClient(cluster.api_url, token, give_up_after=args.timeout)
    try:
        assert settings.broker is not None
        async with connect(settings.broker) as broker:
            services = cluster.services
            log = LogCounter(broker, TOPICS)
            await inventory.seed(
                services["inventory"], {p: stock for p, (_, stock) in CATALOG.items()}
            )
            first = len(await services["orders"].store.query("SELECT id FROM orders"))
            samples = sample_orders(args.orders, first=first, seed=args.seed)
            _print_access(console, cluster, token_file, keep_running=not args.exit, web=web)
            chaos = (
                Chaos(cluster, args.chaos, args.seed)
                if isinstance(cluster, ProcessCluster) and args.chaos
                else None
            )
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            bar = progress.add_task("placing orders", total=len(samples))
            checks: list[Check] = []
            headline = ""

            async def frame() -> Group:
                return Group(progress, render(await take(services, log), headline))

            with Live(await frame(), console=console, refresh_per_second=4) as live:

                async def refresh() -> None:
                    while True:
                        await asyncio.sleep(0.5)
                        live.update(await frame())

                refresher = asyncio.create_task(refresh())
                if chaos is not None:
                    chaos_task = asyncio.create_task(chaos.run())
                started = time.monotonic()
                await client.place_all(samples, progress=lambda n: progress.advance(bar, n))
                placed_s = time.monotonic() - started
                headline = f"placed {len(samples)} orders in {placed_s:.2f} s"
                if chaos is not None and chaos_task is not None:
                    placed = headline
                    headline += "; chaos goes on until every service was killed once"
                    hit = asyncio.create_task(chaos.everyone_hit.wait())
                    await asyncio.wait({hit, chaos_task}, return_when=asyncio.FIRST_COMPLETED)
                    hit.cancel()
                    if chaos_task.done():
                        chaos_task.result()  # chaos itself failed (a service did not restart)
                    headline = placed
                    chaos_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await chaos_task
                    await cluster.start()  # whatever chaos left down
                    headline += f"; chaos: {chaos}"
                deadline = time.monotonic() + args.timeout
                while True:
                    checks = await check_invariants(services, log, settings.mailbox)
                    if all(c.ok for c in checks) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                headline += f"; settled {time.monotonic() - started - placed_s:.2f} s later"
                refresher.cancel()
                live.update(Group(render(await take(services, log), headline, checks)))
                if not args.exit:
                    stop = _stop_on_signal()
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 0.5)
                        live.update(Group(render(await take(services, log), headline, checks)))
            console.print()
            failed = [c for c in checks if not c.ok]
            if failed:
                console.print(f"[red]invariants failed: {', '.join(c.name for c in failed)}")
                return 1
            console.print("[green]all invariants hold")
            return 0
    finally:
        if chaos_task is not None:
            chaos_task.cancel()
        if web is not None:
            await web.stop()
        await client.close()
        with console.status("stopping"):
            await cluster.stop()


class WebConsole:
    """`tidings console` as a child process on the demo's broker, showing the analytics
    service's dashboard. `url` once it listens; `error` if it could not start (the demo goes
    on without it)."""

    def __init__(self, process: asyncio.subprocess.Process | None) -> None:
        self.process = process
        self.url = ""
        self.token_hint = ""
        self.error = ""

    @classmethod
    async def start(
        cls, broker: str, host: str, port: int, analytics_url: str, log: Path
    ) -> WebConsole:
        command = [sys.executable, "-m", "tidings.cli", "--broker", broker, "console"]
        command += ["--host", host, "--port", str(port)]
        command += ["--dashboard", f"{analytics_url}/analytics/dashboard"]
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "ab") as errors:  # noqa: ASYNC230 (a local log file)
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errors,
                )
        except OSError as exc:
            web = cls(None)
            web.error = str(exc)
            return web
        web = cls(process)
        assert process.stdout is not None
        try:
            first = await asyncio.wait_for(process.stdout.readline(), 30)
            second = await asyncio.wait_for(process.stdout.readline(), 5)
        except TimeoutError:
            first = second = b""
        text = first.decode(errors="replace")
        if " on http" not in text:
            await web.stop()
            said = log.read_text(errors="replace").strip().splitlines()  # noqa: ASYNC240
            web.error = f"{said[-1] if said else 'it did not start'} (see {log})"
            return web
        web.url = text.split(" on ", 1)[1].split()[0]
        web.token_hint = second.decode(errors="replace").strip().removesuffix("; Ctrl-C stops")
        return web

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def _print_access(
    console: Console,
    cluster: Cluster,
    token_file: Path | None,
    *,
    keep_running: bool,
    web: WebConsole | None = None,
) -> None:
    bearer = f"$(cat {token_file})" if token_file else f"${TOKEN_ENV}"
    console.print(
        f"order API  {cluster.api_url}/orders   analytics  {cluster.analytics_url}/analytics",
        soft_wrap=True,
    )
    if web is not None and web.url:
        console.print(
            f"console    {web.url}   dashboard  {web.url}dashboard   ({web.token_hint})",
            soft_wrap=True,
        )
    if isinstance(cluster, InProcessCluster) and cluster.metrics_url:
        health = cluster.metrics_url.removesuffix("/metrics")
        console.print(
            f"metrics    {cluster.metrics_url}   health  {health}/healthz  {health}/readyz",
            soft_wrap=True,
        )
    elif isinstance(cluster, ProcessCluster) and cluster.metrics_urls:
        console.print(
            f"metrics    {cluster.metrics_urls.get('orders', '')} (orders; one per service)"
        )
    console.print(
        f"  curl -X POST {cluster.api_url}/orders -H 'Authorization: Bearer '{bearer} "
        "-H 'Content-Type: application/json' "
        """-d '{"userId": "ada", "items": [{"productId": "mouse", "quantity": 1, "price": 19.5}],"""
        """ "currency": "EUR"}'""",
        soft_wrap=True,
    )
    if keep_running:
        kept = "the API, the console and services" if web and web.url else "the API and services"
        console.print(f"{kept} keep running after the sample orders; Ctrl-C stops")


def _stop_on_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.orders", description=__doc__)
    parser.add_argument("--orders", type=int, default=200, help="sample orders to place")
    parser.add_argument("--exit", action="store_true", help="check invariants and exit")
    parser.add_argument("--dir", default=".tidings", help="data directory (default .tidings)")
    parser.add_argument("--processes", action="store_true", help="one OS process per service")
    parser.add_argument(
        "--chaos", type=float, default=0.0, metavar="S", help="SIGKILL a service every ~S s"
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="order API port; 0 picks one")
    parser.add_argument(
        "--console-port", type=int, default=8090, help="web console port (default 8090); 0 picks"
    )
    parser.add_argument("--no-console", action="store_true", help="do not start the web console")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="payment declines")
    parser.add_argument("--payment-latency", type=float, default=0.0, help="gateway seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to settle")
    args = parser.parse_args(argv)
    if args.orders < 0:
        parser.error("--orders must be >= 0")
    if not 0.0 <= args.failure_rate <= 1.0:
        parser.error("--failure-rate must be between 0 and 1")
    if args.chaos < 0 or (args.chaos and not args.processes):
        parser.error("--chaos needs --processes and a positive number of seconds")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if not 0 <= args.console_port <= 65535:
        parser.error("--console-port must be 0..65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.dir = Path(args.dir).resolve()
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(main_async(args))
    except OSError as exc:
        print(f"orders demo: {exc}", file=sys.stderr)
        return 2
