"""Schema compatibility (tidings.compat): Confluent's JSON Schema rules on pydantic event models.

Each case declares two versions of a real EventModel (type COMPAT_<case>), diffs their JSON
Schemas and checks the verdict of every mode; hand-written schemas cover what pydantic never
writes. Upcasters are checked with their own COMPAT_UP_* types.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import pytest

from tidings.compat import (
    Difference,
    InvalidSchemaError,
    Kind,
    Mode,
    check,
    check_with_upcast,
    differences,
)
from tidings.compat._samples import samples
from tidings.schema import EventModel, WireModel, json_schema

K = Kind
ALL_MODES = list(Mode)


def model(case: str, version: int, *, closed: bool = False, **fields: Any) -> type[EventModel]:
    """An EventModel of type COMPAT_<CASE>, version `version`, with pydantic field definitions
    as `pydantic.create_model` takes them; `closed` forbids unknown fields."""
    kwargs: dict[str, Any] = {"type": f"COMPAT_{case.upper()}", "version": version}
    if closed:
        kwargs["extra"] = "forbid"
    created: type[EventModel] = pydantic.create_model(
        f"Compat_{case}_v{version}", __base__=EventModel, __cls_kwargs__=kwargs, **fields
    )
    return created


class Item(WireModel):
    sku: str
    quantity: int = pydantic.Field(ge=1, le=100)


class ItemFewer(WireModel):
    sku: str
    quantity: int = pydantic.Field(ge=1, le=50)


class ItemGift(WireModel):
    sku: str
    quantity: int = pydantic.Field(ge=1, le=100)
    gift: bool


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class MoreColour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"
    GREEN = "green"


class Card(WireModel):
    method: Literal["card"]
    last4: str


class Cash(WireModel):
    method: Literal["cash"]


class Voucher(WireModel):
    method: Literal["voucher"]
    code: str


class Node(WireModel):
    name: str
    children: list[Node] = []


class ShortNode(WireModel):
    name: str = pydantic.Field(max_length=5)
    children: list[ShortNode] = []


OPTIONAL_NOTE = (str | None, None)
PAYMENT = Annotated[Card | Cash, pydantic.Field(discriminator="method")]
MORE_PAYMENT = Annotated[Card | Cash | Voucher, pydantic.Field(discriminator="method")]


@dataclass(frozen=True)
class Case:
    id: str
    old: dict[str, Any]
    new: dict[str, Any]
    found: set[tuple[Kind, str]]
    backward: bool  # v2 readers read v1 data
    forward: bool  # v1 readers read v2 data
    old_closed: bool = False
    new_closed: bool = False

    def models(self) -> tuple[type[EventModel], type[EventModel]]:
        return (
            model(self.id, 1, closed=self.old_closed, **self.old),
            model(self.id, 2, closed=self.new_closed, **self.new),
        )


P = "#/properties"
CASES = [
    # -- properties and content models ---------------------------------------------------
    Case("add_optional", {"a": (str, ...)}, {"a": (str, ...), "note": OPTIONAL_NOTE},
         {(K.OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/note")}, True, True),
    Case("add_with_default", {"a": (str, ...)}, {"a": (str, ...), "currency": (str, "EUR")},
         {(K.OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/currency")}, True, True),
    Case("add_required", {"a": (str, ...)}, {"a": (str, ...), "currency": (str, ...)},
         {(K.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/currency")}, False, True),
    Case("remove_optional", {"a": (str, ...), "note": OPTIONAL_NOTE}, {"a": (str, ...)},
         {(K.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL, f"{P}/note")}, True, True),
    Case("remove_required", {"a": (str, ...), "b": (int, ...)}, {"a": (str, ...)},
         {(K.PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL, f"{P}/b")}, True, False),
    Case("closed_remove_required", {"a": (str, ...), "b": (int, ...)}, {"a": (str, ...)},
         {(K.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL, f"{P}/b")}, False, False,
         old_closed=True, new_closed=True),
    Case("closed_remove_optional", {"a": (str, ...), "note": OPTIONAL_NOTE}, {"a": (str, ...)},
         {(K.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL, f"{P}/note")}, False, True,
         old_closed=True, new_closed=True),
    Case("closed_add_optional", {"a": (str, ...)}, {"a": (str, ...), "note": OPTIONAL_NOTE},
         {(K.OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL, f"{P}/note")}, True, False,
         old_closed=True, new_closed=True),
    Case("closed_add_required", {"a": (str, ...)}, {"a": (str, ...), "b": (int, ...)},
         {(K.REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL, f"{P}/b")}, False, False,
         old_closed=True, new_closed=True),
    Case("close_model", {"a": (str, ...)}, {"a": (str, ...)},
         {(K.ADDITIONAL_PROPERTIES_REMOVED, "#/additionalProperties")}, False, True,
         new_closed=True),
    Case("open_model", {"a": (str, ...)}, {"a": (str, ...)},
         {(K.ADDITIONAL_PROPERTIES_ADDED, "#/additionalProperties")}, True, False,
         old_closed=True),
    Case("make_optional", {"a": (str, ...)}, {"a": (str, "x")},
         {(K.REQUIRED_ATTRIBUTE_REMOVED, f"{P}/a"), (K.DEFAULT_CHANGED, f"{P}/a/default")},
         True, False),
    Case("make_required", {"a": (str, "x")}, {"a": (str, ...)},
         {(K.REQUIRED_ATTRIBUTE_ADDED, f"{P}/a"), (K.DEFAULT_CHANGED, f"{P}/a/default")},
         False, True),
    Case("default_changed", {"a": (str, "x")}, {"a": (str, "y")},
         {(K.DEFAULT_CHANGED, f"{P}/a/default")}, True, True),
    Case("dict_values_widened", {"m": (dict[str, int], ...)}, {"m": (dict[str, float], ...)},
         {(K.TYPE_EXTENDED, f"{P}/m/additionalProperties")}, True, False),
    # -- types and alternatives -----------------------------------------------------------
    Case("int_to_float", {"x": (int, ...)}, {"x": (float, ...)},
         {(K.TYPE_EXTENDED, f"{P}/x")}, True, False),
    Case("float_to_int", {"x": (float, ...)}, {"x": (int, ...)},
         {(K.TYPE_NARROWED, f"{P}/x")}, False, True),
    Case("str_to_int", {"x": (str, ...)}, {"x": (int, ...)},
         {(K.TYPE_CHANGED, f"{P}/x")}, False, False),
    Case("any_to_str", {"x": (Any, ...)}, {"x": (str, ...)},
         {(K.TYPE_NARROWED, f"{P}/x")}, False, True),
    Case("nullable", {"x": (str, ...)}, {"x": (str | None, ...)},
         {(K.SUM_TYPE_EXTENDED, f"{P}/x/anyOf/1")}, True, False),
    Case("not_nullable", {"x": (str | None, None)}, {"x": (str, ...)},
         {(K.REQUIRED_ATTRIBUTE_ADDED, f"{P}/x"), (K.DEFAULT_CHANGED, f"{P}/x/default"),
          (K.SUM_TYPE_NARROWED, f"{P}/x/anyOf/1")}, False, True),
    Case("union_widened", {"x": (int | str, ...)}, {"x": (int | str | bool, ...)},
         {(K.SUM_TYPE_EXTENDED, f"{P}/x/anyOf/2")}, True, False),
    Case("optional_narrowed", {"x": (Annotated[str, pydantic.Field(max_length=9)] | None, None)},
         {"x": (Annotated[str, pydantic.Field(max_length=3)] | None, None)},
         {(K.MAX_LENGTH_DECREASED, f"{P}/x/anyOf/0/maxLength")}, False, True),
    Case("variant_added", {"pay": (PAYMENT, ...)}, {"pay": (MORE_PAYMENT, ...)},
         {(K.SUM_TYPE_EXTENDED, f"{P}/pay/oneOf/2"),
          (K.ANNOTATION_CHANGED, f"{P}/pay/discriminator")}, True, False),
    # -- allowed values -------------------------------------------------------------------
    Case("enum_widened", {"s": (Literal["new", "paid"], ...)},
         {"s": (Literal["new", "paid", "shipped"], ...)},
         {(K.ENUM_ARRAY_EXTENDED, f"{P}/s/enum")}, True, False),
    Case("enum_narrowed", {"s": (Literal["new", "paid"], ...)}, {"s": (Literal["new"], ...)},
         {(K.ENUM_ARRAY_NARROWED, f"{P}/s/const")}, False, True),
    Case("enum_changed", {"s": (Literal["a", "b"], ...)}, {"s": (Literal["b", "c"], ...)},
         {(K.ENUM_ARRAY_CHANGED, f"{P}/s/enum")}, False, False),
    Case("enum_class_widened", {"c": (Colour, ...)}, {"c": (MoreColour, ...)},
         {(K.ENUM_ARRAY_EXTENDED, f"{P}/c/enum"), (K.TITLE_CHANGED, f"{P}/c/title")},
         True, False),
    Case("const_changed", {"k": (Literal["z"], ...)}, {"k": (Literal["y"], ...)},
         {(K.ENUM_ARRAY_CHANGED, f"{P}/k/const")}, False, False),
    Case("enum_added", {"s": (str, ...)}, {"s": (Literal["a", "b"], ...)},
         {(K.ENUM_ADDED, f"{P}/s/enum")}, False, True),
    # -- limits ---------------------------------------------------------------------------
    Case("max_length_decreased", {"s": (str, pydantic.Field(max_length=20))},
         {"s": (str, pydantic.Field(max_length=10))},
         {(K.MAX_LENGTH_DECREASED, f"{P}/s/maxLength")}, False, True),
    Case("max_length_increased", {"s": (str, pydantic.Field(max_length=10))},
         {"s": (str, pydantic.Field(max_length=20))},
         {(K.MAX_LENGTH_INCREASED, f"{P}/s/maxLength")}, True, False),
    Case("max_length_added", {"s": (str, ...)}, {"s": (str, pydantic.Field(max_length=10))},
         {(K.MAX_LENGTH_ADDED, f"{P}/s/maxLength")}, False, True),
    Case("max_length_removed", {"s": (str, pydantic.Field(max_length=10))}, {"s": (str, ...)},
         {(K.MAX_LENGTH_REMOVED, f"{P}/s/maxLength")}, True, False),
    Case("min_length_increased", {"s": (str, pydantic.Field(min_length=1))},
         {"s": (str, pydantic.Field(min_length=3))},
         {(K.MIN_LENGTH_INCREASED, f"{P}/s/minLength")}, False, True),
    Case("minimum_increased", {"n": (int, pydantic.Field(ge=1))},
         {"n": (int, pydantic.Field(ge=5))},
         {(K.MINIMUM_INCREASED, f"{P}/n/minimum")}, False, True),
    Case("minimum_decreased", {"n": (int, pydantic.Field(ge=5))},
         {"n": (int, pydantic.Field(ge=1))},
         {(K.MINIMUM_DECREASED, f"{P}/n/minimum")}, True, False),
    Case("maximum_removed", {"n": (int, pydantic.Field(le=5))}, {"n": (int, ...)},
         {(K.MAXIMUM_REMOVED, f"{P}/n/maximum")}, True, False),
    Case("exclusive_maximum_decreased", {"n": (float, pydantic.Field(lt=10))},
         {"n": (float, pydantic.Field(lt=5))},
         {(K.EXCLUSIVE_MAXIMUM_DECREASED, f"{P}/n/exclusiveMaximum")}, False, True),
    Case("exclusive_minimum_added", {"n": (float, ...)}, {"n": (float, pydantic.Field(gt=0))},
         {(K.EXCLUSIVE_MINIMUM_ADDED, f"{P}/n/exclusiveMinimum")}, False, True),
    Case("multiple_of_expanded", {"n": (int, pydantic.Field(multiple_of=2))},
         {"n": (int, pydantic.Field(multiple_of=4))},
         {(K.MULTIPLE_OF_EXPANDED, f"{P}/n/multipleOf")}, False, True),
    Case("multiple_of_changed", {"n": (int, pydantic.Field(multiple_of=2))},
         {"n": (int, pydantic.Field(multiple_of=3))},
         {(K.MULTIPLE_OF_CHANGED, f"{P}/n/multipleOf")}, False, False),
    Case("pattern_added", {"s": (str, ...)}, {"s": (str, pydantic.Field(pattern="^o-"))},
         {(K.PATTERN_ADDED, f"{P}/s/pattern")}, False, True),
    Case("pattern_changed", {"s": (str, pydantic.Field(pattern="^o-"))},
         {"s": (str, pydantic.Field(pattern="^order-"))},
         {(K.PATTERN_CHANGED, f"{P}/s/pattern")}, False, False),
    Case("format_added", {"t": (str, ...)}, {"t": (datetime.datetime, ...)},
         {(K.FORMAT_ADDED, f"{P}/t/format")}, False, True),
    Case("format_changed", {"t": (datetime.date, ...)}, {"t": (datetime.datetime, ...)},
         {(K.FORMAT_CHANGED, f"{P}/t/format")}, False, False),
    # -- arrays ---------------------------------------------------------------------------
    Case("min_items_increased", {"l": (list[int], ...)},
         {"l": (list[int], pydantic.Field(min_length=1))},
         {(K.MIN_ITEMS_ADDED, f"{P}/l/minItems")}, False, True),
    Case("max_items_decreased", {"l": (list[int], pydantic.Field(max_length=5))},
         {"l": (list[int], pydantic.Field(max_length=2))},
         {(K.MAX_ITEMS_DECREASED, f"{P}/l/maxItems")}, False, True),
    Case("unique_items", {"l": (list[int], ...)}, {"l": (set[int], ...)},
         {(K.UNIQUE_ITEMS_ADDED, f"{P}/l/uniqueItems")}, False, True),
    Case("item_type_widened", {"l": (list[int], ...)}, {"l": (list[float], ...)},
         {(K.TYPE_EXTENDED, f"{P}/l/items")}, True, False),
    Case("tuple_longer", {"t": (tuple[int, str], ...)}, {"t": (tuple[int, str, bool], ...)},
         {(K.ITEM_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/t/prefixItems/2"),
          (K.MIN_ITEMS_INCREASED, f"{P}/t/minItems"),
          (K.MAX_ITEMS_INCREASED, f"{P}/t/maxItems")}, False, False),
    # -- nested models ($ref into $defs) ---------------------------------------------------
    Case("nested_limit", {"items": (list[Item], ...)}, {"items": (list[ItemFewer], ...)},
         {(K.MAXIMUM_DECREASED, f"{P}/items/items/properties/quantity/maximum"),
          (K.TITLE_CHANGED, f"{P}/items/items/title")}, False, True),
    Case("nested_required", {"items": (list[Item], ...)}, {"items": (list[ItemGift], ...)},
         {(K.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/items/items/properties/gift"),
          (K.TITLE_CHANGED, f"{P}/items/items/title")}, False, True),
    Case("nested_made_optional", {"item": (Item, ...)}, {"item": (Item | None, None)},
         {(K.REQUIRED_ATTRIBUTE_REMOVED, f"{P}/item"),
          (K.DEFAULT_CHANGED, f"{P}/item/default"),
          (K.TITLE_CHANGED, f"{P}/item/title"),
          (K.SUM_TYPE_EXTENDED, f"{P}/item/anyOf/1")}, True, False),
    Case("recursive", {"tree": (Node, ...)}, {"tree": (ShortNode, ...)},
         {(K.MAX_LENGTH_ADDED, f"{P}/tree/properties/name/maxLength"),
          (K.TITLE_CHANGED, f"{P}/tree/title")}, False, True),
]  # fmt: skip


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Case, dict[str, Any], dict[str, Any]]:
    old, new = request.param.models()
    return request.param, json_schema(old), json_schema(new)


def kinds_and_paths(found: list[Difference]) -> set[tuple[Kind, str]]:
    return {(difference.kind, difference.path) for difference in found}


def test_differences_per_rule(case: tuple[Case, dict[str, Any], dict[str, Any]]) -> None:
    rule, old, new = case
    found = differences(old, new)
    assert kinds_and_paths(found) == rule.found
    assert all(d.message and "v1" in d.message and "v2" in d.message for d in found)
    assert all(d.compatible == d.kind.compatible for d in found)


def test_verdict_of_every_mode(case: tuple[Case, dict[str, Any], dict[str, Any]]) -> None:
    rule, old, new = case
    expected = {
        Mode.BACKWARD: rule.backward,
        Mode.FORWARD: rule.forward,
        Mode.FULL: rule.backward and rule.forward,
        Mode.NONE: True,
    }
    for mode, compatible in expected.items():
        found = check(mode, new, [old])
        assert (not found) == compatible, (mode, found)
        # one earlier version: a transitive mode says the same
        transitive = Mode.parse(f"{mode}_TRANSITIVE") if mode is not Mode.NONE else mode
        assert check(transitive, new, [old]) == found


def test_backward_incompatibilities_are_the_incompatible_differences(
    case: tuple[Case, dict[str, Any], dict[str, Any]],
) -> None:
    _, old, new = case
    backward = check(Mode.BACKWARD, new, [old])
    incompatible = [d for d in differences(old, new) if not d.compatible]
    assert [(i.kind, i.path) for i in backward] == [(d.kind, d.path) for d in incompatible]
    assert all(i.breaks is Mode.BACKWARD and (i.reader, i.writer) == ("v2", "v1") for i in backward)
    # FORWARD is BACKWARD with the schemas swapped
    forward = check(Mode.FORWARD, new, [old])
    swapped = check(Mode.BACKWARD, old, [new])
    assert [(i.kind, i.path, i.detail) for i in forward] == [
        (i.kind, i.path, i.detail) for i in swapped
    ]
    assert all(i.breaks is Mode.FORWARD and (i.reader, i.writer) == ("v1", "v2") for i in forward)


def test_full_is_backward_or_forward(case: tuple[Case, dict[str, Any], dict[str, Any]]) -> None:
    _, old, new = case
    for full, backward, forward in (
        (Mode.FULL, Mode.BACKWARD, Mode.FORWARD),
        (Mode.FULL_TRANSITIVE, Mode.BACKWARD_TRANSITIVE, Mode.FORWARD_TRANSITIVE),
    ):
        assert check(full, new, [old]) == check(backward, new, [old]) + check(forward, new, [old])


def test_a_schema_is_compatible_with_itself(
    case: tuple[Case, dict[str, Any], dict[str, Any]],
) -> None:
    _, old, new = case
    for schema in (old, new):
        assert differences(schema, schema) == []
        assert differences(schema, dict(schema)) == []
        for mode in ALL_MODES:
            assert check(mode, schema, [schema]) == []
            assert check(mode, schema, [schema, schema, schema]) == []


def test_the_ci_sentence() -> None:
    old, new = (
        model("sentence", 1, closed=True, total=(float, ...)),
        model("sentence", 2, closed=True, total=(float, ...), currency=(str, ...)),
    )
    [found] = check(Mode.BACKWARD, json_schema(new), [json_schema(old)])
    assert found.path == "#/properties/currency"
    assert found.kind is Kind.REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL
    assert (
        str(found)
        == found.message
        == (
            "#/properties/currency: currency is required without a default in v2 and not declared "
            "in v1 (a closed model): v1 data lacks it "
            "(REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL) - breaks BACKWARD: consumers of v2 "
            "cannot read v1 data"
        )
    )
    [forward] = check(Mode.FORWARD, json_schema(new), [json_schema(old)])
    assert forward.kind is Kind.PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL
    assert forward.message.endswith("- breaks FORWARD: consumers of v1 cannot read v2 data")
    assert "currency of v2 is not declared in v1" in forward.message


def test_sentences_read_right_in_both_directions() -> None:
    old, new = (
        model("both_ways", 1, s=(Literal["new", "paid"], ...)),
        model("both_ways", 2, s=(Literal["new", "paid", "shipped"], ...)),
    )
    [found] = check(Mode.FORWARD, json_schema(new), [json_schema(old)])
    assert found.detail == 'v1 does not accept "shipped", which v2 accepts'
    [difference] = differences(json_schema(old), json_schema(new))
    assert difference.message == 'v2 accepts "shipped", which v1 does not'
    assert str(difference) == f"#/properties/s/enum: {difference.message} (ENUM_ARRAY_EXTENDED)"


# -- transitive modes ----------------------------------------------------------------------

V1 = json_schema(model("transitive", 1, a=(int, ...)))
V2 = json_schema(model("transitive", 2))  # `a` removed from an open model
V3 = json_schema(model("transitive", 3, a=(str | None, None)))  # `a` back, as a string


def test_transitive_modes_check_every_earlier_version() -> None:
    assert check(Mode.BACKWARD, V2, [V1]) == []
    assert check(Mode.BACKWARD, V3, [V1, V2]) == []  # only the last: v2
    found = check(Mode.BACKWARD_TRANSITIVE, V3, [V1, V2])
    assert [(i.kind, i.path, i.writer) for i in found] == [
        (Kind.TYPE_CHANGED, "#/properties/a", "v1")
    ]
    assert found[0].detail == "v3 accepts string or null where v1 accepts integer"
    assert check(Mode.FORWARD, V3, [V1, V2]) == []
    forward = check(Mode.FORWARD_TRANSITIVE, V3, [V1, V2])
    assert [(i.kind, i.path, i.reader) for i in forward] == [
        (Kind.REQUIRED_ATTRIBUTE_ADDED, "#/properties/a", "v1"),
        (Kind.SUM_TYPE_NARROWED, "#/properties/a/anyOf/0", "v1"),
        (Kind.SUM_TYPE_NARROWED, "#/properties/a/anyOf/1", "v1"),
    ]
    full = check(Mode.FULL_TRANSITIVE, V3, [V1, V2])
    assert full == found + forward


def test_labels_without_versions() -> None:
    old = {"type": "object", "properties": {"a": {"type": "integer"}}}
    new = {"type": "object", "properties": {"a": {"type": "string"}}}
    [found] = check("backward_transitive", new, [new, old])
    assert (found.reader, found.writer) == ("the new schema", "earlier schema #2")
    [difference] = differences(old, new)
    assert (
        difference.message == "the new schema has type string where the old schema has type integer"
    )
    same = {**new, "x-tidings-version": 3}
    [clash] = check(Mode.FULL, same, [{**old, "x-tidings-version": 3}])[:1]
    assert (clash.reader, clash.writer) == ("the new v3", "the earlier v3")


def test_modes() -> None:
    assert Mode.parse("full_transitive") is Mode.FULL_TRANSITIVE
    assert Mode.parse(" Backward ") is Mode.BACKWARD
    assert Mode.parse(Mode.NONE) is Mode.NONE
    with pytest.raises(ValueError, match="unknown compatibility mode 'SIDEWAYS'"):
        Mode.parse("SIDEWAYS")
    assert [m for m in Mode if m.backward] == [
        Mode.BACKWARD, Mode.BACKWARD_TRANSITIVE, Mode.FULL, Mode.FULL_TRANSITIVE
    ]  # fmt: skip
    assert [m for m in Mode if m.forward] == [
        Mode.FORWARD, Mode.FORWARD_TRANSITIVE, Mode.FULL, Mode.FULL_TRANSITIVE
    ]  # fmt: skip
    assert [m for m in Mode if m.transitive] == [
        Mode.BACKWARD_TRANSITIVE, Mode.FORWARD_TRANSITIVE, Mode.FULL_TRANSITIVE
    ]  # fmt: skip
    assert check(Mode.NONE, {"type": "string"}, [{"type": "integer"}]) == []
    assert check(Mode.FULL, {"type": "string"}, []) == []
    with pytest.raises(TypeError, match="as a list"):
        check(Mode.BACKWARD, {}, {"type": "object"})  # type: ignore[arg-type]


# -- hand-written schemas: what pydantic does not write ------------------------------------


def obj(properties: dict[str, Any], required: list[str] = (), **more: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {"type": "object", "properties": properties, "required": list(required), **more}


STR = {"type": "string"}
INT = {"type": "integer"}

HAND_WRITTEN = [
    # (id, old, new, expected differences, backward ok, forward ok)
    ("required_with_default_to_open", obj({}), obj({"c": {**STR, "default": "EUR"}}, ["c"]),
     {(K.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/c")}, True, True),
    ("required_with_default_to_closed", obj({}, additionalProperties=False),
     obj({"c": {**STR, "default": "EUR"}}, ["c"], additionalProperties=False),
     {(K.REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL, f"{P}/c")}, True, False),
    ("required_attribute_with_default", obj({"c": {**STR, "default": "EUR"}}),
     obj({"c": {**STR, "default": "EUR"}}, ["c"]),
     {(K.REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED, f"{P}/c")}, True, True),
    ("empty_schema_to_open", obj({}), obj({"any": {"title": "Any"}}),
     {(K.PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL, f"{P}/any")}, True, True),
    ("false_removed_from_closed", obj({"gone": False}, additionalProperties=False),
     obj({}, additionalProperties=False),
     {(K.PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL, f"{P}/gone")}, True, True),
    ("added_covered_by_partial", obj({}, additionalProperties=STR), obj({"s": STR}),
     {(K.PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL, f"{P}/s"),
      (K.OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL, f"{P}/s"),
      (K.ADDITIONAL_PROPERTIES_EXTENDED, "#/additionalProperties")}, True, False),
    ("added_not_covered_by_partial", obj({}, additionalProperties=STR),
     obj({"n": INT}, additionalProperties=STR),
     {(K.PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL, f"{P}/n"),
      (K.OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL, f"{P}/n"),
      (K.TYPE_CHANGED, f"{P}/n")}, False, False),
    ("removed_covered_by_pattern", obj({"x_1": STR}),
     obj({}, patternProperties={"^x_": STR}),
     {(K.PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL, f"{P}/x_1"),
      (K.KEYWORD_ADDED, "#/patternProperties")}, False, True),
    ("type_list_narrowed", {"type": ["string", "null"]}, {"type": "string"},
     {(K.TYPE_NARROWED, "#")}, False, True),
    ("type_list_widened", {"type": "string"}, {"type": ["string", "integer"]},
     {(K.TYPE_EXTENDED, "#")}, True, False),
    ("one_of_to_any_of", {"oneOf": [STR, INT]}, {"anyOf": [STR, INT]},
     {(K.COMBINED_TYPE_EXTENDED, "#")}, True, False),
    ("keyword_added", obj({"a": STR}), obj({"a": {**STR, "not": {"const": ""}}}),
     {(K.KEYWORD_ADDED, f"{P}/a/not")}, False, True),
    ("keyword_changed", {"contains": INT}, {"contains": STR},
     {(K.KEYWORD_CHANGED, "#/contains")}, False, False),
    ("boolean_schemas", {"type": "object", "properties": {"a": True}},
     {"type": "object", "properties": {"a": False}},
     {(K.TYPE_NARROWED, f"{P}/a")}, False, True),
    ("min_max_properties", obj({}, minProperties=1, maxProperties=9),
     obj({}, minProperties=2, maxProperties=5),
     {(K.MIN_PROPERTIES_INCREASED, "#/minProperties"),
      (K.MAX_PROPERTIES_DECREASED, "#/maxProperties")}, False, True),
    ("draft7_tuple_closed", {"type": "array", "items": [INT], "additionalItems": False},
     {"type": "array", "items": [INT, STR], "additionalItems": False},
     {(K.ITEM_ADDED_TO_CLOSED_CONTENT_MODEL, "#/prefixItems/1")}, True, False),
    ("tuple_item_removed_closed", {"type": "array", "prefixItems": [INT, STR], "items": False},
     {"type": "array", "prefixItems": [INT], "items": False},
     {(K.ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL, "#/prefixItems/1")}, False, True),
    ("tuple_rest_narrowed", {"type": "array", "prefixItems": [INT]},
     {"type": "array", "prefixItems": [INT], "items": STR},
     {(K.ADDITIONAL_ITEMS_NARROWED, "#/items")}, False, True),
    ("ref_with_escapes", {"$defs": {"a/b": STR}, "$ref": "#/$defs/a~1b"},
     {"$defs": {"c": {**STR, "maxLength": 2}}, "$ref": "#/$defs/c"},
     {(K.MAX_LENGTH_ADDED, "#/maxLength")}, False, True),
    ("escaped_property_name", obj({"a/b~c": INT}), obj({"a/b~c": STR}),
     {(K.TYPE_CHANGED, f"{P}/a~1b~0c")}, False, False),
    ("numbers_equal_across_types", obj({"n": {**INT, "maximum": 5}}),
     obj({"n": {**INT, "maximum": 5.0}}), set(), True, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "expected", "backward", "forward"),
    [case[1:] for case in HAND_WRITTEN],
    ids=[case[0] for case in HAND_WRITTEN],
)
def test_hand_written_schemas(
    old: dict[str, Any],
    new: dict[str, Any],
    expected: set[tuple[Kind, str]],
    backward: bool,
    forward: bool,
) -> None:
    assert kinds_and_paths(differences(old, new)) == expected
    assert (not check(Mode.BACKWARD, new, [old])) == backward
    assert (not check(Mode.FORWARD, new, [old])) == forward
    assert (not check(Mode.FULL, new, [old])) == (backward and forward)
    assert differences(new, new) == [] and differences(old, old) == []


def test_unreadable_schemas_are_refused() -> None:
    with pytest.raises(InvalidSchemaError, match="only references inside the schema"):
        differences({"$ref": "other.json#/a"}, {})
    with pytest.raises(InvalidSchemaError, match="cannot resolve"):
        differences({"$ref": "#/$defs/missing"}, {})
    with pytest.raises(InvalidSchemaError, match="refers to itself"):
        differences({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, {})
    with pytest.raises(InvalidSchemaError, match="properties must be an object"):
        differences({"type": "object", "properties": []}, {"type": "object"})
    with pytest.raises(InvalidSchemaError, match="the new schema must be"):
        differences({}, "nope")  # type: ignore[arg-type]
    assert issubclass(InvalidSchemaError, ValueError)


def test_recursive_models_terminate() -> None:
    first = json_schema(model("recursion", 1, tree=(Node, ...), other=(list[Node], ...)))
    second = json_schema(model("recursion", 2, tree=(ShortNode, ...), other=(list[Node], ...)))
    for old, new in ((first, second), (second, first), (first, first)):
        differences(old, new)
        for mode in ALL_MODES:
            check(mode, new, [old])


def test_every_kind_has_a_verdict_and_names_mirror_confluent() -> None:
    compatible = {kind for kind in Kind if kind.compatible}
    assert Kind.OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL in compatible
    assert Kind.REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL not in compatible
    assert Kind.TYPE_NARROWED not in compatible and Kind.TYPE_EXTENDED in compatible
    assert (
        Kind.MAX_LENGTH_DECREASED not in compatible and Kind.ENUM_ARRAY_NARROWED not in compatible
    )
    assert all(kind.value == kind.name for kind in Kind)
    # every *_INCREASED / *_DECREASED pair: exactly one of the two is compatible
    for kind in Kind:
        if kind.name.endswith("_INCREASED"):
            other = Kind[kind.name.replace("_INCREASED", "_DECREASED")]
            assert kind.compatible != other.compatible, kind


# -- upcasters -----------------------------------------------------------------------------


class UpOrderV1(EventModel, type="COMPAT_UP_ORDER", version=1):
    order_id: str
    total: float


class UpOrderV2(EventModel, type="COMPAT_UP_ORDER", version=2):
    order_id: str
    amount: float  # renamed
    currency: str  # required, no default


@UpOrderV2.upcaster(from_version=1)
def _order_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    rest = {key: value for key, value in data.items() if key != "total"}
    return {**rest, "amount": data["total"], "currency": "EUR"}


class UpOrderV3(EventModel, type="COMPAT_UP_ORDER", version=3):
    order_id: str
    amount: float
    currency: str
    note: str | None = None


@UpOrderV3.upcaster(from_version=2)
def _order_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return data


def test_an_upcaster_satisfies_backward() -> None:
    old, new = json_schema(UpOrderV1), json_schema(UpOrderV2)
    assert {i.kind for i in check(Mode.BACKWARD, new, [old])} == {
        Kind.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL
    }
    assert check_with_upcast(Mode.BACKWARD, UpOrderV2, [UpOrderV1]) == []
    assert check_with_upcast("BACKWARD_TRANSITIVE", UpOrderV3, [UpOrderV1, UpOrderV2]) == []


def test_upcasters_do_not_help_old_readers() -> None:
    forward = check(Mode.FORWARD, json_schema(UpOrderV2), [json_schema(UpOrderV1)])
    assert [(i.kind, i.path) for i in forward] == [
        (Kind.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL, "#/properties/total")
    ]
    assert check_with_upcast(Mode.FORWARD, UpOrderV2, [UpOrderV1]) == forward
    assert check_with_upcast(Mode.FULL, UpOrderV2, [UpOrderV1]) == forward


class UpNoteV1(EventModel, type="COMPAT_UP_NOTE", version=1):
    text: str


class UpNoteV2(EventModel, type="COMPAT_UP_NOTE", version=2):
    text: str
    pinned: bool = False


def test_a_missing_upcaster_is_reported_for_tidings_readers() -> None:
    assert check(Mode.BACKWARD, json_schema(UpNoteV2), [json_schema(UpNoteV1)]) == []
    [found] = check_with_upcast(Mode.BACKWARD, UpNoteV2, [UpNoteV1])
    assert found.kind is Kind.UPCASTER_MISSING
    assert found.breaks is Mode.BACKWARD
    assert found.message == (
        "#: COMPAT_UP_NOTE has no upcaster from version 1 to 2, and a tidings consumer reads "
        "v1 events only through upcasters (UPCASTER_MISSING) - breaks BACKWARD: consumers of "
        "v2 cannot read v1 data"
    )
    assert check_with_upcast(Mode.BACKWARD, UpNoteV2, [UpNoteV1], require_upcasters=False) == []
    assert check_with_upcast(Mode.FORWARD, UpNoteV2, [UpNoteV1]) == []


class UpChainV1(EventModel, type="COMPAT_UP_CHAIN", version=1):
    n: int


class UpChainV2(EventModel, type="COMPAT_UP_CHAIN", version=2):
    n: int
    m: int


class UpChainV3(EventModel, type="COMPAT_UP_CHAIN", version=3):
    n: int
    m: int


@UpChainV2.upcaster(from_version=1)
def _chain_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "m": 0}


def test_a_missing_step_breaks_the_chain_for_every_earlier_version() -> None:
    found = check_with_upcast(Mode.BACKWARD_TRANSITIVE, UpChainV3, [UpChainV1, UpChainV2])
    missing = [i for i in found if i.kind is Kind.UPCASTER_MISSING]
    assert [(i.writer, "from version 2 to 3" in i.detail) for i in missing] == [
        ("v1", True),
        ("v2", True),
    ]
    # without the chain, v1 -> v3 falls back to the schema rules: `m` is a new required field
    assert (Kind.REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL, "v1") in {
        (i.kind, i.writer) for i in found
    }


class UpBadV1(EventModel, type="COMPAT_UP_BAD", version=1):
    name: str
    size: int = pydantic.Field(ge=0)
    tag: str | None = None


class UpBadV2(EventModel, type="COMPAT_UP_BAD", version=2):
    name: str
    size: int
    tag: str  # now required: the upcaster forgets to fill it


@UpBadV2.upcaster(from_version=1)
def _bad_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data


class UpBoomV1(EventModel, type="COMPAT_UP_BOOM", version=1):
    name: str


class UpBoomV2(EventModel, type="COMPAT_UP_BOOM", version=2):
    name: str


@UpBoomV2.upcaster(from_version=1)
def _boom_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("kaboom")


def test_upcasters_run_on_samples_of_the_old_schema() -> None:
    found = check_with_upcast(Mode.BACKWARD, UpBadV2, [UpBadV1])
    # the minimal sample (tag null: v1 writes its defaults) fails; the full one (tag set) passes
    [failed] = found
    assert failed.kind is Kind.UPCAST_FAILED
    assert failed.detail.startswith("the upcasters do not turn a minimal v1 sample ")
    assert failed.detail == (
        "the upcasters do not turn a minimal v1 sample {'name': '', 'size': 0, 'tag': None} "
        "into valid v2 data: invalid COMPAT_UP_BAD version 2 data for UpBadV2: 1 error; "
        "tag: Input should be a valid string"
    )
    assert check_with_upcast(Mode.BACKWARD, UpBadV2, [UpBadV1], verify=False) == []

    [boom] = check_with_upcast(Mode.BACKWARD, UpBoomV2, [UpBoomV1])  # one failure is enough
    assert boom.kind is Kind.UPCAST_FAILED
    assert boom.detail.startswith("the upcasters do not turn a minimal v1 sample {'name': ''}")
    assert "KeyError: 'kaboom'" in boom.detail


def test_check_with_upcast_refuses_mismatched_models() -> None:
    with pytest.raises(TypeError, match="not older"):
        check_with_upcast(Mode.BACKWARD, UpOrderV1, [UpOrderV2])
    with pytest.raises(TypeError, match="is a COMPAT_UP_NOTE event"):
        check_with_upcast(Mode.BACKWARD, UpOrderV2, [UpNoteV1])
    with pytest.raises(TypeError, match="needs an EventModel subclass"):
        check_with_upcast(Mode.BACKWARD, dict, [UpOrderV1])  # type: ignore[arg-type]
    assert check_with_upcast(Mode.NONE, UpOrderV2, [UpOrderV1]) == []
    assert check_with_upcast(Mode.BACKWARD, UpOrderV2, []) == []


class Everything(EventModel, type="COMPAT_SAMPLES"):
    order_id: str = pydantic.Field(min_length=3, max_length=8, pattern="^[a-z]+$")
    when: datetime.datetime
    price: float = pydantic.Field(gt=0, lt=10, multiple_of=0.5)
    count: int = pydantic.Field(ge=5, le=7)
    colour: Colour = Colour.RED
    items: list[Item] = pydantic.Field(min_length=1)
    pay: PAYMENT
    pair: tuple[int, str]
    tags: set[str] = set()
    extra: dict[str, int] = {}
    maybe: Item | None = None
    tree: Node | None = None


def test_samples_are_valid_data_of_the_schema() -> None:
    built = samples(json_schema(Everything))
    assert [name for name, _ in built] == ["minimal", "full"]
    for _, sample in built:
        Everything.model_validate(sample)
    minimal, full = (sample for _, sample in built)
    assert "maybe" not in minimal and full["maybe"] is not None
    assert samples({"type": "string", "pattern": "^[0-9]{4}-zz$"}) == []  # no candidate fits
