"""The README's Python examples run as written, and the demo runs end to end."""

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
