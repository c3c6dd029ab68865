"""JSON Schema 2020-12 (pydantic's) as AsyncAPI Schema Objects (draft-07 based), placed in an
AsyncAPI document's `components/schemas` (see `tidings.asyncapi`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

NAME_CHARS = re.compile(r"[^\w.\-]")
_DEFS_REF = re.compile(r'"\$ref": "#/\$defs/((?:[^"/\\]|\\.)*)')


def ref(*path: str) -> dict[str, str]:
    """A `$ref` to `#/path...` (each part escaped as a JSON pointer token)."""
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


_SCHEMA_MAPS = {"dependentSchemas": "dependencies", "$defs": "definitions"}
_SCHEMA_MAPS |= {name: name for name in ("properties", "patternProperties", "definitions")}
_SCHEMA_VALUES = {"additionalProperties", "additionalItems", "items", "contains", "propertyNames"}
_SCHEMA_VALUES |= {"not", "if", "then", "else"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_DROPPED = {"$schema", "$id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$comment"}
_DROPPED |= {"unevaluatedProperties", "unevaluatedItems", "minContains", "maxContains"}


class Schemas:
    """The data schemas and their definitions, placed in `components/schemas`."""

    def __init__(self, reserved: Iterable[str]) -> None:
        self.components: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}
        self._reserved = set(reserved)

    def add(self, data_schema: Mapping[str, Any], owner: str) -> dict[str, str]:
        """Place a data schema (named `owner`) and its definitions (a definition already
        placed with the same content is shared); a reference to the data schema."""
        schema = dict(data_schema)
        defs: dict[str, Any] = schema.pop("$defs", None) or {}
        names: dict[str, str] = {}
        for name in defs:
            fingerprint = _fingerprint(name, defs)
            base = NAME_CHARS.sub("_", name) or "schema"
            candidate, n = base, 1
            while (
                candidate in self._reserved or candidate in self._fingerprints
            ) and self._fingerprints.get(candidate) != fingerprint:
                n += 1
                candidate = f"{owner}.{base}" if n == 2 else f"{owner}.{base}_{n}"
            names[name] = candidate
            self._fingerprints[candidate] = fingerprint
        for name, definition in defs.items():
            self.components.setdefault(names[name], draft07(definition, names, owner))
        self.components[owner] = draft07(schema, names, owner)
        return ref("components", "schemas", owner)


def _fingerprint(name: str, defs: dict[str, Any]) -> str:
    """The definition `name` and every definition it reaches, as canonical JSON."""
    seen: dict[str, Any] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen and current in defs:
            seen[current] = defs[current]
            todo.extend(_local_refs(defs[current]))
    return json.dumps(seen, sort_keys=True)


def _local_refs(value: Any) -> Iterable[str]:
    for ref in _DEFS_REF.findall(json.dumps(value)):
        yield _unescape(json.loads(f'"{ref}"'))


def _unescape(token: str) -> str:
    return unquote(token).replace("~1", "/").replace("~0", "~")


def _rewrite_ref(pointer: str, names: dict[str, str], owner: str) -> str:
    """A `$ref` of a data schema as a reference inside the AsyncAPI document."""
    if pointer.startswith("#/$defs/"):
        name, _, rest = pointer.removeprefix("#/$defs/").partition("/")
        target = names.get(_unescape(name), _unescape(name))
        return ref("components", "schemas", target)["$ref"] + (f"/{rest}" if rest else "")
    if pointer.startswith("#"):  # a pointer into the data schema itself
        return ref("components", "schemas", owner)["$ref"] + pointer[1:].rstrip("/")
    return pointer


def draft07(schema: Any, names: dict[str, str], owner: str) -> Any:
    """`schema` (JSON Schema 2020-12) as an AsyncAPI Schema Object (draft-07 based)."""
    if isinstance(schema, list):
        return [draft07(item, names, owner) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED:
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = _rewrite_ref(value, names, owner)
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            converted = {k: draft07(v, names, owner) for k, v in value.items()}
            out.setdefault(_SCHEMA_MAPS[key], {}).update(converted)
        elif key in _SCHEMA_VALUES:
            out[key] = draft07(value, names, owner)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [draft07(item, names, owner) for item in value]
        elif key == "dependentRequired" and isinstance(value, dict):
            out.setdefault("dependencies", {}).update(value)
        elif key == "discriminator" and isinstance(value, dict):
            mapping = value.get("mapping")
            if isinstance(mapping, dict):
                rewritten = {k: _rewrite_ref(str(v), names, owner) for k, v in mapping.items()}
                value = {**value, "mapping": rewritten}
            out["x-discriminator"] = value
        else:
            out[key] = value
    if "prefixItems" in out:
        prefix = out.pop("prefixItems")
        if "items" in out:
            out["additionalItems"] = out.pop("items")
        out["items"] = prefix
    if "$ref" in out and len(out) > 1:
        out["allOf"] = [{"$ref": out.pop("$ref")}, *out.get("allOf", [])]
    return out
