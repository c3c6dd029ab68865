"""One service of the order system as its own OS process (the realistic layout):

    ORDERS_API_TOKEN=... python -m examples.orders.serve orders --dir .tidings --port 8000

Runs the service's consumers and outbox relay, plus its HTTP API for `orders` and `analytics`,
and with `--metrics-port` its telemetry endpoint (/metrics, /healthz, /readyz). When it is ready
it writes `<dir>/run/<name>.json` (`{"pid", "port", "metrics_port"}`; `<name>-<n>.json` for
`--instance n` > 1: more processes of one service share its consumer groups and database).
SIGTERM/SIGINT stop the HTTP server, then drain in-flight events and exit 0; a second signal
exits at once (nothing committed is lost, nothing is applied twice). Broker and store come
from `TIDINGS_BROKER` / `TIDINGS_STORE`, else SQLite files under `--dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from examples.orders.api import create_app, run_loop, serving
from examples.orders.services import MODULES
from examples.orders.settings import Settings
from tidings.telemetry import logs, metrics
from tidings.telemetry.server import serving as telemetry_serving

TOKEN_ENV = "ORDERS_API_TOKEN"  # noqa: S105 (a variable name)
NAMES = tuple(module.NAME for module in MODULES)
WITH_HTTP = ("orders", "analytics")


def instance_key(name: str, instance: int = 1) -> str:
    """How one process of a service is known: its name, `<name>-<n>` from the second on."""
    return name if instance == 1 else f"{name}-{instance}"


def ready_file(directory: Path, key: str) -> Path:
    return directory / "run" / f"{key}.json"


async def serve(args: argparse.Namespace) -> int:
    directory = args.dir
    settings = Settings.in_directory(
        directory,
        payment_failure_rate=args.failure_rate,
        payment_latency_s=args.payment_latency,
    )
    module = next(m for m in MODULES if args.name == m.NAME)
    service = module.create(settings)
    if logs.chosen() == "json":
        logs.instrument(service)
    token = os.environ.get(TOKEN_ENV, "")
    if args.name == "orders" and not token:
        print(f"serve: set {TOKEN_ENV} (the order API's bearer token)", file=sys.stderr)
        return 2

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)  # second signal: the databases roll back what was open
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with contextlib.AsyncExitStack() as stack:
        metrics_port = None
        if args.metrics_port is not None:
            collected = metrics.Metrics()
            metrics.instrument(service, collected)
            endpoint = telemetry_serving([service], args.metrics_port, args.host, collected)
            metrics_port = await stack.enter_async_context(endpoint)
        running = await service.run_in_background()
        port = 0
        if args.name in WITH_HTTP:
            app = (
                create_app(orders_service=service, token=token)
                if args.name == "orders"
                else create_app(analytics=service)
            )
            http = await stack.enter_async_context(serving(app, args.host, args.port))
            port = http.port
        _announce(directory, instance_key(args.name, args.instance), port, metrics_port)
        await _until(stop, running)
        service.stop()
        await running
    return 0


def _announce(directory: Path, key: str, port: int, metrics_port: int | None) -> None:
    path = ready_file(directory, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    ready = {"pid": os.getpid(), "port": port, "metrics_port": metrics_port}
    tmp.write_text(json.dumps(ready))
    os.replace(tmp, path)


async def _until(stop: asyncio.Event, running: asyncio.Task[None]) -> None:
    """Wait for a signal, or for the service to stop on its own (its error is raised)."""
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, running}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if running.done():
        running.result()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.orders.serve", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--dir", default=".tidings")
    parser.add_argument(
        "--instance", type=int, default=1, help="which process of the service this is (1, 2...)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (orders, analytics)")
    parser.add_argument("--failure-rate", type=float, default=0.1, help="payment declines")
    parser.add_argument("--payment-latency", type=float, default=0.0, help="gateway seconds")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve /metrics, /healthz, /readyz (0: any)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.dir = Path(args.dir).resolve()
    if logs.chosen() == "json":  # TIDINGS_LOG_FORMAT=json
        logs.configure("json")
    else:
        logging.basicConfig(
            level=logging.INFO,
            format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s",
        )
    return run_loop(serve(args))


if __name__ == "__main__":
    sys.exit(main())
