"""`python -m bench console --quick` runs end to end and reports a p95 for every page and the
console process's memory. Whether the figures meet their targets is for BENCHMARKS.md (1M
records on a quiet machine), not for a test on a shared one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jinja2")

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "topology",
    "topics",
    "topic_newest",
    "topic_offset",
    "topic_key",
    "topic_correlation",
    "topic_type",
    "topic_since",
    "record",
    "groups",
    "group",
    "group_lag",
    "dead_letters",
    "dead_letters_filtered",
    "dead_letters_resolved",
    "dead_letter",
    "trace",
    "search",
    "dashboard",
}


@pytest.mark.timeout(200)
def test_console_benchmark_reports_every_page(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "console", "--quick", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    p95 = {line["page"]: line for line in lines if line["metric"] == "page_p95_ms"}
    assert set(p95) == PAGES
    assert all(line["value"] > 0 and line["requests"] == 5 for line in p95.values())
    metrics = {line["metric"]: line for line in lines}
    assert metrics["seed_s"]["records"] == 20_000
    assert 0 < metrics["console_rss_mb"]["value"] <= metrics["console_peak_rss_mb"]["value"]
    assert metrics["index_build_s"]["value"] > 0
