"""`python -m bench <name> [options]`: run benchmark `bench/<name>.py` (its `main(argv)`).

Adding a benchmark is adding a module: any `bench/<name>.py` (not starting with `_`) that
defines `main(argv)` is listed and runnable; nothing here needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

USAGE = "usage: python -m bench <benchmark> [options]   (python -m bench <benchmark> --help)"


def known() -> list[str]:
    """The benchmark names: public modules of this package."""
    here = Path(__file__).resolve().parent
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(here)])
        if not info.name.startswith("_") and not info.ispkg
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    names = known()
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        print(f"benchmarks: {', '.join(names)}")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in names:
        print(
            f"bench: unknown benchmark {name!r}; known: {', '.join(names) or '(none)'}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(f"bench.{name}")
    entry = getattr(module, "main", None)
    if not callable(entry):
        print(f"bench: module bench.{name} has no main(argv) function", file=sys.stderr)
        return 2
    result = entry(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
