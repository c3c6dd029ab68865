"""`python -m bench sync_vs_events` with tiny settings: the article's synchronous placeOrder
(six sequential HTTP calls, 650 ms of simulated latency) against the real order system."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(*args: str, timeout: float = 110) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "sync_vs_events", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(120)
def test_sync_is_slower_than_650_ms_and_fails_without_email_events_do_not() -> None:
    result = run_bench("--requests", "10", "--concurrency", "5", "--no-capacity")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert all(line["bench"] == "sync_vs_events" for line in lines)
    metrics: dict[str, dict[str, Any]] = {line["metric"]: line for line in lines}
    value = {name: line["value"] for name, line in metrics.items()}

    for side in ("sync", "events"):
        for suffix in ("", "_email_down"):
            for name in ("p50_ms", "p99_ms", "success_rate"):
                assert f"{side}_{name}{suffix}" in value, sorted(value)
    assert metrics["machine"]["cores"]
    assert metrics["article_claim"]["sync_ms"] == 650
    assert metrics["article_claim"]["events_ms"] == 15
    assert metrics["article_claim"]["speedup"] == 43

    assert value["sync_p50_ms"] >= 650  # six sequential calls cannot beat their latencies
    assert value["sync_p99_ms"] >= value["sync_p50_ms"]
    assert value["events_p50_ms"] < value["sync_p50_ms"]
    assert value["speedup"] == pytest.approx(value["sync_p50_ms"] / value["events_p50_ms"], 0.01)
    assert value["sync_success_rate"] == 1.0
    assert value["events_success_rate"] == 1.0
    assert value["sync_success_rate_email_down"] == 0.0
    assert value["events_success_rate_email_down"] == 1.0
    assert metrics["sync_success_rate_email_down"]["errors"] == {"HTTP 503 (email failed)": 10}
    assert metrics["events_success_rate_email_down"]["email_running"] is False
    assert metrics["events_success_rate_email_down"]["emails_sent_while_down"] == 0
    assert metrics["sync_p50_ms"]["requests"] == metrics["events_p50_ms"]["requests"] == 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--requests", "0"), "--requests must be between 1 and 100000"),
        (("--concurrency", "0"), "--concurrency must be between 1 and 1000"),
        (("--timeout", "-1"), "--timeout must be more than 0"),
        (("--requests", "many"), "invalid int value"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(args: tuple[str, ...], message: str) -> None:
    result = run_bench(*args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert not result.stdout
