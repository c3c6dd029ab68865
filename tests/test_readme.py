"""The README's Python examples run as written, and the demo runs end to end.

Blocks fenced as ```python must run on their own; fragments are fenced as ```py."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import server_setting

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_example_runs(code: str, tmp_path: Path) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_quickstart_resumes_after_commit(tmp_path: Path) -> None:
    quickstart = BLOCKS[0]
    outputs = [
        subprocess.run(
            [sys.executable, "-c", quickstart],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        for _ in range(2)
    ]
    assert outputs[0].count("order-1") == 1
    assert outputs[1].count("order-1") == 1


def test_broker_benchmark_prints_json_lines(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "broker",
            "--quick",
            "--events",
            "2000",
            "--samples",
            "20",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    metrics = {json.loads(line)["metric"] for line in result.stdout.splitlines()}
    assert {
        "publish_events_per_s",
        "consume_events_per_s",
        "idle_latency_p99_ms",
        "sqlite_raw_insert_rows_per_s",
    } <= metrics


def _backends() -> list[object]:
    """(broker, store) URL templates for every combination the README promises."""
    return [
        pytest.param("sqlite", "sqlite", id="sqlite-broker-sqlite-store"),
        pytest.param("kafka", "sqlite", id="kafka-broker-sqlite-store"),
        pytest.param("kafka", "postgres", id="kafka-broker-postgres-store"),
    ]


@pytest.mark.parametrize(("broker_kind", "store_kind"), _backends())
async def test_readme_service_runs_unchanged_on_every_backend(
    tmp_path: Path, broker_kind: str, store_kind: str
) -> None:
    """The README's billing service, run with `tidings run`, configured only by environment."""
    import asyncio
    import signal
    import time
    import uuid

    from tidings import Event, connect, event_from_record
    from tidings.records import TopicPartition

    env = {**os.environ}
    if broker_kind == "kafka":  # its own namespace: the README's events are not the example's
        bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
        env["TIDINGS_BROKER"] = f"kafka://{bootstrap}?group_prefix=readme-{uuid.uuid4().hex[:8]}."
    else:
        env["TIDINGS_BROKER"] = f"sqlite:///{tmp_path}/.tidings/bus.db"
    schema = f"readme_{uuid.uuid4().hex[:10]}"
    if store_kind == "postgres":
        dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
        env["TIDINGS_STORE"] = f"{dsn}?schema={schema}_{{service}}"
    else:
        env.pop("TIDINGS_STORE", None)
    if broker_kind == "kafka":  # a new group starts at the end of the shared topic
        from tidings.brokers.base import CanResetOffsets
        from tidings.records import SeekTo

        async with connect(env["TIDINGS_BROKER"]) as broker:
            await broker.admin.create_topic("order-events", 4, exist_ok=True)
            admin = broker.admin
            assert isinstance(admin, CanResetOffsets)
            await admin.reset_offsets("billing", ["order-events"], SeekTo(latest=True))
    service_code = next(b for b in BLOCKS if "tidings run billing:service" in b)
    (tmp_path / "billing.py").write_text(service_code)
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", "run", "billing:service"],
            cwd=tmp_path,
            stderr=sink,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "running (" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        order_id = f"o-{uuid.uuid4().hex[:8]}"
        async with connect(env["TIDINGS_BROKER"]) as broker:
            v1 = Event(
                type="ORDER_PLACED",
                version=1,
                key=order_id,
                data={"orderId": order_id, "total": 12.5},
            )
            await broker.publish_events("order-events", [v1])
            deadline = time.monotonic() + 60
            payment = None
            while payment is None:
                assert time.monotonic() < deadline, log.read_text()
                info = await broker.admin.describe_topic("payment-events")
                for p in info.partitions:
                    tp = TopicPartition("payment-events", p.partition)
                    for record in await broker.read(tp, p.start_offset, 10_000):
                        event = event_from_record(record)
                        if event.causation_id == v1.id:
                            payment = event
                await asyncio.sleep(0.1)
        assert payment.type == "PAYMENT_CHARGED"
        assert payment.data == {"orderId": order_id, "amount": 12.5}
        assert payment.correlation_id == v1.correlation_id
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    if store_kind == "sqlite":
        with sqlite3.connect(tmp_path / ".tidings" / "billing.db") as db:
            rows = db.execute("SELECT order_id, amount FROM charges").fetchall()
        assert rows == [(order_id, 12.5)]
    else:
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            server_setting("TIDINGS_POSTGRES_DSN", "postgres"), autocommit=True
        ) as conn:
            cursor = await conn.execute(
                f'SELECT order_id, amount FROM "{schema}_billing".charges'  # noqa: S608
            )
            assert await cursor.fetchall() == [(order_id, 12.5)]
            await conn.execute(f'DROP SCHEMA "{schema}_billing" CASCADE')
