"""The structure holds: no import cycle inside `tidings`, layers point one way, the library never
imports its example, and no module grows past what a reader can hold."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 700

LAYERS = {
    # module prefix -> the tidings modules (prefixes) it may import
    "tidings.errors": (),
    "tidings.records": ("tidings.errors",),
    "tidings.partitioner": ("tidings.errors",),
    "tidings._ids": (),
    "tidings.event": ("tidings.errors", "tidings.records", "tidings._ids"),
    "tidings.schema": ("tidings.errors", "tidings.event"),
    "tidings.blobs": ("tidings.errors",),
    "tidings.instance": ("tidings.errors",),
    "tidings._wakeup": (),
    "tidings.brokers": (
        "tidings.errors",
        "tidings.instance",
        "tidings.records",
        "tidings.partitioner",
        "tidings.brokers",
        "tidings._sqlite",
        "tidings._notify",
        "tidings._wakeup",
    ),
    "tidings.stores": (
        "tidings.errors",
        "tidings.records",
        "tidings.stores",
        "tidings._sqlite",
        "tidings._notify",
    ),
}
"""Lower layers and what they may import; the runtime, service and tooling above them may
import these, never the other way round."""


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "tidings").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The tidings modules `name` imports anywhere in its code (type-checking imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            if candidate.split(".")[0] == "examples":
                targets.add("examples")
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                targets.add(candidate)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle_inside_tidings() -> None:
    edges = {name: {t for t in targets if t != "examples"} for name, targets in graph().items()}
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")


def test_the_library_never_imports_its_example() -> None:
    importers = sorted(name for name, targets in graph().items() if "examples" in targets)
    assert importers == []


def test_lower_layers_import_only_what_is_below_them() -> None:
    wrong = []
    for name, targets in graph().items():
        layer = next((p for p in LAYERS if name == p or name.startswith(p + ".")), None)
        if layer is None:
            continue
        allowed = LAYERS[layer]
        for target in sorted(targets):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_module_is_over_700_lines() -> None:
    big = {
        name: n
        for name, path in modules().items()
        if (n := path.read_text().count("\n")) > MAX_LINES
    }
    assert big == {}
