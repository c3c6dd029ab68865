"""The kinds of difference between two JSON Schemas, and which of them a reader survives.

Named after Confluent Schema Registry's JSON Schema difference types. A difference is always
found going from the *writer's* schema (the data's) to the *reader's* schema (the consumer's):
`differences(old, new)` treats `old` as the writer and `new` as the reader, so
`Kind.compatible` says whether a consumer with the new schema still reads data written with the
old one (BACKWARD). A FORWARD check is the same comparison with the roles swapped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from tidings.errors import TidingsError

__all__ = ["Difference", "InvalidSchemaError", "Kind"]


class InvalidSchemaError(TidingsError, ValueError):
    """A schema given to the compatibility checker is not a JSON Schema it can read: not an
    object or boolean, a keyword of the wrong shape, or a `$ref` it cannot resolve (only
    references inside the same document, `#...`, are followed)."""


class Kind(enum.StrEnum):
    """What changed between a writer's schema and a reader's, at one place in the schemas."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> str:
        return name

    # Annotations: never change what is valid.
    TITLE_CHANGED = enum.auto()
    DESCRIPTION_CHANGED = enum.auto()
    DEFAULT_CHANGED = enum.auto()
    ANNOTATION_CHANGED = enum.auto()

    # Types (`type`, an empty schema, `true`/`false`).
    TYPE_EXTENDED = enum.auto()
    TYPE_NARROWED = enum.auto()
    TYPE_CHANGED = enum.auto()

    # Alternatives (`anyOf`/`oneOf`, as pydantic writes unions and optionals).
    SUM_TYPE_EXTENDED = enum.auto()
    SUM_TYPE_NARROWED = enum.auto()
    COMBINED_TYPE_EXTENDED = enum.auto()
    COMBINED_TYPE_CHANGED = enum.auto()

    # Allowed values (`enum`; a `const` counts as an enum of one value).
    ENUM_ADDED = enum.auto()
    ENUM_REMOVED = enum.auto()
    ENUM_ARRAY_EXTENDED = enum.auto()
    ENUM_ARRAY_NARROWED = enum.auto()
    ENUM_ARRAY_CHANGED = enum.auto()

    # Strings.
    MAX_LENGTH_ADDED = enum.auto()
    MAX_LENGTH_REMOVED = enum.auto()
    MAX_LENGTH_INCREASED = enum.auto()
    MAX_LENGTH_DECREASED = enum.auto()
    MIN_LENGTH_ADDED = enum.auto()
    MIN_LENGTH_REMOVED = enum.auto()
    MIN_LENGTH_INCREASED = enum.auto()
    MIN_LENGTH_DECREASED = enum.auto()
    PATTERN_ADDED = enum.auto()
    PATTERN_REMOVED = enum.auto()
    PATTERN_CHANGED = enum.auto()
    FORMAT_ADDED = enum.auto()
    FORMAT_REMOVED = enum.auto()
    FORMAT_CHANGED = enum.auto()

    # Numbers.
    MAXIMUM_ADDED = enum.auto()
    MAXIMUM_REMOVED = enum.auto()
    MAXIMUM_INCREASED = enum.auto()
    MAXIMUM_DECREASED = enum.auto()
    MINIMUM_ADDED = enum.auto()
    MINIMUM_REMOVED = enum.auto()
    MINIMUM_INCREASED = enum.auto()
    MINIMUM_DECREASED = enum.auto()
    EXCLUSIVE_MAXIMUM_ADDED = enum.auto()
    EXCLUSIVE_MAXIMUM_REMOVED = enum.auto()
    EXCLUSIVE_MAXIMUM_INCREASED = enum.auto()
    EXCLUSIVE_MAXIMUM_DECREASED = enum.auto()
    EXCLUSIVE_MINIMUM_ADDED = enum.auto()
    EXCLUSIVE_MINIMUM_REMOVED = enum.auto()
    EXCLUSIVE_MINIMUM_INCREASED = enum.auto()
    EXCLUSIVE_MINIMUM_DECREASED = enum.auto()
    MULTIPLE_OF_ADDED = enum.auto()
    MULTIPLE_OF_REMOVED = enum.auto()
    MULTIPLE_OF_EXPANDED = enum.auto()
    MULTIPLE_OF_REDUCED = enum.auto()
    MULTIPLE_OF_CHANGED = enum.auto()

    # Objects: `required` of a property both schemas declare.
    REQUIRED_ATTRIBUTE_ADDED = enum.auto()
    REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED = enum.auto()
    REQUIRED_ATTRIBUTE_REMOVED = enum.auto()
    # Objects: a property only the reader declares ("added"). The writer's content model says
    # what the writer's data may hold under that name: open (no `additionalProperties`, or
    # `true`), closed (`false`) or partially open (a schema, or a matching `patternProperties`).
    REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL = enum.auto()
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL = enum.auto()
    OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    # Objects: a property only the writer declares ("removed"); the reader's content model decides.
    PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    # Objects: the content model itself, and property counts.
    ADDITIONAL_PROPERTIES_ADDED = enum.auto()
    ADDITIONAL_PROPERTIES_REMOVED = enum.auto()
    ADDITIONAL_PROPERTIES_EXTENDED = enum.auto()
    ADDITIONAL_PROPERTIES_NARROWED = enum.auto()
    MAX_PROPERTIES_ADDED = enum.auto()
    MAX_PROPERTIES_REMOVED = enum.auto()
    MAX_PROPERTIES_INCREASED = enum.auto()
    MAX_PROPERTIES_DECREASED = enum.auto()
    MIN_PROPERTIES_ADDED = enum.auto()
    MIN_PROPERTIES_REMOVED = enum.auto()
    MIN_PROPERTIES_INCREASED = enum.auto()
    MIN_PROPERTIES_DECREASED = enum.auto()

    # Arrays: sizes, uniqueness.
    MAX_ITEMS_ADDED = enum.auto()
    MAX_ITEMS_REMOVED = enum.auto()
    MAX_ITEMS_INCREASED = enum.auto()
    MAX_ITEMS_DECREASED = enum.auto()
    MIN_ITEMS_ADDED = enum.auto()
    MIN_ITEMS_REMOVED = enum.auto()
    MIN_ITEMS_INCREASED = enum.auto()
    MIN_ITEMS_DECREASED = enum.auto()
    UNIQUE_ITEMS_ADDED = enum.auto()
    UNIQUE_ITEMS_REMOVED = enum.auto()
    # Arrays: positional items (`prefixItems`, pydantic's tuples) and what follows them (`items`
    # after `prefixItems`: absent or `true` is open, `false` closed, a schema partially open).
    ITEM_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_ADDED_TO_CLOSED_CONTENT_MODEL = enum.auto()
    ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL = enum.auto()
    ADDITIONAL_ITEMS_ADDED = enum.auto()
    ADDITIONAL_ITEMS_REMOVED = enum.auto()
    ADDITIONAL_ITEMS_EXTENDED = enum.auto()
    ADDITIONAL_ITEMS_NARROWED = enum.auto()

    # Validation keywords this checker does not model (`not`, `if`, `contains`,
    # `propertyNames`, `patternProperties`, an `allOf` of several schemas...): removing one
    # only ever widens what is valid; adding or changing one may narrow it.
    KEYWORD_ADDED = enum.auto()
    KEYWORD_REMOVED = enum.auto()
    KEYWORD_CHANGED = enum.auto()

    # Never found by `differences()`: reported by `check_with_upcast()` about upcasters.
    UPCASTER_MISSING = enum.auto()
    UPCAST_FAILED = enum.auto()

    @property
    def compatible(self) -> bool:
        """Whether a reader with the new schema still reads data written with the old one
        when this is the difference (BACKWARD; FORWARD applies it with the roles swapped)."""
        return self in _COMPATIBLE


_COMPATIBLE = frozenset(
    {
        Kind.TITLE_CHANGED,
        Kind.DESCRIPTION_CHANGED,
        Kind.DEFAULT_CHANGED,
        Kind.ANNOTATION_CHANGED,
        Kind.TYPE_EXTENDED,
        Kind.SUM_TYPE_EXTENDED,
        Kind.COMBINED_TYPE_EXTENDED,
        Kind.ENUM_REMOVED,
        Kind.ENUM_ARRAY_EXTENDED,
        Kind.MAX_LENGTH_REMOVED,
        Kind.MAX_LENGTH_INCREASED,
        Kind.MIN_LENGTH_REMOVED,
        Kind.MIN_LENGTH_DECREASED,
        Kind.PATTERN_REMOVED,
        Kind.FORMAT_REMOVED,
        Kind.MAXIMUM_REMOVED,
        Kind.MAXIMUM_INCREASED,
        Kind.MINIMUM_REMOVED,
        Kind.MINIMUM_DECREASED,
        Kind.EXCLUSIVE_MAXIMUM_REMOVED,
        Kind.EXCLUSIVE_MAXIMUM_INCREASED,
        Kind.EXCLUSIVE_MINIMUM_REMOVED,
        Kind.EXCLUSIVE_MINIMUM_DECREASED,
        Kind.MULTIPLE_OF_REMOVED,
        Kind.MULTIPLE_OF_REDUCED,
        Kind.REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED,
        Kind.REQUIRED_ATTRIBUTE_REMOVED,
        # Confluent's "lenient" policy for open models: what the writer's data holds under a
        # name its schema never declared is taken to be nothing (tidings writes data from its
        # models, which serialize their declared fields only).
        Kind.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL,
        Kind.OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
        Kind.PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
        Kind.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL,
        Kind.OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
        Kind.PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        Kind.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
        Kind.PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
        Kind.PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        Kind.ADDITIONAL_PROPERTIES_ADDED,
        Kind.ADDITIONAL_PROPERTIES_EXTENDED,
        Kind.MAX_PROPERTIES_REMOVED,
        Kind.MAX_PROPERTIES_INCREASED,
        Kind.MIN_PROPERTIES_REMOVED,
        Kind.MIN_PROPERTIES_DECREASED,
        Kind.MAX_ITEMS_REMOVED,
        Kind.MAX_ITEMS_INCREASED,
        Kind.MIN_ITEMS_REMOVED,
        Kind.MIN_ITEMS_DECREASED,
        Kind.UNIQUE_ITEMS_REMOVED,
        Kind.ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
        Kind.ITEM_ADDED_TO_CLOSED_CONTENT_MODEL,
        Kind.ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        Kind.ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL,
        Kind.ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        Kind.ADDITIONAL_ITEMS_ADDED,
        Kind.ADDITIONAL_ITEMS_EXTENDED,
        Kind.KEYWORD_REMOVED,
    }
)


@dataclass(frozen=True)
class Difference:
    """One change between a writer's schema and a reader's: its kind, where it happens (a
    JSON pointer into the schemas that follows `$ref`s as if they were written inline, like
    `#/properties/items/items/properties/quantity`) and a sentence naming both schemas."""

    kind: Kind
    path: str
    message: str

    @property
    def compatible(self) -> bool:
        """Whether the reader still reads the writer's data despite this difference."""
        return self.kind.compatible

    def __str__(self) -> str:
        return f"{self.path}: {self.message} ({self.kind})"
