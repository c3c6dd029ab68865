"""tidings.asyncapi: the AsyncAPI 3.0 document of a set of services, validated against the
official AsyncAPI 3.0.0 JSON Schema (vendored from `@asyncapi/specs`, see tests/asyncapi/)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import pytest
import yaml
from examples.orders import events as shop
from examples.orders.services import build_all
from examples.orders.settings import Settings
from pydantic import Field
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tidings import Context, Event, EventModel, Service, WireModel, dlq, to_cloudevent
from tidings.asyncapi import document, dumps
from tidings.errors import ConfigError
from tidings.event import to_kafka_binary

SCHEMA = Path(__file__).parent / "asyncapi" / "schema-3.0.0-without-id.json"
EVENT_TOPICS = {"order-events", "inventory-events", "payment-events"}
SERVICES = {"orders", "inventory", "payment", "email", "analytics", "fulfillment", "loyalty"}


@cache
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def assert_valid(doc: dict[str, Any]) -> None:
    errors = sorted(validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    described = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors]
    assert described == []
    assert_refs_resolve(doc)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for token in ref[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for item in value.values() for r in refs(item)]
    if isinstance(value, list):
        return [r for item in value for r in refs(item)]
    return []


def assert_refs_resolve(doc: dict[str, Any]) -> None:
    """Every `$ref` points at something in the document, and every operation's messages are
    messages of its own channel (AsyncAPI 3 requires both; its JSON Schema checks neither)."""
    for ref in refs(doc):
        resolve(doc, ref)
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation.get("messages", []):
            assert message["$ref"].startswith(channel + "/messages/"), (name, message)


def payload_validator(doc: dict[str, Any], pointer: str) -> jsonschema.Draft7Validator:
    """A validator of the schema at `pointer` in `doc`, its `$ref`s resolved in the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi", Resource.from_contents(doc, default_specification=DRAFT7)
    )
    return jsonschema.Draft7Validator({"$ref": f"urn:asyncapi#{pointer}"}, registry=registry)


def order_services() -> list[Service]:
    return list(build_all(Settings()).values())


# the order example -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broker_url",
    [
        None,
        "sqlite:///.tidings/bus.db",
        "sqlite:////var/lib/shop/bus.db",
        "memory://",
        "memory://shop",
        "kafka://127.0.0.1:59092",
        "kafka://k1:9092,k2:9093,k3?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512",
        "kafka://k1?security.protocol=SSL&ssl.certificate.location=/etc/c.pem",
    ],
)
def test_the_order_system_document_is_valid_asyncapi_3(broker_url: str | None) -> None:
    doc = document(order_services(), title="Shop", version="2.1.0", broker_url=broker_url)
    assert_valid(doc)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "Shop" and doc["info"]["version"] == "2.1.0"
    assert "**inventory**" in doc["info"]["description"]
    assert doc["defaultContentType"] == "application/cloudevents+json"
    assert ("servers" in doc) == (broker_url is not None)


def test_servers_follow_the_broker_url() -> None:
    def servers(url: str) -> dict[str, Any]:
        result: dict[str, Any] = document(order_services(), broker_url=url)["servers"]
        return result

    assert servers("kafka://k1:9092,k2:9093,k3") == {
        "kafka-1": {
            "host": "k1:9092",
            "protocol": "kafka",
            "description": "Apache Kafka broker: bootstrap server 1 of 3, one cluster.",
        },
        "kafka-2": {
            "host": "k2:9093",
            "protocol": "kafka",
            "description": "Apache Kafka broker: bootstrap server 2 of 3, one cluster.",
        },
        "kafka-3": {
            "host": "k3:9092",
            "protocol": "kafka",
            "description": "Apache Kafka broker: bootstrap server 3 of 3, one cluster.",
        },
    }
    assert servers("kafka://127.0.0.1:59092")["kafka"]["host"] == "127.0.0.1:59092"
    embedded = servers("sqlite:///.tidings/bus.db")["embedded"]
    assert embedded["protocol"] == "tidings-sqlite" and "pathname" not in embedded
    assert "`.tidings/bus.db` (relative to the working directory)" in embedded["description"]
    absolute = servers("sqlite:////var/lib/shop/bus.db?synchronous=full")["embedded"]
    assert absolute["pathname"] == "/var/lib/shop/bus.db"
    assert "synchronous" not in json.dumps(absolute)
    assert servers("memory://shop") == {
        "memory": {
            "host": "localhost",
            "pathname": "/shop",
            "protocol": "tidings-memory",
            "description": "tidings' in-memory broker `shop`, for tests: shared only by the "
            "services of one Python process, lost when it exits.",
        }
    }


def test_no_secret_of_the_broker_url_reaches_the_document() -> None:
    url = (
        "kafka://alice:s3cr3t-in-netloc@k1:9092,k2:9092?security.protocol=SASL_SSL"
        "&sasl.mechanism=SCRAM-SHA-256&sasl.username=alice-the-user&sasl.password=hunter2"
        "&ssl.key.password=k3y-pass&ssl.certificate.location=/etc/tidings/client.pem"
        "&producer.sasl.oauthbearer.client.secret=0auth-secret&group_prefix=shop-"
    )
    doc = document(order_services(), broker_url=url)
    assert_valid(doc)
    text = dumps(doc, "json") + dumps(doc, "yaml")
    for secret in ("s3cr3t", "alice", "hunter2", "k3y-pass", "0auth", "client.pem", "password"):
        assert secret not in text, secret
    assert doc["servers"]["kafka-1"] == {
        "host": "k1:9092",
        "protocol": "kafka-secure",
        "description": "Apache Kafka broker (TLS): bootstrap server 1 of 2, one cluster.",
        "security": [
            {"$ref": "#/components/securitySchemes/kafka-sasl"},
            {"$ref": "#/components/securitySchemes/kafka-x509"},
        ],
    }
    assert doc["components"]["securitySchemes"] == {
        "kafka-sasl": {
            "type": "scramSha256",
            "description": "SASL/SCRAM-SHA-256; credentials are not part of this document.",
        },
        "kafka-x509": {"type": "X509", "description": "A TLS client certificate."},
    }
    # the consumer group prefix is no secret, and it is the group each handler consumes in
    receive = doc["operations"]["inventory.reserve.receive.order-events"]
    assert receive["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["shop-inventory"]}


def test_channels_are_the_topics_and_the_dead_letter_topics() -> None:
    services = order_services()
    doc = document(services)
    dead_letters = {f"{name}.dlq" for name in SERVICES}
    assert set(doc["channels"]) == EVENT_TOPICS | dead_letters
    assert list(doc["channels"])[:3] == sorted(EVENT_TOPICS)  # event topics first
    for topic, channel in doc["channels"].items():
        assert channel["address"] == topic
    orders = doc["channels"]["order-events"]
    assert set(orders["messages"]) == {
        "ORDER_PLACED.v1",
        "ORDER_PLACED.v2",
        "ORDER_CONFIRMED.v1",
        "ORDER_REJECTED.v1",
        "ORDER_CANCELLED.v1",
    }
    assert orders["bindings"] == {"kafka": {"partitions": 4, "bindingVersion": "0.5.0"}}
    assert "murmur2" in orders["description"] and "key" in orders["description"]
    assert "Published by: orders." in orders["description"]
    assert "inventory.reserve" in orders["description"]
    assert set(doc["channels"]["inventory-events"]["messages"]) == {
        "INVENTORY_RESERVED.v1",
        "INVENTORY_RESERVATION_FAILED.v1",
    }
    assert set(doc["channels"]["payment-events"]["messages"]) == {
        "PAYMENT_CHARGED.v1",
        "PAYMENT_FAILED.v1",
    }
    dlq_channel = doc["channels"]["inventory.dlq"]
    assert dlq_channel["messages"] == {
        "tidings.DeadLetter": {"$ref": "#/components/messages/tidings.DeadLetter"}
    }
    assert dlq_channel["bindings"]["kafka"] == {
        "partitions": 1,
        "topicConfiguration": {"retention.ms": -1, "retention.bytes": -1},
        "bindingVersion": "0.5.0",
    }


def test_an_operation_per_handler_and_topic_publication_and_dead_letter_topic() -> None:
    services = order_services()
    doc = document(services)
    expected = {}
    for service in services:
        for topic in service.publications:
            expected[f"{service.name}.send.{topic}"] = ("send", topic)
        for handler in service.handlers:
            for topic in handler.topics:
                expected[f"{service.name}.{handler.name}.receive.{topic}"] = ("receive", topic)
        expected[f"{service.name}.send.{service.name}.dlq"] = ("send", f"{service.name}.dlq")
    found = {
        name: (op["action"], op["channel"]["$ref"].removeprefix("#/channels/"))
        for name, op in doc["operations"].items()
    }
    assert found == expected
    assert len(found) == 25
    assert "inventory.reserve.receive.order-events" in found
    assert "analytics.track.receive.payment-events" in found

    def messages(operation: str) -> list[str]:
        return [m["$ref"].rpartition("/")[2] for m in doc["operations"][operation]["messages"]]

    # a v2 handler receives v1 too (upcast); typed handlers receive their type only
    assert messages("inventory.reserve.receive.order-events") == [
        "ORDER_PLACED.v1",
        "ORDER_PLACED.v2",
    ]
    assert messages("payment.charge.receive.inventory-events") == ["INVENTORY_RESERVED.v1"]
    # a handler taking tidings.Event receives every message of its topics
    assert set(messages("analytics.track.receive.order-events")) == set(
        doc["channels"]["order-events"]["messages"]
    )
    assert messages("orders.send.order-events") == [
        "ORDER_CANCELLED.v1",
        "ORDER_CONFIRMED.v1",
        "ORDER_PLACED.v1",
        "ORDER_PLACED.v2",
        "ORDER_REJECTED.v1",
    ]
    assert messages("orders.send.orders.dlq") == ["tidings.DeadLetter"]
    reserve = doc["operations"]["inventory.reserve.receive.order-events"]
    assert reserve["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["inventory"]}
    assert "inbox `inventory.reserve`" in reserve["description"]
    assert "`inventory.dlq`" in reserve["description"]


def test_a_message_per_event_type_and_version_with_its_schema() -> None:
    doc = document(order_services())
    messages = doc["components"]["messages"]
    schemas = doc["components"]["schemas"]
    assert {"ORDER_PLACED.v1", "ORDER_PLACED.v2"} <= set(messages)
    v1, v2 = messages["ORDER_PLACED.v1"], messages["ORDER_PLACED.v2"]
    assert (v1["name"], v1["title"]) == ("ORDER_PLACED", "ORDER_PLACED v1")
    assert (v2["name"], v2["title"]) == ("ORDER_PLACED", "ORDER_PLACED v2")
    assert v2["contentType"] == "application/cloudevents+json"
    assert v2["x-tidings-model"] == "examples.orders.events.OrderPlaced"
    assert v2["correlationId"] == {"$ref": "#/components/correlationIds/tidings.correlationid"}
    assert resolve(doc, v2["correlationId"]["$ref"])["location"] == (
        "$message.payload#/correlationid"
    )
    key = resolve(doc, v2["bindings"]["$ref"])["kafka"]["key"]
    assert key["type"] == "string" and "murmur2" in key["description"]
    envelope = v2["payload"]["allOf"][1]["properties"]
    assert envelope["type"] == {"type": "string", "const": "ORDER_PLACED"}
    assert envelope["typeversion"] == {"type": "integer", "const": 2}
    assert envelope["data"] == {"$ref": "#/components/schemas/ORDER_PLACED.v2"}
    data_v1, data_v2 = schemas["ORDER_PLACED.v1"], schemas["ORDER_PLACED.v2"]
    assert "currency" in data_v2["properties"] and "currency" not in data_v1["properties"]
    assert data_v2["required"] == ["orderId", "userId", "items", "total", "currency"]
    assert data_v2["x-tidings-version"] == 2
    # pydantic's $defs moved to components/schemas, shared by every model that uses them
    assert data_v2["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert data_v1["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Item"}
    assert schemas["Item"]["required"] == ["productId", "quantity", "price"]
    assert "$defs" not in json.dumps(doc)
    # headers: the record headers of both modes; the binary ones are the ce_* attributes
    headers = resolve(doc, v2["headers"]["$ref"])["properties"]
    assert {
        "content-type",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_typeversion",
        "ce_partitionkey",
        "ce_correlationid",
        "ce_causationid",
        "ce_traceparent",
    } <= set(headers)
    letter = messages["tidings.DeadLetter"]
    dlq_headers = resolve(doc, letter["headers"]["$ref"])
    assert dlq.REASON in dlq_headers["required"]
    assert set(dlq_headers["properties"][dlq.REASON]["enum"]) >= {"retries-exhausted"}


def test_events_as_tidings_writes_them_match_their_messages() -> None:
    doc = document(order_services())
    item = shop.Item(product_id="mouse", quantity=2, price=19.5)
    placed = shop.OrderPlaced(
        order_id="o-1", user_id="ada", items=[item], total=39.0, currency="EUR"
    ).to_event(key="o-1", source="orders", headers={"tenant": "t1"}, causation_id="c-0")
    structured = to_cloudevent(placed)
    v2 = payload_validator(doc, "/components/messages/ORDER_PLACED.v2/payload")
    v1 = payload_validator(doc, "/components/messages/ORDER_PLACED.v1/payload")
    assert list(v2.iter_errors(structured)) == []
    assert not v1.is_valid(structured)  # typeversion 2 is not a v1 message
    old = shop.OrderPlacedV1(order_id="o-2", user_id="bob", items=[item], total=39.0).to_event()
    assert v1.is_valid(to_cloudevent(old)) and not v2.is_valid(to_cloudevent(old))
    assert not v2.is_valid({**structured, "data": {"orderId": "o-1"}})
    # the correlation id is where the message's correlationId says
    assert structured["correlationid"] == placed.correlation_id
    # binary mode: the record headers match the headers schema
    headers_schema = payload_validator(doc, "/components/schemas/tidings.RecordHeaders")
    binary_headers, _ = to_kafka_binary(placed)
    assert headers_schema.is_valid({name: value.decode() for name, value in binary_headers})
    assert headers_schema.is_valid({"content-type": "application/cloudevents+json"})
    any_event = payload_validator(doc, "/components/schemas/tidings.CloudEvent")
    assert any_event.is_valid(to_cloudevent(Event(type="SOMETHING", data=[1, 2])))


@pytest.mark.parametrize("format", ["yaml", "json"])
def test_yaml_and_json_parse_back_to_the_same_document(format: Literal["yaml", "json"]) -> None:
    doc = document(order_services(), broker_url="kafka://k1:9092,k2:9092")
    text = dumps(doc, format)
    assert text.endswith("\n")
    parsed = yaml.safe_load(text) if format == "yaml" else json.loads(text)
    assert parsed == doc
    if format == "yaml":
        assert "&id" not in text and "*id" not in text  # no anchors or aliases
        assert text.startswith("asyncapi: 3.0.0\ninfo:\n")
        assert "description: |" in text  # text of several lines is a literal block


def test_bad_input_is_a_clear_error() -> None:
    services = order_services()
    with pytest.raises(ConfigError, match="services named twice: orders"):
        document([*services, Service("orders")])
    with pytest.raises(ConfigError, match="unknown broker scheme 'amqp'"):
        document(services, broker_url="amqp://rabbit")
    with pytest.raises(ConfigError, match="malformed"):
        document(services, broker_url="localhost:9092")
    with pytest.raises(ConfigError, match="names no host"):
        document(services, broker_url="kafka://")
    with pytest.raises(ConfigError, match="unknown AsyncAPI format"):
        dumps({}, "toml")  # type: ignore[arg-type]


# a tiny system, by hand ----------------------------------------------------------------------


class PingV1(EventModel, type="ASYNCAPI_TEST_PING", version=1):
    """A ping, as first shipped."""

    target: str


class Ping(EventModel, type="ASYNCAPI_TEST_PING", version=2):
    """A ping: please answer on pongs."""

    target: str
    ttl: int = 3


@Ping.upcaster(from_version=1)
def _ping_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "ttl": 3}


class Pong(EventModel, type="ASYNCAPI_TEST_PONG", version=1):
    target: str
    hops: tuple[int, str]


def tiny_system() -> list[Service]:
    pinger = Service("pinger")
    pinger.publishes("pings", Ping)

    @pinger.handler("pongs")
    async def note(event: Pong, ctx: Context) -> None:
        """Note the answer."""

    ponger = Service("ponger", topics={"pongs": 8}, dead_letter_topic="ponger-errors.dlq")
    ponger.publishes("pongs", Pong)

    @ponger.handler("pings")
    async def answer(event: Ping, ctx: Context) -> None:
        pass

    @ponger.handler("audit", "pings", name="audit-trail")
    async def audit(event: Event, ctx: Context) -> None:
        pass

    return [pinger, ponger]


def test_a_tiny_system_by_hand() -> None:
    doc = document(tiny_system(), title="Ping pong", broker_url="memory://")
    assert_valid(doc)
    assert list(doc["channels"]) == ["audit", "pings", "pongs", "pinger.dlq", "ponger-errors.dlq"]

    def channel_messages(topic: str) -> list[str]:
        return list(doc["channels"][topic]["messages"])

    assert channel_messages("pings") == ["ASYNCAPI_TEST_PING.v1", "ASYNCAPI_TEST_PING.v2"]
    assert channel_messages("pongs") == ["ASYNCAPI_TEST_PONG.v1"]
    assert channel_messages("audit") == ["tidings.AnyEvent"]  # nothing declared about it
    assert doc["channels"]["pongs"]["bindings"]["kafka"]["partitions"] == 8
    assert doc["channels"]["pings"]["bindings"]["kafka"]["partitions"] == 4
    operations = {
        name: (op["action"], op["channel"]["$ref"], [m["$ref"] for m in op["messages"]])
        for name, op in doc["operations"].items()
    }
    assert operations == {
        "pinger.send.pings": (
            "send",
            "#/channels/pings",
            ["#/channels/pings/messages/ASYNCAPI_TEST_PING.v2"],
        ),
        "pinger.note.receive.pongs": (
            "receive",
            "#/channels/pongs",
            ["#/channels/pongs/messages/ASYNCAPI_TEST_PONG.v1"],
        ),
        "pinger.send.pinger.dlq": (
            "send",
            "#/channels/pinger.dlq",
            ["#/channels/pinger.dlq/messages/tidings.DeadLetter"],
        ),
        "ponger.send.pongs": (
            "send",
            "#/channels/pongs",
            ["#/channels/pongs/messages/ASYNCAPI_TEST_PONG.v1"],
        ),
        "ponger.answer.receive.pings": (
            "receive",
            "#/channels/pings",
            [
                "#/channels/pings/messages/ASYNCAPI_TEST_PING.v1",
                "#/channels/pings/messages/ASYNCAPI_TEST_PING.v2",
            ],
        ),
        "ponger.audit-trail.receive.audit": (
            "receive",
            "#/channels/audit",
            ["#/channels/audit/messages/tidings.AnyEvent"],
        ),
        "ponger.audit-trail.receive.pings": (
            "receive",
            "#/channels/pings",
            [
                "#/channels/pings/messages/ASYNCAPI_TEST_PING.v1",
                "#/channels/pings/messages/ASYNCAPI_TEST_PING.v2",
            ],
        ),
        "ponger.send.ponger-errors.dlq": (
            "send",
            "#/channels/ponger-errors.dlq",
            ["#/channels/ponger-errors.dlq/messages/tidings.DeadLetter"],
        ),
    }
    note = doc["operations"]["pinger.note.receive.pongs"]
    assert note["summary"] == "Note the answer."
    assert note["title"] == "pinger.note"
    messages = doc["components"]["messages"]
    assert messages["ASYNCAPI_TEST_PING.v2"]["summary"] == "A ping: please answer on pongs."
    assert "summary" not in messages["ASYNCAPI_TEST_PONG.v1"]
    # tuple[int, str] is prefixItems in 2020-12: items as a list in draft-07
    hops = doc["components"]["schemas"]["ASYNCAPI_TEST_PONG.v1"]["properties"]["hops"]
    assert hops["items"] == [{"type": "integer"}, {"type": "string"}]
    assert "prefixItems" not in hops and hops["maxItems"] == 2
    pong = Pong(target="a", hops=(1, "b")).to_event(key="a", source="ponger")
    validator_ = payload_validator(doc, "/components/messages/ASYNCAPI_TEST_PONG.v1/payload")
    assert validator_.is_valid(to_cloudevent(pong))
    bad = to_cloudevent(pong)
    bad["data"]["hops"] = ["b", 1]
    assert not validator_.is_valid(bad)


# schema conversion -------------------------------------------------------------------------


class Leaf(WireModel):
    name: str


class Tree(WireModel):
    """A recursive model: a $ref to itself."""

    leaf: Leaf
    children: list[Tree] = []


class Cat(WireModel):
    kind: Literal["cat"] = "cat"
    lives: int


class Dog(WireModel):
    kind: Literal["dog"] = "dog"
    good: bool


class Garden(EventModel, type="ASYNCAPI_TEST_GARDEN", version=1):
    tree: Tree
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    pair: tuple[int, ...] | None = None


def test_draft_2020_schemas_become_draft_07_inside_the_document() -> None:
    service = Service("gardener")
    service.publishes("gardens", Garden)
    doc = document([service])
    assert_valid(doc)
    schemas = doc["components"]["schemas"]
    assert {"Tree", "Leaf", "Cat", "Dog", "ASYNCAPI_TEST_GARDEN.v1"} <= set(schemas)
    assert schemas["Tree"]["properties"]["children"]["items"] == {
        "$ref": "#/components/schemas/Tree"
    }
    garden = schemas["ASYNCAPI_TEST_GARDEN.v1"]
    pet = garden["properties"]["pet"]
    assert "discriminator" not in pet
    assert pet["x-discriminator"]["mapping"] == {
        "cat": "#/components/schemas/Cat",
        "dog": "#/components/schemas/Dog",
    }
    data = {"tree": {"leaf": {"name": "a"}, "children": [{"leaf": {"name": "b"}}]}}
    data["pet"] = {"kind": "dog", "good": True}
    data_schema = payload_validator(doc, "/components/schemas/ASYNCAPI_TEST_GARDEN.v1")
    assert list(data_schema.iter_errors(data)) == []
    assert not data_schema.is_valid({**data, "tree": {"leaf": {}}})


class Sku(WireModel):
    code: str


class Item(WireModel):  # another `Item` than the order example's
    sku: Sku
    count: int


class Basket(EventModel, type="ASYNCAPI_TEST_BASKET", version=1):
    items: list[Item]


def test_definitions_of_the_same_name_but_other_content_do_not_collide() -> None:
    service = Service("baskets")
    service.publishes("baskets", Basket)
    service.publishes("order-events", shop.OrderPlaced)
    doc = document([service])
    assert_valid(doc)
    schemas = doc["components"]["schemas"]
    basket_items = schemas["ASYNCAPI_TEST_BASKET.v1"]["properties"]["items"]["items"]
    order_items = schemas["ORDER_PLACED.v2"]["properties"]["items"]["items"]
    assert basket_items != order_items
    assert {resolve(doc, basket_items["$ref"])["required"][0]} == {"sku"}
    assert {resolve(doc, order_items["$ref"])["required"][0]} == {"productId"}


def test_the_vendored_schema_rejects_what_asyncapi_3_forbids() -> None:
    """The validation above is not vacuous."""
    doc = document(tiny_system())
    assert validator().is_valid(doc)
    broken: list[dict[str, Any]] = [json.loads(json.dumps(doc)) for _ in range(4)]
    broken[0]["operations"]["pinger.send.pings"]["action"] = "publish"  # AsyncAPI 2 wording
    del broken[1]["info"]["version"]
    broken[2]["components"]["schemas"]["ASYNCAPI_TEST_PONG.v1"]["type"] = "objekt"
    broken[3]["components"]["messages"]["ASYNCAPI_TEST_PONG.v1"]["correlationId"] = {
        "location": "payload.correlationid"
    }
    for case in broken:
        assert not validator().is_valid(case)
