"""Reading JSON Schema documents: `$ref`s, alternatives, content models, and sentences."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tidings.compat._kinds import InvalidSchemaError, Kind

Schema = dict[str, Any] | bool

# Keywords that never change what is valid. `x-*` extensions (tidings' `x-tidings-version`
# among them) are ignored altogether; `$defs` are only reached through `$ref`.
NAMED_ANNOTATIONS = {
    "title": Kind.TITLE_CHANGED,
    "description": Kind.DESCRIPTION_CHANGED,
    "default": Kind.DEFAULT_CHANGED,
}
OTHER_ANNOTATIONS = frozenset(
    {"examples", "$comment", "deprecated", "readOnly", "writeOnly", "discriminator", "$id"}
)
IGNORED = frozenset({"$schema", "$defs", "definitions", "$anchor", "$dynamicAnchor"})
# Validation keywords the differ compares one by one; every other one is compared as a whole
# (KEYWORD_ADDED / KEYWORD_REMOVED / KEYWORD_CHANGED).
MODELLED = frozenset(
    {
        "$ref", "type", "enum", "const", "anyOf", "oneOf",
        "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "properties", "required", "additionalProperties", "minProperties", "maxProperties",
        "items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems",
    }
)  # fmt: skip

OPEN, CLOSED, PARTIAL = "open", "closed", "partially open"
MAX_NESTED_UNIONS = 32


@dataclass(frozen=True)
class Alternative:
    """One branch of a schema that accepts several shapes (`anyOf`, `oneOf`, a `type` list)."""

    schema: dict[str, Any]
    suffix: str  # its path below the schema that holds it ("/anyOf/1", or "")
    combined: bool  # from `anyOf`/`oneOf` (else from a `type` list, or the schema itself)
    name: str | None  # the `$ref` it came from, for sentences


ABSENT = object()


def as_root(schema: Any, which: str) -> Schema:
    if isinstance(schema, bool):
        return schema
    if isinstance(schema, Mapping):
        return dict(schema)
    raise InvalidSchemaError(
        f"the {which} schema must be a JSON Schema object or boolean, got "
        f"{schema.__class__.__name__}"
    )


def resolve(schema: Any, root: Schema, path: str) -> tuple[Schema, str | None]:
    """`schema` with its `$ref` (and a single-schema `allOf`, pydantic v1's way of adding
    keywords beside a `$ref`) replaced by what it refers to; its own other keywords win."""
    name = None
    seen: set[str] = set()
    while True:
        if isinstance(schema, bool):
            return schema, name
        if not isinstance(schema, Mapping):
            raise InvalidSchemaError(f"{path}: a schema must be an object or a boolean")
        if isinstance(schema.get("$ref"), str):
            ref = schema["$ref"]
            if ref in seen:
                raise InvalidSchemaError(f"{path}: $ref {ref} refers to itself")
            seen.add(ref)
            target = pointer(root, ref, path)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            if isinstance(target, bool):
                schema = target if target is False or not siblings else siblings
            else:
                schema = {**target, **siblings}
            name = ref.rpartition("/")[2] or "(root)"
        elif isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
            inner, inner_name = resolve(schema["allOf"][0], root, path)
            siblings = {k: v for k, v in schema.items() if k != "allOf"}
            if isinstance(inner, bool):
                return (inner if inner is False or not siblings else siblings), inner_name
            return {**inner, **siblings}, inner_name or name
        else:
            return dict(schema), name


def pointer(root: Schema, ref: str, path: str) -> Any:
    if not ref.startswith("#"):
        raise InvalidSchemaError(
            f"{path}: cannot resolve $ref {ref!r}: only references inside the schema (#/...) "
            "are followed"
        )
    node: Any = root
    fragment = urllib.parse.unquote(ref[1:])
    for part in fragment.split("/")[1:] if fragment else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidSchemaError(f"{path}: cannot resolve $ref {ref!r}")
    return node


def alternatives(
    schema: dict[str, Any], name: str | None, root: Schema, path: str, depth: int = 0
) -> list[Alternative]:
    """The shapes a schema accepts: the branches of `anyOf`/`oneOf` (flattened, each with the
    keywords beside the combinator), one per name of a `type` list, or the schema itself."""
    if depth > MAX_NESTED_UNIONS:
        raise InvalidSchemaError(f"{path}: anyOf/oneOf nested too deeply")
    combinator = "anyOf" if isinstance(schema.get("anyOf"), list) else "oneOf"
    branches = schema.get(combinator)
    shared = {k: v for k, v in schema.items() if not is_annotation(k) and k != combinator}
    if isinstance(branches, list):
        found: list[Alternative] = []
        for index, branch in enumerate(branches):
            resolved, branch_name = resolve(branch, root, path)
            if resolved is False:
                continue
            merged = {**shared, **(resolved if isinstance(resolved, dict) else {})}
            for inner in alternatives(merged, branch_name, root, path, depth + 1):
                found.append(
                    Alternative(
                        inner.schema, f"/{combinator}/{index}{inner.suffix}", True, inner.name
                    )
                )
        return found
    types = schema.get("type")
    if isinstance(types, list) and len(types) > 1:
        return [Alternative({**shared, "type": one}, "", False, name) for one in types]
    if isinstance(types, list):
        shared = {**shared, "type": types[0]} if types else {**shared, "type": None}
    return [Alternative(shared, "", False, name)]


def accepts_anything(schema: Schema) -> bool:
    if isinstance(schema, bool):
        return schema
    return all(is_annotation(key) for key in schema)


def is_annotation(key: str) -> bool:
    return (
        key in NAMED_ANNOTATIONS
        or key in OTHER_ANNOTATIONS
        or key in IGNORED
        or key.startswith("x-")
    )


def openness(schema: Schema) -> str:
    if schema is False:
        return CLOSED
    return OPEN if accepts_anything(schema) else PARTIAL


def content_model(schema: dict[str, Any], name: str, root: Schema, where: str) -> tuple[str, Any]:
    """Whether an object schema's data may hold `name` when it does not declare it, and the
    schema that then applies: (OPEN, None), (CLOSED, None) or (PARTIAL, that schema)."""
    patterns = schema.get("patternProperties")
    if isinstance(patterns, Mapping):
        for pattern, sub in patterns.items():
            if matches_pattern(pattern, name):
                return PARTIAL, sub
    rest = schema.get("additionalProperties", True)
    resolved, _ = resolve(rest, root, where)
    model = openness(resolved)
    return model, rest if model == PARTIAL else None


def matches_pattern(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def declared_properties(schema: dict[str, Any], path: str) -> dict[str, Any]:
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        raise InvalidSchemaError(f"{path}/properties must be an object")
    return dict(props)


def required_names(schema: dict[str, Any], path: str) -> set[str]:
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
        raise InvalidSchemaError(f"{path}/required must be a list of property names")
    return set(required)


def has_default(schema: Any, root: Schema, path: str) -> bool:
    if schema is None:
        return False
    resolved, _ = resolve(schema, root, path)
    return isinstance(resolved, dict) and "default" in resolved


def array_parts(schema: dict[str, Any], path: str) -> tuple[list[Any], Any]:
    """Positional item schemas and the schema of the items after them (draft 2020-12's
    `prefixItems` + `items`, or the older `items` list + `additionalItems`)."""
    items = schema.get("items", True)
    if isinstance(items, list):
        return items, schema.get("additionalItems", True)
    prefix = schema.get("prefixItems", [])
    if not isinstance(prefix, list):
        raise InvalidSchemaError(f"{path}/prefixItems must be a list of schemas")
    return prefix, items


def allowed_values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    values = schema.get("enum")
    return list(values) if isinstance(values, list) else None


def family_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    return "number" if kind == "integer" else kind


def canon(value: Any) -> str:
    """A JSON text equal for equal JSON values (1 == 1.0, key order ignored)."""
    if value is ABSENT:
        return "<absent>"
    return json.dumps(normalise(value), sort_keys=True, default=repr)


def normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def as_decimal(value: Any) -> Decimal | None:
    if not is_number(value):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:  # pragma: no cover - finite numbers always convert
        return None


def escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def as_json(value: Any) -> str:
    return json.dumps(value, default=repr)


def show(schema: dict[str, Any], key: str) -> str:
    return as_json(schema[key]) if key in schema else "absent"


def show_values(values: list[Any]) -> str:
    return ", ".join(as_json(v) for v in values)


def type_phrase(kind: Any) -> str:
    return "accepts any type" if kind is None else f"has type {kind}"


def describe(schema: Schema, name: str | None = None) -> str:
    if schema is True:
        return "any value"
    if schema is False:
        return "no value"
    if isinstance(schema.get("$ref"), str):
        return str(schema["$ref"]).rpartition("/")[2]
    for combinator in ("anyOf", "oneOf"):
        if isinstance(schema.get(combinator), list):
            return " or ".join(describe(branch) for branch in schema[combinator])
    values = allowed_values(schema)
    if values is not None and len(values) == 1:
        return f"the value {as_json(values[0])}"
    if values is not None:
        return f"one of {show_values(values)}"
    kind = schema.get("type")
    if name:
        return f"{name} ({kind})" if isinstance(kind, str) else name
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    return str(kind) if kind is not None else "any value"


def describe_all(alternatives: list[Alternative]) -> str:
    return " or ".join(describe(a.schema, a.name) for a in alternatives)


def rest_text(schema: Schema) -> str:
    model = openness(schema)
    return {OPEN: "accepts any", CLOSED: "rejects", PARTIAL: "constrains"}[model]
