"""Sample data built from a JSON Schema, to run upcasters on: best effort, never guessing hard.

`samples(schema)` gives up to two instances: a *minimal* one (required properties only,
optionals' `null` alternative, the first enum value, the smallest numbers and strings) and a
*full* one (every property, non-null alternatives, the last enum value). A value it cannot
build with confidence (an unsatisfiable or unusual constraint, a regular expression none of
its candidates match, a required recursive property) drops that sample; the caller validates
what it gets against the writer's model anyway.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tidings.compat._schemas import Schema, resolve

__all__ = ["samples"]

_MAX_DEPTH = 12
_FORMATS = {
    "date-time": "2024-01-02T03:04:05Z",
    "date": "2024-01-02",
    "time": "03:04:05Z",
    "duration": "PT1S",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "email": "someone@example.com",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}
_STRINGS = ("", "a", "x", "0", "A", "a1", "abc", "sample", "a-b_c", "1234567890")


class _NoSample(Exception):
    """No value can be built for this schema with confidence."""


def samples(schema: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Up to two distinct instances of `schema`, each with its name ("minimal", "full")."""
    root: Schema = dict(schema)
    found: list[tuple[str, Any]] = []
    for full in (False, True):
        try:
            value = _value(root, root, full, 0)
        except Exception:  # _NoSample, or an odd schema: never break a check  # noqa: S112
            continue
        if all(value != other for _, other in found):
            found.append(("full" if full else "minimal", value))
    return found


def _value(raw: Any, root: Schema, full: bool, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _NoSample
    schema, _ = resolve(raw, root, "#")
    if schema is True:
        return None
    if schema is False:
        raise _NoSample
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][-1 if full else 0]
    for combinator in ("anyOf", "oneOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches:
            shared = {k: v for k, v in schema.items() if k != combinator}
            return _first(branches, shared, root, full, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        return _first([{"type": one} for one in kind], schema, root, full, depth)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind is None or kind == "null":
        return None
    if kind == "boolean":
        return full
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "string":
        return _string(schema, full)
    if kind == "array":
        return _array(schema, root, full, depth)
    if kind == "object":
        return _object(schema, root, full, depth)
    raise _NoSample


def _first(
    branches: list[Any], shared: dict[str, Any], root: Schema, full: bool, depth: int
) -> Any:
    """A value of the first branch that works: `null` first for a minimal sample, last for a
    full one."""
    merged = []
    for branch in branches:
        resolved, _ = resolve(branch, root, "#")
        if isinstance(resolved, dict):
            merged.append({**{k: v for k, v in shared.items() if k != "type"}, **resolved})
    merged.sort(key=lambda b: (b.get("type") == "null") == full)
    for branch in merged:
        try:
            return _value(branch, root, full, depth + 1)
        except _NoSample:
            continue
    raise _NoSample


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    minimum, maximum = _num(schema.get("minimum")), _num(schema.get("maximum"))
    above, below = _num(schema.get("exclusiveMinimum")), _num(schema.get("exclusiveMaximum"))
    lows = [v for v in (minimum, _past(above, 1, integer)) if v is not None]
    highs = [v for v in (maximum, _past(below, -1, integer)) if v is not None]
    candidates: list[float] = [0, *lows, *highs, 1]
    if lows and highs:
        candidates.append((max(lows) + min(highs)) / 2)
    step = _num(schema.get("multipleOf"))
    if step is not None and step > 0:
        candidates = [math.ceil(c / step) * step for c in candidates] + [step]
    for candidate in candidates:
        value: int | float = int(candidate) if integer else candidate
        if integer and value != candidate:
            continue
        if (
            (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum)
            and (above is None or value > above)
            and (below is None or value < below)
            and (step is None or step <= 0 or Decimal(str(value)) % Decimal(str(step)) == 0)
        ):
            return value
    raise _NoSample


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _past(bound: float | None, direction: int, integer: bool) -> float | None:
    """The nearest number past an exclusive bound."""
    if bound is None:
        return None
    if integer:
        return math.floor(bound) + 1 if direction > 0 else math.ceil(bound) - 1
    return bound + direction * max(abs(bound) * 1e-9, 1e-9)


def _string(schema: dict[str, Any], full: bool) -> str:
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    pattern = schema.get("pattern")
    known = _FORMATS.get(schema.get("format", ""))
    candidates = [known] if known else []
    candidates += ["x" * max(low, 1 if full else 0), *_STRINGS, "a" * low, "0" * low]
    try:
        compiled = re.compile(pattern) if isinstance(pattern, str) else None
    except re.error:
        raise _NoSample from None
    for candidate in candidates:
        if len(candidate) < low or (isinstance(high, int) and len(candidate) > high):
            continue
        if compiled is None or compiled.search(candidate):
            return candidate
    raise _NoSample


def _array(schema: dict[str, Any], root: Schema, full: bool, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems", [])
    items = schema.get("items", True)
    if isinstance(items, list):  # draft-7 tuples
        prefix, items = items, schema.get("additionalItems", True)
    values = [_value(item, root, full, depth + 1) for item in prefix]
    wanted = max(schema.get("minItems", 0), len(values) + (1 if full else 0))
    maximum = schema.get("maxItems")
    if isinstance(maximum, int):
        wanted = min(wanted, maximum)
    while len(values) < wanted:
        if items is False:
            break
        try:
            values.append(_value(items, root, full, depth + 1))
        except _NoSample:
            if len(values) >= schema.get("minItems", 0):
                break
            raise
    if schema.get("uniqueItems") is True and len(values) > 1:
        raise _NoSample
    return values


def _object(schema: dict[str, Any], root: Schema, full: bool, depth: int) -> dict[str, Any]:
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(properties, Mapping) or not isinstance(required, list):
        raise _NoSample
    value: dict[str, Any] = {}
    for name, sub in properties.items():
        if name in required:
            value[name] = _value(sub, root, full, depth + 1)
        elif full:
            try:
                value[name] = _value(sub, root, full, depth + 1)
            except _NoSample:
                continue
    if any(name not in value for name in required):
        raise _NoSample
    return value
