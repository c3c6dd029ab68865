"""`differences(old, new)`: every change between two JSON Schemas, writer's to reader's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidings.compat._kinds import Difference, Kind
from tidings.compat._schemas import (
    ABSENT,
    IGNORED,
    MODELLED,
    NAMED_ANNOTATIONS,
    OTHER_ANNOTATIONS,
    Alternative,
    Schema,
    accepts_anything,
    allowed_values,
    alternatives,
    as_decimal,
    as_json,
    as_root,
    canon,
    describe,
    describe_all,
    family_of,
    is_annotation,
    is_number,
    resolve,
    show,
    show_values,
    type_phrase,
)
from tidings.compat._structures import ObjectsAndArrays

__all__ = ["diff_labelled", "differences", "version_of"]


def differences(old: Mapping[str, Any] | bool, new: Mapping[str, Any] | bool) -> list[Difference]:
    """Every difference between `old` and `new`, found as if `new` were the schema of a
    consumer reading data written with `old` (so `Difference.compatible` is the BACKWARD
    verdict), in schema order, each (kind, path) once. Identical schemas have none.

    Raises InvalidSchemaError for what is not a readable JSON Schema.
    """
    old_version, new_version = version_of(old), version_of(new)
    if old_version is not None and new_version is not None and old_version != new_version:
        labels = (f"v{old_version}", f"v{new_version}")
    else:
        labels = ("the old schema", "the new schema")
    return diff_labelled(old, new, *labels)


def version_of(schema: Mapping[str, Any] | bool) -> int | None:
    """The `x-tidings-version` that `tidings.schema.json_schema()` writes, if any."""
    if isinstance(schema, Mapping):
        version = schema.get("x-tidings-version")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None


def diff_labelled(
    writer: Mapping[str, Any] | bool,
    reader: Mapping[str, Any] | bool,
    writer_label: str,
    reader_label: str,
) -> list[Difference]:
    """`differences()` with the names the sentences give the two schemas."""
    old, new = as_root(writer, "old"), as_root(reader, "new")
    differ = _Differ(old, new, writer_label, reader_label, set())
    differ.compare(old, new, "#")
    seen: set[tuple[Kind, str]] = set()
    unique = []
    for difference in differ.found:
        if (difference.kind, difference.path) not in seen:
            seen.add((difference.kind, difference.path))
            unique.append(difference)
    return unique


_BOUNDS = (
    # keyword, kinds (added, removed, increased, decreased)
    ("maxLength", (Kind.MAX_LENGTH_ADDED, Kind.MAX_LENGTH_REMOVED, Kind.MAX_LENGTH_INCREASED,
                   Kind.MAX_LENGTH_DECREASED)),
    ("minLength", (Kind.MIN_LENGTH_ADDED, Kind.MIN_LENGTH_REMOVED, Kind.MIN_LENGTH_INCREASED,
                   Kind.MIN_LENGTH_DECREASED)),
    ("maximum", (Kind.MAXIMUM_ADDED, Kind.MAXIMUM_REMOVED, Kind.MAXIMUM_INCREASED,
                 Kind.MAXIMUM_DECREASED)),
    ("minimum", (Kind.MINIMUM_ADDED, Kind.MINIMUM_REMOVED, Kind.MINIMUM_INCREASED,
                 Kind.MINIMUM_DECREASED)),
    ("exclusiveMaximum", (Kind.EXCLUSIVE_MAXIMUM_ADDED, Kind.EXCLUSIVE_MAXIMUM_REMOVED,
                          Kind.EXCLUSIVE_MAXIMUM_INCREASED, Kind.EXCLUSIVE_MAXIMUM_DECREASED)),
    ("exclusiveMinimum", (Kind.EXCLUSIVE_MINIMUM_ADDED, Kind.EXCLUSIVE_MINIMUM_REMOVED,
                          Kind.EXCLUSIVE_MINIMUM_INCREASED, Kind.EXCLUSIVE_MINIMUM_DECREASED)),
    ("maxProperties", (Kind.MAX_PROPERTIES_ADDED, Kind.MAX_PROPERTIES_REMOVED,
                       Kind.MAX_PROPERTIES_INCREASED, Kind.MAX_PROPERTIES_DECREASED)),
    ("minProperties", (Kind.MIN_PROPERTIES_ADDED, Kind.MIN_PROPERTIES_REMOVED,
                       Kind.MIN_PROPERTIES_INCREASED, Kind.MIN_PROPERTIES_DECREASED)),
    ("maxItems", (Kind.MAX_ITEMS_ADDED, Kind.MAX_ITEMS_REMOVED, Kind.MAX_ITEMS_INCREASED,
                  Kind.MAX_ITEMS_DECREASED)),
    ("minItems", (Kind.MIN_ITEMS_ADDED, Kind.MIN_ITEMS_REMOVED, Kind.MIN_ITEMS_INCREASED,
                  Kind.MIN_ITEMS_DECREASED)),
)  # fmt: skip
_TRIPLES = {
    # keyword: kinds (added, removed, changed)
    "pattern": (Kind.PATTERN_ADDED, Kind.PATTERN_REMOVED, Kind.PATTERN_CHANGED),
    "format": (Kind.FORMAT_ADDED, Kind.FORMAT_REMOVED, Kind.FORMAT_CHANGED),
}


class _Differ(ObjectsAndArrays):
    def __init__(
        self,
        old: Schema,
        new: Schema,
        old_label: str,
        new_label: str,
        active: set[tuple[object, object]],
    ) -> None:
        self.old_root, self.new_root = old, new
        self.old, self.new = old_label, new_label
        # The pairs of schemas being compared, by `$ref` (else identity): breaks cycles.
        self.active = active
        self.found: list[Difference] = []

    def child(self) -> _Differ:
        return _Differ(self.old_root, self.new_root, self.old, self.new, self.active)

    # -- schemas ---------------------------------------------------------------------------

    def compare(self, old_raw: Any, new_raw: Any, path: str) -> None:
        key = (_identity(old_raw), _identity(new_raw))
        if key in self.active:  # a recursive model met again: compared further up already
            return
        self.active.add(key)
        try:
            self._compare(old_raw, new_raw, path)
        finally:
            self.active.discard(key)

    def _compare(self, old_raw: Any, new_raw: Any, path: str) -> None:
        old, old_name = resolve(old_raw, self.old_root, path)
        new, new_name = resolve(new_raw, self.new_root, path)
        if isinstance(old, dict) and isinstance(new, dict):
            self._annotations(old, new, path)
        if old is False:
            if new is not False:
                self.add(
                    Kind.TYPE_EXTENDED,
                    path,
                    f"{self.new} accepts {describe(new, new_name)} where {self.old} "
                    "accepts no value",
                )
            return
        if new is False:
            self.add(
                Kind.TYPE_NARROWED,
                path,
                f"{self.new} accepts no value where {self.old} accepts {describe(old, old_name)}",
            )
            return
        if accepts_anything(new):
            if not accepts_anything(old):
                self.add(
                    Kind.TYPE_EXTENDED,
                    path,
                    f"{self.new} accepts any value where {self.old} accepts only "
                    f"{describe(old, old_name)}",
                )
            return
        if accepts_anything(old):
            self.add(
                Kind.TYPE_NARROWED,
                path,
                f"{self.new} accepts only {describe(new, new_name)} where {self.old} "
                "accepts any value",
            )
            return
        assert isinstance(old, dict) and isinstance(new, dict)
        self._combinators(old, new, path)
        olds = alternatives(old, old_name, self.old_root, path)
        news = alternatives(new, new_name, self.new_root, path)
        if len(olds) == 1 and len(news) == 1:
            self._compare_one(olds[0].schema, news[0].schema, path + olds[0].suffix)
        else:
            self._match(olds, news, path)

    def _annotations(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        for key in sorted(set(old) | set(new), key=lambda k: (k not in old, k)):
            if key in IGNORED or key.startswith("x-"):
                continue
            kind = NAMED_ANNOTATIONS.get(key)
            if kind is None and key not in OTHER_ANNOTATIONS:
                continue
            if canon(old.get(key, ABSENT)) != canon(new.get(key, ABSENT)):
                self.add(
                    kind or Kind.ANNOTATION_CHANGED,
                    f"{path}/{key}",
                    f"{key} is {show(new, key)} in {self.new}, {show(old, key)} in {self.old}",
                )

    def _combinators(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        if "anyOf" in old and "oneOf" in new:
            self.add(
                Kind.COMBINED_TYPE_CHANGED,
                path,
                f"{self.new} requires exactly one alternative to match (oneOf) where "
                f"{self.old} requires any (anyOf)",
            )
        elif "oneOf" in old and "anyOf" in new:
            self.add(
                Kind.COMBINED_TYPE_EXTENDED,
                path,
                f"{self.new} requires any alternative to match (anyOf) where {self.old} "
                "requires exactly one (oneOf)",
            )

    def _match(self, olds: list[Alternative], news: list[Alternative], path: str) -> None:
        """Each of the writer's alternatives must be accepted by one of the reader's."""
        used: set[int] = set()
        for old in olds:
            tried = []
            for index, new in enumerate(news):
                sub = self.child()
                sub._compare_one(old.schema, new.schema, path + (old.suffix or new.suffix))
                broken = sum(not found.compatible for found in sub.found)
                tried.append((broken, len(sub.found), index, sub.found))
            fits = [attempt for attempt in tried if attempt[0] == 0]
            if not fits:  # closest alternative of the same kind of value, if any: say why
                family = family_of(old.schema)
                fits = [t for t in tried if family_of(news[t[2]].schema) in (family, None)]
            if fits:
                _, _, index, found = min(fits, key=lambda attempt: attempt[:3])
                used.add(index)
                self.found.extend(found)
                continue
            where = path + old.suffix
            what = describe(old.schema, old.name)
            if old.combined:
                self.add(
                    Kind.SUM_TYPE_NARROWED,
                    where,
                    f"{self.new} accepts no alternative matching {what}, which {self.old} accepts",
                )
            elif len(olds) == 1:
                self.add(
                    Kind.TYPE_CHANGED,
                    where,
                    f"{self.new} accepts {describe_all(news)} where {self.old} accepts {what}",
                )
            else:
                self.add(
                    Kind.TYPE_NARROWED,
                    where,
                    f"{self.new} does not accept {what}, which {self.old} accepts",
                )
        for index, new in enumerate(news):
            if index not in used:
                kind = Kind.SUM_TYPE_EXTENDED if new.combined else Kind.TYPE_EXTENDED
                self.add(
                    kind,
                    path + new.suffix,
                    f"{self.new} also accepts {describe(new.schema, new.name)}, which "
                    f"{self.old} has no alternative for",
                )

    def _compare_one(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        """Two schemas of one alternative each (`type` a single name or absent)."""
        old_type, new_type = old.get("type"), new.get("type")
        if old_type != new_type:
            said = f"{self.new} {type_phrase(new_type)} where {self.old} {type_phrase(old_type)}"
            if new_type is None or (old_type, new_type) == ("integer", "number"):
                self.add(Kind.TYPE_EXTENDED, path, said)
            elif old_type is None or (old_type, new_type) == ("number", "integer"):
                self.add(Kind.TYPE_NARROWED, path, said)
            else:
                self.add(Kind.TYPE_CHANGED, path, said)
                return
        self._allowed_values(old, new, path)
        for key, bound_kinds in _BOUNDS:
            self._bound(old, new, key, bound_kinds, path)
        for key, triple_kinds in _TRIPLES.items():
            self._triple(old, new, key, triple_kinds, path)
        self._multiple_of(old, new, path)
        self._unique_items(old, new, path)
        self._object(old, new, path)
        self._array(old, new, path)
        for key in sorted((set(old) | set(new)) - MODELLED, key=lambda k: (k not in old, k)):
            if is_annotation(key):
                continue
            before, after = canon(old.get(key, ABSENT)), canon(new.get(key, ABSENT))
            if before == after:
                continue
            where = f"{path}/{key}"
            if key not in new:
                self.add(
                    Kind.KEYWORD_REMOVED, where, f"{self.new} has no {key}, which {self.old} has"
                )
            elif key not in old:
                self.add(
                    Kind.KEYWORD_ADDED,
                    where,
                    f"{self.new} has {key}, which {self.old} does not have (tidings "
                    "cannot tell whether that rejects its data)",
                )
            else:
                self.add(
                    Kind.KEYWORD_CHANGED,
                    where,
                    f"{key} differs between {self.new} and {self.old} (tidings cannot "
                    "tell whether that rejects data)",
                )

    # -- values ----------------------------------------------------------------------------

    def _allowed_values(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        before, after = allowed_values(old), allowed_values(new)
        if before is None and after is None:
            return
        keyword = "const" if "const" in new or ("const" in old and "enum" not in new) else "enum"
        where = f"{path}/{keyword}"
        if before is None:
            assert after is not None
            self.add(
                Kind.ENUM_ADDED,
                where,
                f"{self.new} accepts only {show_values(after)}, {self.old} any such value",
            )
            return
        if after is None:
            self.add(
                Kind.ENUM_REMOVED,
                where,
                f"{self.new} accepts any such value, {self.old} only {show_values(before)}",
            )
            return
        old_keys, new_keys = {canon(v) for v in before}, {canon(v) for v in after}
        if old_keys == new_keys:
            return
        gained = [v for v in after if canon(v) not in old_keys]
        lost = [v for v in before if canon(v) not in new_keys]
        if not lost:
            self.add(
                Kind.ENUM_ARRAY_EXTENDED,
                where,
                f"{self.new} accepts {show_values(gained)}, which {self.old} does not",
            )
        elif not gained:
            self.add(
                Kind.ENUM_ARRAY_NARROWED,
                where,
                f"{self.new} does not accept {show_values(lost)}, which {self.old} accepts",
            )
        else:
            self.add(
                Kind.ENUM_ARRAY_CHANGED,
                where,
                f"{self.new} accepts {show_values(after)} where {self.old} accepts "
                f"{show_values(before)}",
            )

    def _bound(
        self,
        old: dict[str, Any],
        new: dict[str, Any],
        key: str,
        kinds: tuple[Kind, ...],
        path: str,
    ) -> None:
        added, removed, increased, decreased = kinds
        before, after = old.get(key), new.get(key)
        if canon(before) == canon(after):
            return
        where = f"{path}/{key}"
        if not all(v is None or is_number(v) for v in (before, after)):
            self.add(
                Kind.KEYWORD_CHANGED, where, f"{key} differs between {self.new} and {self.old}"
            )
        elif before is None:
            self.add(added, where, f"{key} is {after} in {self.new}, absent from {self.old}")
        elif after is None:
            self.add(removed, where, f"{key} is absent from {self.new}, {before} in {self.old}")
        elif after > before:
            self.add(
                increased,
                where,
                f"{key} is {after} in {self.new}, higher than {before} in {self.old}",
            )
        else:
            self.add(
                decreased,
                where,
                f"{key} is {after} in {self.new}, lower than {before} in {self.old}",
            )

    def _triple(
        self,
        old: dict[str, Any],
        new: dict[str, Any],
        key: str,
        kinds: tuple[Kind, ...],
        path: str,
    ) -> None:
        added, removed, changed = kinds
        before, after = old.get(key), new.get(key)
        if before == after:
            return
        where = f"{path}/{key}"
        if before is None:
            self.add(added, where, f"{key} is {after!r} in {self.new}, absent from {self.old}")
        elif after is None:
            self.add(removed, where, f"{key} is absent from {self.new}, {before!r} in {self.old}")
        else:
            self.add(changed, where, f"{key} is {after!r} in {self.new}, {before!r} in {self.old}")

    def _multiple_of(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        before, after = as_decimal(old.get("multipleOf")), as_decimal(new.get("multipleOf"))
        if before == after:
            return
        where = f"{path}/multipleOf"
        said = (
            f"multipleOf is {as_json(new.get('multipleOf'))} in {self.new}, "
            f"{as_json(old.get('multipleOf'))} in {self.old}"
        )
        if before is None:
            self.add(Kind.MULTIPLE_OF_ADDED, where, said)
        elif after is None:
            self.add(Kind.MULTIPLE_OF_REMOVED, where, said)
        elif before and after % before == 0:
            self.add(Kind.MULTIPLE_OF_EXPANDED, where, said)
        elif after and before % after == 0:
            self.add(Kind.MULTIPLE_OF_REDUCED, where, said)
        else:
            self.add(Kind.MULTIPLE_OF_CHANGED, where, said)

    def _unique_items(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        before, after = old.get("uniqueItems") is True, new.get("uniqueItems") is True
        if after and not before:
            self.add(
                Kind.UNIQUE_ITEMS_ADDED,
                f"{path}/uniqueItems",
                f"{self.new} requires unique items, {self.old} does not",
            )
        elif before and not after:
            self.add(
                Kind.UNIQUE_ITEMS_REMOVED,
                f"{path}/uniqueItems",
                f"{self.new} accepts repeated items, {self.old} does not",
            )

    # -- objects ---------------------------------------------------------------------------


def _identity(schema: Any) -> object:
    """What makes two visits of a schema the same: the definition a `$ref` names, else the
    node itself."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        return schema["$ref"]
    return id(schema)
