"""Metrics, health and JSON logs as an operator meets them: /metrics scraped with Prometheus's
own text parser (its lag equal to what `tidings groups describe` says), /healthz and /readyz
(503 naming the store while PostgreSQL is down, 200 again when it is back, nothing lost), and
`tidings run --log-format json` lines carrying the event's context."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.support import eventually, postgres_schema
from tidings import Event, Retry, connect, event_to_message
from tidings.cli import app
from tidings.schema import EventModel
from tidings.service import Context, Service
from tidings.telemetry import metrics
from tidings.telemetry.server import serving

ROOT = Path(__file__).resolve().parents[1]


class Tick(EventModel, type="TELEMETRY_TICK", version=1):
    n: int


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Service, str, asyncio.Event]]:
    gate = asyncio.Event()
    service = Service(
        "meter",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/meter.db",
        migrations=["CREATE TABLE ticks (n INTEGER PRIMARY KEY)"],
        topics={"tick-events": 2},
        retry=Retry(immediate=0, max_attempts=1),
    )

    @service.handler("tick-events")
    async def tick(event: Tick, ctx: Context) -> None:
        if event.n < 0:
            raise RuntimeError("negative")
        await gate.wait()
        await ctx.execute("INSERT INTO ticks(n) VALUES (?)", (event.n,))

    collected = metrics.Metrics()
    metrics.instrument(service, collected)
    task = await service.run_in_background()
    async with serving([service], 0, metrics=collected) as port:
        yield service, f"http://127.0.0.1:{port}", gate
    gate.set()
    service.stop()
    await task


async def test_metrics_count_outcomes_and_lag_equals_what_the_cli_says(
    served: tuple[Service, str, asyncio.Event], tmp_path: Path
) -> None:
    service, url, gate = served
    await service.broker.publish_events(
        "tick-events", [Tick(n=n).to_event(key=str(n)) for n in range(20)]
    )
    async with httpx.AsyncClient(base_url=url) as http:
        await asyncio.sleep(1.5)  # the handler holds its batches: nothing commits
        text = (await http.get("/metrics")).text
        found = samples(text)
        described = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["--broker", f"sqlite:///{tmp_path}/bus.db", "groups", "describe", "meter", "--json"],
        )
        group = json.loads(described.output)
        for partition in group["partitions"]:
            labels = {
                "service": "meter",
                "group": "meter",
                "topic": partition["topic"],
                "partition": str(partition["partition"]),
            }
            assert value(found, "tidings_consumer_lag", **labels) == partition["lag"]
        assert sum(p["lag"] for p in group["partitions"]) == 20
        ages = [v for (name, _), v in found.items() if name == "tidings_consumer_lag_seconds"]
        assert ages and max(ages) >= 1.0  # the oldest unprocessed record waits

        gate.set()
        await service.broker.publish_events("tick-events", [Tick(n=-1).to_event(key="x")])

        async def all_done() -> bool:
            found = samples((await http.get("/metrics")).text)
            ok = found.get(
                (
                    "tidings_events_processed_total",
                    tuple(
                        sorted(
                            {
                                "service": "meter",
                                "handler": "meter.tick",
                                "type": "TELEMETRY_TICK",
                                "outcome": "ok",
                            }.items()
                        )
                    ),
                ),
                0,
            )
            return (
                ok == 20
                and found.get(
                    (
                        "tidings_dead_letters_total",
                        (("reason", "retries-exhausted"), ("service", "meter")),
                    ),
                    0,
                )
                == 1
                # the dead letter is counted when it is written; relayed a moment later
                and found.get(
                    (
                        "tidings_relay_published_total",
                        (("service", "meter"), ("topic", "meter.dlq")),
                    ),
                    0,
                )
                == 1
            )

        await eventually(all_done, timeout=30)
        found = samples((await http.get("/metrics")).text)
        count = value(
            found, "tidings_handler_duration_seconds_count", service="meter", handler="meter.tick"
        )
        assert count == 20
        relayed = value(found, "tidings_relay_published_total", service="meter", topic="meter.dlq")
        assert relayed == 1

        async def outbox_drained() -> bool:  # the relay removes what it published after it
            found = samples((await http.get("/metrics")).text)
            return value(found, "tidings_outbox_pending", service="meter") == 0

        await eventually(outbox_drained, timeout=30)

        assert (await http.get("/healthz")).json() == {"status": "alive"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["services"]["meter"] == "ready"


async def test_readyz_names_the_store_while_postgresql_is_down(tmp_path: Path) -> None:
    if os.environ.get("TIDINGS_POSTGRES_RESTART_TEST") != "1":
        pytest.skip("stops and starts the shared PostgreSQL: set TIDINGS_POSTGRES_RESTART_TEST=1")
    with postgres_schema("ready") as store_url:
        service = Service(
            "ready",
            broker=f"sqlite:///{tmp_path}/bus.db",
            store=store_url,
            migrations=["CREATE TABLE ticks (n INTEGER PRIMARY KEY)"],
            topics={"tick-events": 1},
        )

        @service.handler("tick-events")
        async def tick(event: Tick, ctx: Context) -> None:
            await ctx.execute("INSERT INTO ticks(n) VALUES (?)", (event.n,))

        task = await service.run_in_background()
        try:
            async with (
                serving([service], 0) as port,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
            ):
                assert (await http.get("/readyz")).status_code == 200
                services = ROOT / "scripts" / "services"
                await asyncio.to_thread(
                    subprocess.run, [str(services), "stop", "postgres"], check=True
                )
                try:
                    await service.broker.publish_events(
                        "tick-events", [Tick(n=n).to_event() for n in range(5)]
                    )
                    down = await http.get("/readyz")
                    assert down.status_code == 503
                    assert "store" in down.json()["services"]["ready"]
                    reason = down.json()["services"]["ready"]["store"]
                    assert "the store postgresql://" in reason and ":55432/" in reason
                    assert "tidings:tidings@" not in reason  # no password
                finally:
                    await asyncio.to_thread(
                        subprocess.run, [str(services), "start", "postgres"], check=True
                    )

                async def back() -> bool:
                    return (await http.get("/readyz")).status_code == 200

                await eventually(back, timeout=60)

                async def applied() -> bool:
                    rows = await service.store.query("SELECT count(*) FROM ticks")
                    return bool(rows[0][0] == 5)

                await eventually(applied, timeout=60)  # nothing lost
        finally:
            service.stop()
            await task


SERVICE = textwrap.dedent(
    """
    import logging
    from tidings import Context, Event, Service

    service = Service("logger", store="sqlite:///logger.db", topics={"log-events": 1})
    log = logging.getLogger("app")

    @service.handler("log-events")
    async def note(event: Event, ctx: Context) -> None:
        log.info("noted %s", event.data)
    """
)


def test_json_logs_carry_the_event_context(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(SERVICE)
    bus = f"sqlite:///{tmp_path}/bus.db"
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidings.cli",
                "--broker",
                bus,
                "run",
                "svc:service",
                "--log-format=json",
            ],
            cwd=tmp_path,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 30
        while b"running (" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        event = Event(type="LOGGED", key="k1", data={"x": 1}, correlation_id="corr-7")

        async def publish() -> None:
            async with connect(bus) as broker:
                await broker.publish("log-events", [event_to_message(event)])

        asyncio.run(publish())
        while b"noted" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(log.read_text().splitlines())  # every line is JSON
    [noted] = [line for line in lines if line["message"].startswith("noted")]
    assert noted["level"] == "INFO" and noted["logger"] == "app"
    assert noted["service"] == "logger" and noted["handler"] == "logger.note"
    assert noted["event_id"] == event.id and noted["event_type"] == "LOGGED"
    assert noted["correlation_id"] == "corr-7"
    assert noted["topic"] == "log-events" and noted["partition"] == 0 and noted["offset"] == 0
    assert "time" in noted
