"""tidings benchmarks: `python -m bench <name> [options]`, one JSON object per result line.

Each benchmark is a module `bench/<name>.py` exposing `main(argv: list[str]) -> int | None`;
modules whose name starts with `_` are helpers, not benchmarks. Results are recorded in
BENCHMARKS.md together with the machine line every benchmark prints first.
"""
