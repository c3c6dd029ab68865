"""Helpers shared by the benchmarks: result lines, the machine line, work directories."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any


def emit(bench: str, metric: str, value: Any, unit: str | None, **context: Any) -> None:
    """Print one result as one JSON object on one line."""
    if isinstance(value, float):
        value = round(value, 3)
    line = {"bench": bench, "metric": metric, "value": value, "unit": unit}
    line.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in context.items()})
    print(json.dumps(line), flush=True)


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _filesystem(path: str) -> str | None:
    """The filesystem type holding `path` (from /proc/mounts: longest matching mount point)."""
    path = os.path.realpath(path)
    best, kind = "", None
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
    return kind


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def machine(bench: str, workdir: str | None = None) -> None:
    """Print the machine line: what the results were measured on."""
    tidings_version = None
    with contextlib.suppress(Exception):
        import tidings

        tidings_version = getattr(tidings, "__version__", None)
    emit(
        bench,
        "machine",
        _cpu_model(),
        None,
        cores=os.cpu_count(),
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        tidings=tidings_version or _version("tidings"),
        msgspec=_version("msgspec"),
        os=f"{platform.system()} {platform.release()}",
        filesystem=_filesystem(workdir) if workdir else None,
        executable=sys.executable,
    )


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


@contextlib.contextmanager
def workdir(parent: str | None, prefix: str) -> Iterator[str]:
    """A fresh directory (inside `parent` if given) removed afterwards."""
    if parent is not None:
        os.makedirs(parent, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
