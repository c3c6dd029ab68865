"""Typed event models: versions, upcasters, the camelCase wire format and schema errors.

The registry of event models is process-wide, so every test declares its own event type.
"""

import uuid
from typing import Any

import pydantic
import pytest

from tidings.errors import TidingsError
from tidings.event import Event, decode_event, encode_event
from tidings.schema import EventModel, SchemaError, WireModel, json_schema, registered

# The article's ORDER_PLACED (Pattern 4), under a name no example service will declare.
ORDER_PLACED = "TEST_SCHEMA_ORDER_PLACED"


class OrderItem(WireModel):
    product_id: str
    quantity: int
    price: float


class OrderPlacedV1(EventModel, type=ORDER_PLACED, version=1):
    order_id: str
    user_id: str
    items: list[OrderItem]
    total: float


class OrderPlaced(EventModel, type=ORDER_PLACED, version=2):
    order_id: str
    user_id: str
    items: list[OrderItem]
    total: float
    currency: str
    discount_code: str | None = None


@OrderPlaced.upcaster(from_version=1)
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "USD"}


def _items() -> list[OrderItem]:
    return [
        OrderItem(product_id="p-1", quantity=2, price=10.0),
        OrderItem(product_id="p-2", quantity=1, price=5.5),
    ]


def _v2_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "orderId": "o-1",
        "userId": "u-1",
        "items": [{"productId": "p-1", "quantity": 2, "price": 10.0}],
        "total": 20.0,
        "currency": "EUR",
    }
    data.update(changes)
    return data


def _unique_type(label: str) -> str:
    return f"TEST_{label}_{uuid.uuid4().hex[:8]}"


# --- the article's example, end to end -------------------------------------------------------


def test_a_v1_event_is_read_as_v2_with_the_default_currency() -> None:
    v1 = OrderPlacedV1(order_id="o-1", user_id="u-1", items=_items(), total=25.5)
    event = v1.to_event(key="o-1", source="order-service")
    assert (event.type, event.version) == (ORDER_PLACED, 1)
    assert "currency" not in event.data

    order = OrderPlaced.from_event(decode_event(encode_event(event)))

    assert order == OrderPlaced(
        order_id="o-1",
        user_id="u-1",
        items=_items(),
        total=25.5,
        currency="USD",
        discount_code=None,
    )
    assert "currency" not in event.data, "reading must not modify the event"


def test_v2_round_trip_keeps_the_model_and_the_envelope() -> None:
    order = OrderPlaced(
        order_id="o-2",
        user_id="u-2",
        items=_items(),
        total=25.5,
        currency="EUR",
        discount_code="SPRING",
    )
    event = order.to_event(
        key="o-2",
        source="order-service",
        headers={"tenant": "acme"},
        correlation_id="corr-1",
        causation_id="cause-1",
    )

    assert (event.type, event.version) == (ORDER_PLACED, 2)
    assert event.key == "o-2"
    assert event.source == "order-service"
    assert event.headers == {"tenant": "acme"}
    assert (event.correlation_id, event.causation_id) == ("corr-1", "cause-1")
    assert OrderPlaced.from_event(event) == order
    assert OrderPlaced.from_event(decode_event(encode_event(event))) == order


def test_to_event_defaults_start_a_new_chain() -> None:
    event = OrderPlacedV1(order_id="o", user_id="u", items=[], total=0).to_event()
    assert event.key is None
    assert event.source == ""
    assert event.headers == {}
    assert event.correlation_id == event.id
    assert event.causation_id is None


def test_the_wire_is_camel_case() -> None:
    order = OrderPlaced(order_id="o-3", user_id="u-3", items=_items(), total=25.5, currency="EUR")
    data = order.to_event().data

    assert data == {
        "orderId": "o-3",
        "userId": "u-3",
        "items": [
            {"productId": "p-1", "quantity": 2, "price": 10.0},
            {"productId": "p-2", "quantity": 1, "price": 5.5},
        ],
        "total": 25.5,
        "currency": "EUR",
        "discountCode": None,
    }


def test_a_nested_plain_pydantic_model_keeps_its_own_field_names() -> None:
    class Line(pydantic.BaseModel):
        product_id: str

    class Basket(EventModel, type=_unique_type("BASKET")):
        basket_id: str
        lines: list[Line]

    basket = Basket(basket_id="b", lines=[Line(product_id="p")])
    event = basket.to_event()

    assert event.data == {"basketId": "b", "lines": [{"product_id": "p"}]}
    assert Basket.from_event(event) == basket


def test_snake_case_is_accepted_by_name() -> None:
    snake = {
        "order_id": "o-4",
        "user_id": "u-4",
        "items": [{"product_id": "p-1", "quantity": 1, "price": 1.0}],
        "total": 1.0,
        "currency": "EUR",
        "discount_code": "X",
    }
    order = OrderPlaced.from_event(Event(type=ORDER_PLACED, version=2, data=snake))
    assert order.order_id == "o-4"
    assert order.items[0].product_id == "p-1"
    assert order.discount_code == "X"
    assert OrderPlaced.model_validate(snake) == order


def test_unknown_fields_are_ignored() -> None:
    data = _v2_data(giftWrap=True, items=[{"productId": "p", "quantity": 1, "price": 1, "x": 1}])
    order = OrderPlaced.from_event(Event(type=ORDER_PLACED, version=2, data=data))
    assert order.order_id == "o-1"
    assert "giftWrap" not in order.model_dump(by_alias=True)
    assert order.items == [OrderItem(product_id="p", quantity=1, price=1.0)]


def test_models_are_frozen() -> None:
    order = OrderPlaced.model_validate(_v2_data())
    with pytest.raises(pydantic.ValidationError):
        order.total = 0.0
    with pytest.raises(pydantic.ValidationError):
        order.items[0].price = 0.0


def test_class_variables_expose_type_and_version() -> None:
    assert (OrderPlacedV1.event_type, OrderPlacedV1.event_version) == (ORDER_PLACED, 1)
    assert (OrderPlaced.event_type, OrderPlaced.event_version) == (ORDER_PLACED, 2)
    assert "event_type" not in OrderPlaced.model_fields
    assert "event_version" not in OrderPlaced.model_fields


# --- reading refuses what it cannot read -----------------------------------------------------


def test_a_newer_version_is_refused() -> None:
    event = Event(type=ORDER_PLACED, version=3, data=_v2_data())
    with pytest.raises(SchemaError) as caught:
        OrderPlaced.from_event(event)
    assert str(caught.value) == f"{ORDER_PLACED} version 3 is newer than the handler's version 2"


def test_an_older_model_refuses_a_newer_event() -> None:
    event = OrderPlaced.model_validate(_v2_data()).to_event()
    with pytest.raises(SchemaError, match="version 2 is newer than the handler's version 1"):
        OrderPlacedV1.from_event(event)


def test_a_missing_upcaster_step_is_refused() -> None:
    kind = _unique_type("GAP")

    class GapV3(EventModel, type=kind, version=3):
        name: str

    @GapV3.upcaster(from_version=2)
    def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        return data

    assert GapV3.from_event(Event(type=kind, version=2, data={"name": "n"})).name == "n"
    with pytest.raises(SchemaError) as caught:
        GapV3.from_event(Event(type=kind, version=1, data={"name": "n"}))
    assert str(caught.value) == (
        f"{kind} has no upcaster from version 1 to 2, needed to read version 1 as version 3"
    )


def test_upcasters_run_in_order_and_are_shared_by_the_models_of_a_type() -> None:
    kind = _unique_type("CHAIN")

    class ChainV2(EventModel, type=kind, version=2):
        steps: list[str]

    class ChainV3(EventModel, type=kind, version=3):
        steps: list[str]

    @ChainV2.upcaster(from_version=1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"steps": [*data["steps"], "v2"]}

    @ChainV3.upcaster(from_version=2)
    def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        return {"steps": [*data["steps"], "v3"]}

    v1 = Event(type=kind, version=1, data={"steps": ["v1"]})
    assert ChainV3.from_event(v1).steps == ["v1", "v2", "v3"]
    assert ChainV2.from_event(v1).steps == ["v1", "v2"]
    assert ChainV3.from_event(Event(type=kind, version=2, data={"steps": []})).steps == ["v3"]


def test_an_upcaster_that_raises_is_a_schema_error_with_its_cause() -> None:
    kind = _unique_type("BROKEN")

    class Broken(EventModel, type=kind, version=2):
        amount: int

    @Broken.upcaster(from_version=1)
    def _explode(data: dict[str, Any]) -> dict[str, Any]:
        return {"amount": data["cents"] // 100}

    with pytest.raises(SchemaError) as caught:
        Broken.from_event(Event(type=kind, version=1, data={"amount": 5}))
    message = str(caught.value)
    assert message.startswith(f"{kind} upcaster from version 1 to 2 (")
    assert "_explode" in message
    assert message.endswith("failed: KeyError: 'cents'")
    assert isinstance(caught.value.__cause__, KeyError)


def test_an_upcaster_that_returns_no_dict_is_a_schema_error() -> None:
    kind = _unique_type("NODICT")

    class NoDict(EventModel, type=kind, version=2):
        amount: int

    @NoDict.upcaster(from_version=1)
    def _forgot_return(data: dict[str, Any]) -> dict[str, Any]:
        data["amount"] = 1
        return None  # type: ignore[return-value]

    with pytest.raises(SchemaError, match="returned NoneType, not a dict"):
        NoDict.from_event(Event(type=kind, version=1, data={}))


def test_an_upcaster_cannot_modify_the_event() -> None:
    kind = _unique_type("INPLACE")

    class InPlace(EventModel, type=kind, version=2):
        lines: list[dict[str, int]]

    @InPlace.upcaster(from_version=1)
    def _in_place(data: dict[str, Any]) -> dict[str, Any]:
        for line in data["lines"]:
            line["qty"] = line.pop("quantity")
        return data

    event = Event(type=kind, version=1, data={"lines": [{"quantity": 2}]})
    assert InPlace.from_event(event).lines == [{"qty": 2}]
    assert event.data == {"lines": [{"quantity": 2}]}
    assert InPlace.from_event(event).lines == [{"qty": 2}], "a retry reads the same data"


def test_validation_errors_name_each_field_on_its_own_line() -> None:
    data = _v2_data(items=[{"productId": "p", "quantity": "many", "price": 1.0}])
    del data["orderId"]
    with pytest.raises(SchemaError) as caught:
        OrderPlaced.from_event(Event(type=ORDER_PLACED, version=2, data=data))

    lines = str(caught.value).splitlines()
    assert lines[0] == f"invalid {ORDER_PLACED} version 2 data for OrderPlaced: 2 errors"
    assert lines[1] == "  orderId: Field required"
    assert lines[2].startswith("  items[0].quantity: Input should be a valid integer")
    assert len(lines) == 3
    assert "many" not in str(caught.value), "input values (maybe personal data) are left out"
    assert caught.value.__cause__ is None


def test_validation_of_upcast_data_is_reported_against_the_target_model() -> None:
    data = {"orderId": "o", "userId": "u", "items": [], "total": "lots"}
    with pytest.raises(SchemaError) as caught:
        OrderPlaced.from_event(Event(type=ORDER_PLACED, version=1, data=data))
    assert str(caught.value).splitlines()[1:] == [
        "  total: Input should be a valid number, unable to parse string as a number"
    ]


def test_a_long_list_of_validation_errors_is_cut_short() -> None:
    data = _v2_data(items=[{"productId": i} for i in range(30)])
    with pytest.raises(SchemaError) as caught:
        OrderPlaced.from_event(Event(type=ORDER_PLACED, version=2, data=data))
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("90 errors")
    assert len(lines) == 1 + 20 + 1
    assert lines[-1] == "  ... and 70 more"


def test_a_model_level_error_has_a_readable_path() -> None:
    kind = _unique_type("RANGE")

    class Range(EventModel, type=kind):
        low: int
        high: int

        @pydantic.model_validator(mode="after")
        def _ordered(self) -> "Range":
            if self.low > self.high:
                raise ValueError("low is above high")
            return self

    with pytest.raises(SchemaError) as caught:
        Range.from_event(Event(type=kind, data={"low": 2, "high": 1}))
    assert str(caught.value).splitlines()[1] == "  (data): Value error, low is above high"


def test_another_event_type_is_refused() -> None:
    with pytest.raises(SchemaError) as caught:
        OrderPlaced.from_event(Event(type="PAYMENT_DONE", version=2, data=_v2_data()))
    assert str(caught.value) == f"cannot read a PAYMENT_DONE event as OrderPlaced ({ORDER_PLACED})"


@pytest.mark.parametrize(
    ("data", "kind"),
    [(None, "NoneType"), ([1, 2], "list"), (b"{}", "bytes"), ("text", "str")],
)
@pytest.mark.parametrize("version", [1, 2])
def test_data_that_is_not_an_object_is_refused(data: Any, kind: str, version: int) -> None:
    with pytest.raises(SchemaError) as caught:
        OrderPlaced.from_event(Event(type=ORDER_PLACED, version=version, data=data))
    assert str(caught.value) == (
        f"{ORDER_PLACED} version {version} data must be a JSON object, got {kind}"
    )


def test_schema_errors_are_tidings_value_errors() -> None:
    assert issubclass(SchemaError, TidingsError)
    assert issubclass(SchemaError, ValueError)
    assert "never worth retrying" in (SchemaError.__doc__ or "")


# --- declaring models and upcasters ----------------------------------------------------------


def test_two_classes_for_one_type_and_version_are_refused() -> None:
    kind = _unique_type("DUP")

    class First(EventModel, type=kind, version=1):
        a: int

    with pytest.raises(TypeError) as caught:

        class Second(EventModel, type=kind, version=1):
            a: int

    message = str(caught.value)
    assert f"{kind} version 1 is already declared by" in message
    assert "First" in message
    assert "Second" in message
    assert dict(((t, v), m) for t, v, m in registered())[kind, 1] is First


def test_redeclaring_the_same_qualified_name_replaces_the_model() -> None:
    kind = _unique_type("RELOAD")

    def declare() -> type[EventModel]:
        class Reloaded(EventModel, type=kind, version=1):
            a: int

        return Reloaded

    first = declare()
    second = declare()
    assert first is not second
    assert [m for t, _, m in registered() if t == kind] == [second]
    assert second.from_event(Event(type=kind, data={"a": 1})) == second.model_validate({"a": 1})


def test_a_subclass_of_an_event_model_declares_a_new_version() -> None:
    kind = _unique_type("GROW")

    class GrowV1(EventModel, type=kind, version=1):
        a: int

    class GrowV2(GrowV1, type=kind, version=2):
        b: int = 0

    assert (GrowV1.event_version, GrowV2.event_version) == (1, 2)
    assert list(GrowV2.model_fields) == ["a", "b"]
    with pytest.raises(TypeError, match="missing the class keyword `type=`"):

        class GrowV3(GrowV2):
            c: int = 0


def test_a_mixin_shares_fields_and_model_config_can_be_overridden() -> None:
    class Audited(pydantic.BaseModel):
        changed_by: str

    class Strict(EventModel, Audited, type=_unique_type("STRICT")):
        model_config = pydantic.ConfigDict(extra="forbid")
        item_id: str

    assert Strict.model_config["frozen"] is True
    model = Strict(changed_by="me", item_id="i")
    assert model.to_event().data == {"changedBy": "me", "itemId": "i"}
    with pytest.raises(SchemaError, match="unknown: Extra inputs are not permitted"):
        Strict.from_event(
            Event(type=Strict.event_type, data={"changedBy": "me", "itemId": "i", "unknown": 1})
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "is missing the class keyword `type=`"),
        ({"type": ""}, "needs `type=` to be a non-empty string, got ''"),
        ({"type": 5}, "needs `type=` to be a non-empty string, got 5"),
        ({"type": "T", "version": 0}, "needs `version=` to be an integer >= 1, got 0"),
        ({"type": "T", "version": -1}, "needs `version=` to be an integer >= 1, got -1"),
        ({"type": "T", "version": True}, "needs `version=` to be an integer >= 1, got True"),
        ({"type": "T", "version": "2"}, "needs `version=` to be an integer >= 1, got '2'"),
    ],
)
def test_bad_class_keywords_are_refused(kwargs: dict[str, Any], message: str) -> None:
    count = len(registered())
    with pytest.raises(TypeError) as caught:
        pydantic.create_model("Bad", __base__=EventModel, __cls_kwargs__=kwargs, a=(int, ...))
    assert str(caught.value).startswith("event model Bad ")
    assert message in str(caught.value)
    assert len(registered()) == count


def test_missing_type_in_a_class_statement_is_refused() -> None:
    with pytest.raises(
        TypeError, match=r"event model .*Untyped is missing the class keyword `type=`"
    ):

        class Untyped(EventModel):
            a: int


def test_unknown_class_keywords_are_refused() -> None:
    with pytest.raises(TypeError):

        class Odd(EventModel, type=_unique_type("ODD"), colour="red"):
            a: int


@pytest.mark.parametrize("from_version", [0, 3, 4, -1, True, "1"])
def test_upcaster_versions_out_of_range_are_refused(from_version: Any) -> None:
    class Target(EventModel, type=_unique_type("RANGE"), version=3):
        a: int

    with pytest.raises(TypeError, match=r"needs 1 <= from_version < 3"):
        Target.upcaster(from_version=from_version)


def test_a_version_1_model_cannot_have_upcasters() -> None:
    with pytest.raises(TypeError, match=r"needs 1 <= from_version < 1, got 1"):
        OrderPlacedV1.upcaster(from_version=1)


def test_a_second_upcaster_for_a_step_is_refused() -> None:
    kind = _unique_type("TWICE")

    class TwiceV2(EventModel, type=kind, version=2):
        a: int

    class TwiceV3(EventModel, type=kind, version=3):
        a: int

    @TwiceV2.upcaster(from_version=1)
    def _first(data: dict[str, Any]) -> dict[str, Any]:
        return data

    with pytest.raises(TypeError) as caught:

        @TwiceV3.upcaster(from_version=1)
        def _second(data: dict[str, Any]) -> dict[str, Any]:
            return data

    message = str(caught.value)
    assert f"{kind} already has an upcaster from version 1 to 2" in message
    assert "_first" in message
    assert "_second" in message


def test_reregistering_an_upcaster_of_the_same_name_replaces_it() -> None:
    kind = _unique_type("REUP")

    class ReUp(EventModel, type=kind, version=2):
        source: str

    def register(label: str) -> None:
        @ReUp.upcaster(from_version=1)
        def _up(data: dict[str, Any]) -> dict[str, Any]:
            return {"source": label}

    register("first")
    register("second")
    assert ReUp.from_event(Event(type=kind, data={})).source == "second"


def test_the_decorator_returns_the_function() -> None:
    class Plain(EventModel, type=_unique_type("PLAIN"), version=2):
        a: int

    def up(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "a": 1}

    assert Plain.upcaster(from_version=1)(up) is up
    assert up({}) == {"a": 1}


# --- tooling ----------------------------------------------------------------------------------


def test_json_schema_describes_the_wire_format() -> None:
    schema = json_schema(OrderPlaced)

    assert schema["title"] == ORDER_PLACED
    assert schema["x-tidings-version"] == 2
    assert schema["type"] == "object"
    assert list(schema["properties"]) == [
        "orderId",
        "userId",
        "items",
        "total",
        "currency",
        "discountCode",
    ]
    assert schema["required"] == ["orderId", "userId", "items", "total", "currency"]
    item = schema["$defs"]["OrderItem"]
    assert list(item["properties"]) == ["productId", "quantity", "price"]
    assert schema["properties"]["items"]["items"] == {"$ref": "#/$defs/OrderItem"}

    v1 = json_schema(OrderPlacedV1)
    assert (v1["title"], v1["x-tidings-version"]) == (ORDER_PLACED, 1)
    assert "currency" not in v1["properties"]


def test_json_schema_accepts_only_event_models() -> None:
    for bad in (EventModel, OrderItem, dict, OrderPlaced.model_validate(_v2_data())):
        with pytest.raises(TypeError, match="needs an EventModel subclass"):
            json_schema(bad)  # type: ignore[arg-type]


def test_registered_lists_models_sorted_by_type_and_version() -> None:
    kind = _unique_type("LIST")

    class ListV2(EventModel, type=kind, version=2):
        a: int

    class ListV1(EventModel, type=kind, version=1):
        a: int

    entries = registered()
    assert [(t, v) for t, v, _ in entries] == sorted((t, v) for t, v, _ in entries)
    assert [(v, m) for t, v, m in entries if t == kind] == [(1, ListV1), (2, ListV2)]
    assert (ORDER_PLACED, 1, OrderPlacedV1) in entries
    assert (ORDER_PLACED, 2, OrderPlaced) in entries
