"""Running the seven services: all in this process, or one OS process each.

Both give the demo the same things: the order API's URL, the analytics URL, and `services`,
Service objects on the same databases for the invariant checks and the summary. Only the
process layout can kill and restart a service (`kill`, `start`): the chaos mode and the fault
tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from examples.orders.api import HttpServer, create_app, serving
from examples.orders.serve import NAMES, TOKEN_ENV, WITH_HTTP, instance_key, ready_file
from examples.orders.services import build_all
from examples.orders.settings import Settings
from tidings import Service
from tidings.instance import INSTANCE_ENV


class InProcessCluster:
    """Every service as asyncio tasks in this process; one HTTP server for both APIs and one
    telemetry endpoint for all seven services (/metrics, /healthz, /readyz at `metrics_url`'s
    host and port; not served when the `metrics` extra is missing)."""

    def __init__(self, settings: Settings, token: str, host: str, port: int) -> None:
        self.settings = settings
        self.services = build_all(settings)
        self.token, self.host, self.port = token, host, port
        self._tasks: list[asyncio.Task[None]] = []
        self._http: contextlib.AbstractAsyncContextManager[HttpServer] | None = None
        self._telemetry = contextlib.AsyncExitStack()
        self.api_url = self.analytics_url = self.metrics_url = ""

    async def start(self) -> None:
        """Start every service and the HTTP servers; if any of it fails, stop what started."""
        try:
            self.metrics_url = await self._serve_telemetry()
            for service in self.services.values():
                self._tasks.append(await service.run_in_background())
            app = create_app(
                orders_service=self.services["orders"],
                analytics=self.services["analytics"],
                token=self.token,
            )
            http = serving(app, self.host, self.port)
            server = await http.__aenter__()
            self._http = http
        except BaseException:
            await self.stop()
            raise
        self.api_url = self.analytics_url = f"http://{self.host}:{server.port}"

    async def _serve_telemetry(self) -> str:
        try:
            from tidings.telemetry import metrics
            from tidings.telemetry.server import serving as telemetry_serving
        except ImportError:  # the metrics extra is not installed
            return ""
        collected = metrics.Metrics()
        for service in self.services.values():
            metrics.instrument(service, collected)
        endpoint = telemetry_serving(list(self.services.values()), 0, self.host, collected)
        port = await self._telemetry.enter_async_context(endpoint)
        return f"http://{self.host}:{port}/metrics"

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.__aexit__(None, None, None)
            self._http = None
        for service in self.services.values():
            service.stop()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 60)
        await self._telemetry.aclose()


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ProcessCluster:
    """One `python -m examples.orders.serve NAME` process per service - or `instances[NAME]`
    of them, known as NAME, NAME-2, ... (not for the services with an HTTP API) - logs in
    `<dir>/logs/<key>.log`. `services` are this process's own handles on their databases
    (started, never run): reading them is safe while the processes write. `start`, `kill`,
    `restart` and `terminate` take those keys."""

    def __init__(
        self,
        settings: Settings,
        directory: Path,
        token: str,
        host: str,
        port: int,
        instances: Mapping[str, int] | None = None,
        instance_ids: bool = False,
    ) -> None:
        self.instance_ids = instance_ids
        """Each process's TIDINGS_INSTANCE_ID is its key (see `tidings.instance`)."""
        self.keys: dict[str, tuple[str, int]] = {}
        """Every process's key -> (service name, instance number)."""
        for name in NAMES:
            count = (instances or {}).get(name, 1)
            if count > 1 and name in WITH_HTTP:
                raise ValueError(f"{name} serves HTTP on one port: one instance only")
            for instance in range(1, count + 1):
                self.keys[instance_key(name, instance)] = (name, instance)
        self.settings = settings
        self.directory = directory.resolve()
        self.token, self.host = token, host
        self.ports = {"orders": port or free_port(host), "analytics": free_port(host)}
        self.api_url = f"http://{host}:{self.ports['orders']}"
        self.analytics_url = f"http://{host}:{self.ports['analytics']}"
        self.extra_args = ["--failure-rate", str(settings.payment_failure_rate)]
        self.extra_args += ["--payment-latency", str(settings.payment_latency_s)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self.services: dict[str, Service] = {}
        self.metrics_urls: dict[str, str] = {}
        """Each running process's Prometheus endpoint (/metrics; /healthz and /readyz beside)."""
        self.restarts = 0

    async def start(self, names: tuple[str, ...] | None = None) -> None:
        """Start the named processes (default: all; those not running) and wait until each is
        ready. If one cannot start, the ones this call started are stopped again."""
        wanted = [n for n in (names or tuple(self.keys)) if not self.running(n)]
        try:
            for name in wanted:
                self._spawn(name)
            for name in wanted:
                await self._wait_ready(name)
        except BaseException:
            await self.terminate(tuple(wanted), grace=10.0)
            raise
        if not self.services:
            self.services = build_all(self.settings)
            for service in self.services.values():
                await service.start()

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def _spawn(self, key: str) -> None:
        name, instance = self.keys[key]
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        ready_file(self.directory, key).unlink(missing_ok=True)
        if key not in self._logs:
            self._logs[key] = open(self.directory / "logs" / f"{key}.log", "ab")  # noqa: SIM115
        command = [sys.executable, "-m", "examples.orders.serve", name, "--instance", str(instance)]
        command += ["--dir", str(self.directory), "--host", self.host, *self.extra_args]
        command += ["--metrics-port", "0"]
        if name in WITH_HTTP:
            command += ["--port", str(self.ports[name])]
        env = {**os.environ, TOKEN_ENV: self.token}
        if self.instance_ids:
            # a stable identity: restarted, the process takes its relay lease and (on Kafka)
            # its partitions back at once instead of waiting for the dead one's to expire
            env[INSTANCE_ENV] = key
        self.processes[key] = subprocess.Popen(
            command,
            env=env,
            stdout=self._logs[key],
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    async def _wait_ready(self, name: str, timeout: float = 60.0) -> None:
        process = self.processes[name]
        path = ready_file(self.directory, name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"service {name} exited with {process.returncode} while starting; "
                    f"see {self.directory / 'logs' / f'{name}.log'}"
                )
            with contextlib.suppress(FileNotFoundError, ValueError):
                ready = json.loads(path.read_text())
                if ready["pid"] == process.pid:
                    self.metrics_urls[name] = f"http://{self.host}:{ready['metrics_port']}/metrics"
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"service {name} not ready after {timeout:.0f} s")
            await asyncio.sleep(0.05)

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye; what it had open rolls back."""
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    async def restart(self, name: str) -> None:
        self.kill(name)
        self.restarts += 1
        await self.start((name,))

    async def terminate(self, names: tuple[str, ...] | None = None, grace: float = 30.0) -> None:
        """SIGTERM (drain and exit), then SIGKILL whatever is left after `grace` seconds."""
        chosen = [n for n in (names or tuple(self.processes)) if self.running(n)]
        for name in chosen:
            self.processes[name].send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for name in chosen:
            remaining = max(deadline - loop.time(), 0.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.processes[name].wait, remaining)
            self.kill(name)

    async def stop(self) -> None:
        await self.terminate()
        for service in self.services.values():
            await service.close()
        for log in self._logs.values():
            log.close()
