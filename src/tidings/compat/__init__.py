"""Compatibility of event schemas: the rules Confluent Schema Registry applies to JSON Schema.

`differences(old, new)` lists every change between two JSON Schemas (as
`tidings.schema.json_schema()` writes them, or any draft 2020-12 schema), each with its `Kind`,
its JSON path (`#/properties/items/items/properties/quantity`, following `$ref`s as if they
were inline) and a sentence. A difference is always read as *a consumer with the new schema
reading data written with the old one*: `Kind.compatible` is the BACKWARD verdict, and a
FORWARD check is the same comparison with the two schemas swapped.

`check(mode, new, previous)` returns the `Incompatibility`s that stop `new` from following
`previous` (oldest first) under a `Mode`; `check_with_upcast(mode, new_model, old_models)` does
the same for event models, where an upcaster chain from an older version satisfies BACKWARD.

The rules in short, for BACKWARD (FORWARD swaps the schemas, FULL is both):

- compatible: adding an optional property, or a required one with a default, to a model;
  removing a property from an open model (tidings' models are open: unknown fields are
  ignored, and their schemas have no `additionalProperties`); opening a closed model;
  widening a type (integer to number, adding an alternative such as `null`), adding enum
  values, removing or loosening limits (maxLength increased, minimum decreased...);
  annotations (title, description, default).
- breaking: adding a required property without a default; removing a property from a closed
  model (`extra="forbid"`: `additionalProperties: false`); closing an open model; narrowing or
  changing a type, removing an enum value or alternative; adding or tightening limits,
  patterns and formats; adding or changing a keyword this checker does not model.

Adding a property to an open model follows Confluent's *lenient* policy (what an old writer's
data holds under a name its schema never declared is taken to be nothing, as tidings' models
serialize only their declared fields); everything else follows its default, strict one.
"""

from __future__ import annotations

from tidings.compat._check import Incompatibility, Mode, check, check_with_upcast
from tidings.compat._diff import differences
from tidings.compat._kinds import Difference, InvalidSchemaError, Kind

__all__ = [
    "Difference",
    "Incompatibility",
    "InvalidSchemaError",
    "Kind",
    "Mode",
    "check",
    "check_with_upcast",
    "differences",
]
