"""The differ's comparisons of objects (properties, content models) and arrays (items)."""

from __future__ import annotations

from typing import Any

from tidings.compat._kinds import Difference, Kind
from tidings.compat._schemas import (
    CLOSED,
    OPEN,
    PARTIAL,
    Schema,
    accepts_anything,
    array_parts,
    content_model,
    declared_properties,
    escape,
    has_default,
    openness,
    required_names,
    resolve,
    rest_text,
)


class ObjectsAndArrays:
    """Half of the differ: what is specific to objects and arrays. `compare` walks into
    sub-schemas; `add` records a difference; sentences name the writer's schema `old` and the
    reader's `new`."""

    old_root: Schema
    new_root: Schema
    old: str
    new: str
    found: list[Difference]

    def compare(self, old_raw: Any, new_raw: Any, path: str) -> None:
        raise NotImplementedError

    def child(self) -> ObjectsAndArrays:
        raise NotImplementedError

    def add(self, kind: Kind, path: str, message: str) -> None:
        self.found.append(Difference(kind, path, message))

    def _object(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_props, new_props = declared_properties(old, path), declared_properties(new, path)
        old_required, new_required = required_names(old, path), required_names(new, path)
        names = [*old_props, *(name for name in new_props if name not in old_props)]
        names += sorted((old_required | new_required) - set(names))
        for name in names:
            where = f"{path}/properties/{escape(name)}"
            if name in old_props and name in new_props:
                self._required(name, old_required, new_required, new_props[name], where)
                self.compare(old_props[name], new_props[name], where)
            elif name in old_props:
                self._property_removed(name, old_props[name], new, where)
            elif name in new_props:
                self._property_added(name, new_props[name], old, new_required, where)
            else:
                self._required(name, old_required, new_required, None, where)
        self._rest(
            old.get("additionalProperties", True),
            new.get("additionalProperties", True),
            f"{path}/additionalProperties",
            "properties",
        )

    def _required(
        self, name: str, old_required: set[str], new_required: set[str], schema: Any, where: str
    ) -> None:
        if name in old_required and name not in new_required:
            self.add(
                Kind.REQUIRED_ATTRIBUTE_REMOVED,
                where,
                f"{name} is optional in {self.new}, required in {self.old}",
            )
        elif name in new_required and name not in old_required:
            if has_default(schema, self.new_root, where):
                self.add(
                    Kind.REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED,
                    where,
                    f"{name} is required with a default in {self.new}, optional in {self.old}",
                )
            else:
                self.add(
                    Kind.REQUIRED_ATTRIBUTE_ADDED,
                    where,
                    f"{name} is required without a default in {self.new}, optional in "
                    f"{self.old}: {self.old} data may lack it",
                )

    def _property_removed(self, name: str, schema: Any, reader: dict[str, Any], where: str) -> None:
        model, rest = content_model(reader, name, self.new_root, where)
        if model == OPEN:
            self.add(
                Kind.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
                where,
                f"{name} of {self.old} is not declared in {self.new}, whose open model ignores it",
            )
        elif model == PARTIAL:
            self._covered(schema, rest, where, reader_side=True, name=name)
        elif schema is False:
            self.add(
                Kind.PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                where,
                f"{name}, forbidden in {self.old}, is not declared in {self.new}",
            )
        else:
            self.add(
                Kind.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                where,
                f"{name} of {self.old} is not declared in {self.new}, whose closed model "
                "(additionalProperties: false) rejects data that has it",
            )

    def _property_added(
        self, name: str, schema: Any, writer: dict[str, Any], new_required: set[str], where: str
    ) -> None:
        model, rest = content_model(writer, name, self.old_root, where)
        required = name in new_required
        default = required and has_default(schema, self.new_root, where)
        if model == OPEN:
            resolved, _ = resolve(schema, self.new_root, where)
            if accepts_anything(resolved) and not required:
                kind = Kind.PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL
                said = "accepts any value"
            elif required and not default:
                kind = Kind.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL
                said = "is required without a default"
            elif required:
                kind = Kind.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL
                said = "is required with a default"
            else:
                kind = Kind.OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL
                said = "is optional"
            self.add(
                kind,
                where,
                f"{name} {said} in {self.new} and not declared in {self.old} (an open model)",
            )
            return
        if model == PARTIAL:
            self._covered(rest, schema, where, reader_side=False, name=name)
        closed = "closed" if model == CLOSED else "partially open"
        if required and not default:
            self.add(
                Kind.REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
                where,
                f"{name} is required without a default in {self.new} and not declared in "
                f"{self.old} (a {closed} model): {self.old} data lacks it",
            )
        elif required:
            self.add(
                Kind.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL,
                where,
                f"{name} is required with a default in {self.new} and not declared in "
                f"{self.old} (a {closed} model)",
            )
        else:
            self.add(
                Kind.OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
                where,
                f"{name} is optional in {self.new} and not declared in {self.old} (a "
                f"{closed} model)",
            )

    def _covered(
        self, old: Any, new: Any, where: str, *, reader_side: bool, name: str, item: bool = False
    ) -> None:
        """A property (or item) declared on one side only, where the other side's schema for
        undeclared ones (`additionalProperties`, `patternProperties`, `items`) applies."""
        sub = self.child()
        sub.compare(old, new, where)
        self.found.extend(sub.found)
        ok = all(found.compatible for found in sub.found)
        if reader_side:
            kind = (
                (
                    Kind.ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                    if ok
                    else Kind.ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                )
                if item
                else (
                    Kind.PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                    if ok
                    else Kind.PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                )
            )
            said = (
                f"{name} of {self.old} is not declared in {self.new}, whose schema for "
                f"undeclared ones {'accepts' if ok else 'does not accept'} it"
            )
        else:
            kind = (
                (
                    Kind.ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                    if ok
                    else Kind.ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                )
                if item
                else (
                    Kind.PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                    if ok
                    else Kind.PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL
                )
            )
            said = (
                f"{name} of {self.new} is not declared in {self.old}, whose schema for "
                f"undeclared ones {'fits' if ok else 'does not fit'} it"
            )
        self.add(kind, where, said)

    def _rest(self, old_raw: Any, new_raw: Any, where: str, what: str) -> None:
        """`additionalProperties`, or `items` after `prefixItems`: open, closed or a schema."""
        old, _ = resolve(old_raw, self.old_root, where)
        new, _ = resolve(new_raw, self.new_root, where)
        before, after = openness(old), openness(new)
        props = what == "properties"
        if before == after == PARTIAL:
            self.compare(old_raw, new_raw, where)
            return
        if before == after:
            return
        kind = {
            (CLOSED, OPEN): Kind.ADDITIONAL_PROPERTIES_ADDED,
            (CLOSED, PARTIAL): Kind.ADDITIONAL_PROPERTIES_ADDED,
            (PARTIAL, OPEN): Kind.ADDITIONAL_PROPERTIES_EXTENDED,
            (OPEN, PARTIAL): Kind.ADDITIONAL_PROPERTIES_NARROWED,
            (OPEN, CLOSED): Kind.ADDITIONAL_PROPERTIES_REMOVED,
            (PARTIAL, CLOSED): Kind.ADDITIONAL_PROPERTIES_REMOVED,
        }[before, after]
        if not props:
            kind = Kind[kind.name.replace("PROPERTIES", "ITEMS")]
        noun = "undeclared properties" if props else "items beyond the positional ones"
        self.add(
            kind,
            where,
            f"{self.new} has a {after} model ({rest_text(new)} {noun}) where {self.old} "
            f"has a {before} one ({rest_text(old)})",
        )

    # -- arrays ----------------------------------------------------------------------------

    def _array(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_prefix, old_rest = array_parts(old, path)
        new_prefix, new_rest = array_parts(new, path)
        if not old_prefix and not new_prefix:
            if "items" in old or "items" in new:
                self.compare(old_rest, new_rest, f"{path}/items")
            return
        for index in range(min(len(old_prefix), len(new_prefix))):
            self.compare(old_prefix[index], new_prefix[index], f"{path}/prefixItems/{index}")
        for index in range(len(new_prefix), len(old_prefix)):
            self._item_removed(index, old_prefix[index], new_rest, f"{path}/prefixItems/{index}")
        for index in range(len(old_prefix), len(new_prefix)):
            self._item_added(index, new_prefix[index], old_rest, f"{path}/prefixItems/{index}")
        self._rest(old_rest, new_rest, f"{path}/items", "items")

    def _item_removed(self, index: int, schema: Any, reader_rest: Any, where: str) -> None:
        rest, _ = resolve(reader_rest, self.new_root, where)
        model = openness(rest)
        if model == OPEN:
            self.add(
                Kind.ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL,
                where,
                f"item {index} of {self.old} is not declared in {self.new}, which accepts "
                "any further items",
            )
        elif model == PARTIAL:
            self._covered(
                schema, reader_rest, where, reader_side=True, name=f"item {index}", item=True
            )
        else:
            self.add(
                Kind.ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                where,
                f"item {index} of {self.old} is not declared in {self.new}, which accepts "
                "no further items",
            )

    def _item_added(self, index: int, schema: Any, writer_rest: Any, where: str) -> None:
        rest, _ = resolve(writer_rest, self.old_root, where)
        model = openness(rest)
        if model == OPEN:
            resolved, _ = resolve(schema, self.new_root, where)
            if accepts_anything(resolved):
                self.add(
                    Kind.ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
                    where,
                    f"item {index} of {self.new} accepts any value",
                )
            else:
                self.add(
                    Kind.ITEM_ADDED_TO_OPEN_CONTENT_MODEL,
                    where,
                    f"item {index} of {self.new} is not declared in {self.old}, whose "
                    "further items may be anything",
                )
        elif model == PARTIAL:
            self._covered(
                writer_rest, schema, where, reader_side=False, name=f"item {index}", item=True
            )
        else:
            self.add(
                Kind.ITEM_ADDED_TO_CLOSED_CONTENT_MODEL,
                where,
                f"item {index} of {self.new} is not declared in {self.old}, whose data "
                "never has it",
            )


# -- helpers ---------------------------------------------------------------------------------
