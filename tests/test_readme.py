"""The README's Python examples run as written, and the demo runs end to end.

Blocks fenced as ```python must run on their own; fragments are fenced as ```py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_demo_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings.demo", "--dir", str(tmp_path), "--events", "500"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "each received all 500 events" in result.stdout


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


async def test_readme_service_runs_with_tidings_run(tmp_path: Path) -> None:
    import asyncio
    import os
    import signal
    import sqlite3
    import time

    from tidings import Event, connect, event_from_record
    from tidings.brokers.base import TopicPartition

    service_code = next(b for b in BLOCKS if "tidings run billing:service" in b)
    (tmp_path / "billing.py").write_text(service_code)
    url = f"sqlite:///{tmp_path}/.tidings/bus.db"
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", "--broker", url, "run", "billing:service"],
            cwd=tmp_path,
            stderr=sink,
            env={**os.environ},
        )
    try:
        deadline = time.monotonic() + 30
        while "running (" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with connect(url) as broker:
            v1 = Event(
                type="ORDER_PLACED", version=1, key="o-1", data={"orderId": "o-1", "total": 12.5}
            )
            await broker.publish_events("order-events", [v1])
            deadline = time.monotonic() + 30
            records: list[object] = []
            while not records:
                assert time.monotonic() < deadline, log.read_text()
                for p in range(4):
                    records += await broker.read(TopicPartition("payment-events", p), 0, 10)
                await asyncio.sleep(0.05)
        payment = event_from_record(records[0])  # type: ignore[arg-type]
        assert payment.type == "PAYMENT_CHARGED"
        assert payment.data == {"orderId": "o-1", "amount": 12.5}
        assert payment.causation_id == v1.id and payment.correlation_id == v1.correlation_id
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    with sqlite3.connect(tmp_path / ".tidings" / "billing.db") as db:
        assert db.execute("SELECT order_id, amount FROM charges").fetchall() == [("o-1", 12.5)]
