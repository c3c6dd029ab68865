"""AsyncAPI 3.0 documents for tidings services: `document(services)` and `dumps(doc)`.

* `servers` from a broker URL: one server per Kafka bootstrap host (`kafka`, or `kafka-secure`
  for TLS, with SASL / X509 security schemes), `tidings-sqlite` for the embedded broker,
  `tidings-memory` for `memory://`. No user, password or query string of the URL is written.
* `channels`: one per topic consumed, published (`Service.publishes`) or created (`topics=`), and
  per dead-letter topic; address = topic name; the key partitioning described on the channel and
  as the Kafka message binding's `key`.
* `operations`: `<service>.send.<topic>` per declared publication,
  `<service>.<handler>.receive.<topic>` per handler and topic, `<service>.send.<service>.dlq`.
* `components.messages`: one per event type and version (`ORDER_PLACED.v2`): the payload is the
  structured-mode CloudEvent (what tidings publishes) whose `data` is the model's schema
  (`components/schemas/ORDER_PLACED.v2`); `headers` are the Kafka record headers (binary mode:
  the `ce_*` attributes); `correlationId` is `$message.payload#/correlationid`.

Schemas are AsyncAPI Schema Objects (a superset of JSON Schema draft-07), converted from
pydantic's draft 2020-12: `$defs` move to `components/schemas`, `prefixItems` become `items`,
`dependent*` `dependencies`, a `$ref` with siblings an `allOf`, a `discriminator` object
`x-discriminator`; `unevaluated*` are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from tidings import dlq, event
from tidings.errors import ConfigError
from tidings.schema import EventModel, json_schema, registered, upcasters
from tidings.service import DEFAULT_PARTITIONS, Service

if TYPE_CHECKING:
    from tidings.retry import Retry
    from tidings.runtime.handlers import Handler

__all__ = ["ASYNCAPI_VERSION", "document", "dumps"]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"

CLOUDEVENT = "tidings.CloudEvent"
RECORD_HEADERS = "tidings.RecordHeaders"
DEAD_LETTER_HEADERS = "tidings.DeadLetterHeaders"
ANY_EVENT = "tidings.AnyEvent"
DEAD_LETTER = "tidings.DeadLetter"
CORRELATION = "tidings.correlationid"
KEY_BINDING = "tidings.key"

_NAME_CHARS = re.compile(r"[^\w.\-]")
_DEFS_REF = re.compile(r'"\$ref": "#/\$defs/((?:[^"/\\]|\\.)*)')
_SASL_SCHEMES = {"PLAIN": "plain", "GSSAPI": "gssapi"}
_SASL_SCHEMES |= {"SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}
_PARTITIONING = (
    "Partitioned by the event's key (CloudEvents `partitionkey`, the Kafka record key): "
    "partition = toPositive(murmur2(UTF-8 key)) % partitions, Kafka's default partitioner, "
    "which the embedded brokers use too, so a key lands on the same partition on every backend. "
    "Events of one key are consumed in the order they were published; events without a key are "
    "spread over the partitions."
)


def document(
    services: Sequence[Service],
    *,
    title: str = "tidings services",
    version: str = "1.0.0",
    description: str | None = None,
    broker_url: str | None = None,
) -> dict[str, Any]:
    """One AsyncAPI 3.0.0 document for `services`, as JSON-ready builtins (nothing shared).

    `broker_url` (`kafka://...`, `sqlite:///...`, `memory://`) gives the `servers`; None
    leaves them out. `description` replaces the generated summary of the services in `info`.
    Raises ConfigError for duplicate service names or a broker URL tidings does not know."""
    services = list(services)
    names = [service.name for service in services]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"services named twice: {', '.join(duplicates)}")
    builder = _Builder(services)
    info = {"title": title, "version": version}
    info["description"] = builder.summary() if description is None else description
    doc: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    schemes: dict[str, Any] = {}
    group_prefix = ""
    if broker_url is not None:
        doc["servers"], schemes, group_prefix = _servers(broker_url)
    doc["defaultContentType"] = event.STRUCTURED_CONTENT_TYPE
    doc["channels"] = builder.channels()
    doc["operations"] = builder.operations(group_prefix)
    doc["components"] = builder.components(schemes)
    result: dict[str, Any] = json.loads(json.dumps(doc))
    return result


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases; text of several lines as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def represent_str(self, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data else None
        return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _Dumper.represent_str)


def dumps(doc: dict[str, Any], format: Literal["yaml", "json"] = "yaml") -> str:
    """`doc` as YAML (keys in document order, no anchors) or as indented JSON."""
    if format == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if format == "yaml":
        text: str = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        return text
    raise ConfigError(f"unknown AsyncAPI format {format!r}; use 'yaml' or 'json'")


# servers -----------------------------------------------------------------------------------


def _servers(url: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(servers, security schemes, consumer group prefix) for a broker URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("broker URL is malformed; expected kafka://, sqlite:/// or memory://")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = unquote(parts.path)
        path = path[1:] if path.startswith("/") else path
        absolute = path.startswith("/")
        embedded = {"host": "localhost", "protocol": "tidings-sqlite"}
        if absolute:
            embedded["pathname"] = path
        embedded["description"] = (
            f"tidings' embedded broker: a durable, partitioned event log in the SQLite file "
            f"`{path}`{'' if absolute else ' (relative to the working directory)'}, shared by "
            "the services' processes on one machine, no server process; consumer groups, "
            "offsets and retention as on Kafka."
        )
        return {"embedded": embedded}, {}, ""
    if scheme == "memory":
        name = _NAME_CHARS.sub("_", parts.netloc.rpartition("@")[2] + parts.path) or "default"
        memory = {"host": "localhost", "pathname": f"/{name}", "protocol": "tidings-memory"}
        memory["description"] = (
            f"tidings' in-memory broker `{name}`, for tests: shared only by the services of one "
            "Python process, lost when it exits."
        )
        return {"memory": memory}, {}, ""
    if scheme != "kafka":
        raise ConfigError(f"unknown broker scheme {scheme!r}; use kafka://, sqlite:///, memory://")
    hosts = [h.strip() for h in parts.netloc.rpartition("@")[2].split(",") if h.strip()]
    hosts = [h if re.search(r":\d+$", h) else f"{h}:9092" for h in hosts]
    if not hosts:
        raise ConfigError("kafka broker URL names no host; expected kafka://host:port[,host:port]")
    settings: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        settings.setdefault(key.removeprefix("producer.").removeprefix("consumer."), value)
    security = settings.get("security.protocol", "PLAINTEXT").upper()
    secure = "SSL" in security
    schemes: dict[str, Any] = {}
    text = "Apache Kafka broker" + (" (TLS)" if secure else "")
    if "SASL" in security:
        mechanism = settings.get("sasl.mechanism") or settings.get("sasl.mechanisms") or "GSSAPI"
        mechanism = mechanism.upper() if re.fullmatch(r"[\w-]{1,40}", mechanism) else "?"
        if mechanism in _SASL_SCHEMES:
            schemes["kafka-sasl"] = {
                "type": _SASL_SCHEMES[mechanism],
                "description": f"SASL/{mechanism}; credentials are not part of this document.",
            }
        else:
            text += f", SASL/{mechanism} authentication"
    certificate = ("certificate.location", "certificate.pem", "keystore.location")
    if any(f"ssl.{name}" in settings for name in certificate):
        schemes["kafka-x509"] = {"type": "X509", "description": "A TLS client certificate."}
    servers = {}
    for index, host in enumerate(hosts, start=1):
        server: dict[str, Any] = {"host": host, "protocol": "kafka-secure" if secure else "kafka"}
        where = (
            "" if len(hosts) == 1 else f": bootstrap server {index} of {len(hosts)}, one cluster"
        )
        server["description"] = f"{text}{where}."
        if schemes:
            server["security"] = [_ref("components", "securitySchemes", s) for s in schemes]
        servers["kafka" if len(hosts) == 1 else f"kafka-{index}"] = server
    return servers, schemes, settings.get("group_prefix", "")


# channels, operations and messages --------------------------------------------------------


@dataclass
class _Channel:
    models: set[type[EventModel]] = field(default_factory=set)
    partitions: list[int] = field(default_factory=list)
    publishers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    dead_letters_of: str | None = None


def _model_order(model: type[EventModel]) -> tuple[str, int]:
    return model.event_type, model.event_version


def _accepted(model: type[EventModel]) -> list[type[EventModel]]:
    """`model` and the declared older versions of its type that are upcast to it."""
    older = [
        other
        for type_, version, other in registered()
        if type_ == model.event_type
        and version < model.event_version
        and upcasters(type_, version, model.event_version) is not None
    ]
    return [*older, model]


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _unique(name: str, taken: Iterable[str]) -> str:
    base = _NAME_CHARS.sub("_", name)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


class _Builder:
    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.topics: dict[str, _Channel] = {}
        for service in services:
            for topic, models in service.publications.items():
                self.topics.setdefault(topic, _Channel()).models.update(models)
                self.topics[topic].publishers.append(service.name)
            for handler in service.handlers:
                for topic in handler.topics:
                    channel = self.topics.setdefault(topic, _Channel())
                    channel.consumers.append(f"{service.name}.{handler.name}")
                    if handler.model is not None:
                        channel.models.update(_accepted(handler.model))
            for topic, partitions in service.topics.items():
                self.topics.setdefault(topic, _Channel()).partitions.append(partitions)
        for service in services:
            self.topics.setdefault(service.dead_letter_topic, _Channel())
            self.topics[service.dead_letter_topic].dead_letters_of = service.name
        self.ids: dict[type[EventModel], str] = {}
        taken = {CLOUDEVENT, RECORD_HEADERS, DEAD_LETTER_HEADERS, ANY_EVENT, DEAD_LETTER}
        every = {model for channel in self.topics.values() for model in channel.models}
        for model in sorted(every, key=_model_order):
            name = _unique(f"{model.event_type}.v{model.event_version}", taken)
            self.ids[model] = name
            taken.add(name)
        self.schemas = _Schemas(taken)

    def messages_of(self, topic: str) -> list[str]:
        """The ids of the messages on `topic`'s channel."""
        channel = self.topics[topic]
        found = [self.ids[m] for m in sorted(channel.models, key=_model_order)]
        if channel.dead_letters_of is not None:
            found.append(DEAD_LETTER)
        return found or [ANY_EVENT]

    def summary(self) -> str:
        lines = [
            f"Events between {len(self.services)} tidings service(s). Each event is a "
            "CloudEvents 1.0 event in structured mode (`application/cloudevents+json`), or in "
            "the Kafka binding's binary mode when published with `binary=True`. A service's "
            "name is its consumer group; it publishes through a transactional outbox, and its "
            "handlers apply each event once (an inbox).",
            "",
        ]
        for service in self.services:
            parts = []
            if service.publications:
                parts.append("publishes to " + ", ".join(f"`{t}`" for t in service.publications))
            if service.handlers:
                handlers = (f"`{h.name}` ({', '.join(h.topics)})" for h in service.handlers)
                parts.append("handlers " + ", ".join(handlers))
            parts.append(f"dead letters to `{service.dead_letter_topic}`")
            lines.append(f"- **{service.name}**: " + "; ".join(parts))
        return "\n".join(lines)

    def channels(self) -> dict[str, Any]:
        channels = {}
        order = sorted(self.topics, key=lambda t: (self.topics[t].dead_letters_of is not None, t))
        for topic in order:
            channel = self.topics[topic]
            kafka: dict[str, Any] = {}
            if channel.dead_letters_of is not None:
                kafka["partitions"] = max(channel.partitions, default=1)
                kafka["topicConfiguration"] = {"retention.ms": -1, "retention.bytes": -1}
                text = (
                    f"Dead letters of service `{channel.dead_letters_of}`: each the original "
                    "record unchanged (the same event id) with `tidings-dlq-*` headers saying "
                    "why, where from and after how many attempts; kept until replayed or "
                    "purged (`tidings dlq`)."
                )
            else:
                kafka["partitions"] = max(channel.partitions, default=DEFAULT_PARTITIONS)
                text = _PARTITIONING
            if channel.publishers:
                text += f"\n\nPublished by: {', '.join(channel.publishers)}."
            if channel.consumers:
                text += f"\n\nConsumed by: {', '.join(channel.consumers)}."
            channels[topic] = {
                "address": topic,
                "title": topic,
                "description": text,
                "messages": {m: _ref("components", "messages", m) for m in self.messages_of(topic)},
                "bindings": {"kafka": {**kafka, "bindingVersion": KAFKA_BINDING_VERSION}},
            }
        return channels

    def operations(self, group_prefix: str) -> dict[str, Any]:
        operations: dict[str, Any] = {}

        def add(name: str, topic: str, ids: Iterable[str], **fields: Any) -> None:
            messages = [_ref("channels", topic, "messages", m) for m in ids]
            operation = {"action": fields.pop("action", "send"), "channel": _ref("channels", topic)}
            bindings = {"bindings": fields.pop("bindings")} if "bindings" in fields else {}
            operation |= fields | {"messages": messages} | bindings
            operations[_unique(name, operations)] = operation

        for service in self.services:
            for topic, models in service.publications.items():
                ids = [self.ids[m] for m in sorted(set(models), key=_model_order)]
                add(
                    f"{service.name}.send.{topic}",
                    topic,
                    ids or self.messages_of(topic),
                    title=f"{service.name} publishes to {topic}",
                    description=f"Service `{service.name}` publishes these events to `{topic}` "
                    "through its transactional outbox: committed with the service's own "
                    "changes, relayed in per-key order, at least once.",
                )
            for handler in service.handlers:
                for topic in handler.topics:
                    ids, fields = self._receive(service, handler, topic, group_prefix)
                    add(f"{service.name}.{handler.name}.receive.{topic}", topic, ids, **fields)
            topic = service.dead_letter_topic
            add(
                f"{service.name}.send.{topic}",
                topic,
                [DEAD_LETTER],
                title=f"{service.name} dead-letters to {topic}",
                description=f"What `{service.name}` cannot process (undecodable or invalid "
                "events, permanent errors, retries spent) and the outbox rows the broker "
                "refused for good.",
            )
        return operations

    def _receive(
        self, service: Service, handler: Handler, topic: str, group_prefix: str
    ) -> tuple[list[str], dict[str, Any]]:
        if handler.model is None:
            ids = self.messages_of(topic)
            receives = "every event of the topic, as the envelope (`tidings.Event`)"
        else:
            accepted = _accepted(handler.model)
            ids = [self.ids[m] for m in accepted]
            receives = f"{handler.model.event_type} version {handler.model.event_version}"
            if len(accepted) > 1:
                receives += " (older versions upcast to it)"
            receives += "; it acknowledges and skips other event types"
        fields: dict[str, Any] = {"action": "receive", "title": f"{service.name}.{handler.name}"}
        doc = (handler.function.__doc__ or "").strip()
        if doc:
            fields["summary"] = doc.splitlines()[0]
        fields["description"] = (
            f"Handler `{handler.name}` of service `{service.name}` receives {receives}. Each "
            f"delivery is one transaction of the service's store (inbox `{handler.consumer}`: "
            f"a redelivered event is skipped). {_retry_text(handler.retry)}; then the event "
            f"goes to `{service.dead_letter_topic}`."
        )
        group = {"type": "string", "enum": [group_prefix + service.name]}
        fields["bindings"] = {"kafka": {"groupId": group, "bindingVersion": KAFKA_BINDING_VERSION}}
        return ids, fields

    def components(self, security_schemes: dict[str, Any]) -> dict[str, Any]:
        messages = {
            message_id: self._message(model, message_id)
            for model, message_id in sorted(self.ids.items(), key=lambda item: item[1])
        }
        messages.update(
            _shared_messages(any(ANY_EVENT in self.messages_of(t) for t in self.topics))
        )
        components: dict[str, Any] = {
            "schemas": {**_shared_schemas(), **self.schemas.components},
            "messages": messages,
            "correlationIds": {CORRELATION: _correlation_id()},
            "messageBindings": {KEY_BINDING: _key_binding()},
        }
        if security_schemes:
            components["securitySchemes"] = security_schemes
        return components

    def _message(self, model: type[EventModel], message_id: str) -> dict[str, Any]:
        data = self.schemas.add(model, message_id)
        qualified = f"{model.__module__}.{model.__qualname__}"
        doc = (model.__dict__.get("__doc__") or "").strip()
        title = f"{model.event_type} v{model.event_version}"
        message: dict[str, Any] = {"name": model.event_type, "title": title}
        if doc:
            message["summary"] = doc.splitlines()[0]
        message["description"] = (doc + "\n\n" if doc else "") + (
            f"Version {model.event_version} of `{model.event_type}` (`{qualified}`): the "
            "CloudEvent in structured mode, its `data` the event's data (camelCase names)."
        )
        envelope = {
            "type": {"type": "string", "const": model.event_type},
            "typeversion": {"type": "integer", "const": model.event_version},
            "datacontenttype": {"type": "string", "const": "application/json"},
            "data": data,
        }
        message["contentType"] = event.STRUCTURED_CONTENT_TYPE
        message["headers"] = _ref("components", "schemas", RECORD_HEADERS)
        message["payload"] = {
            "allOf": [
                _ref("components", "schemas", CLOUDEVENT),
                {"type": "object", "required": ["data"], "properties": envelope},
            ]
        }
        message["correlationId"] = _ref("components", "correlationIds", CORRELATION)
        message["bindings"] = _ref("components", "messageBindings", KEY_BINDING)
        message["x-tidings-model"] = qualified
        return message


def _retry_text(retry: Retry) -> str:
    text = f"Retries: {retry.immediate} immediate, then backoff from {retry.initial_delay:g} s "
    text += f"(x{retry.multiplier:g}, at most {retry.max_delay:g} s), up to {retry.max_attempts} "
    text += "attempts" + ("" if retry.max_elapsed is None else f" or {retry.max_elapsed:g} s")
    return text + ("" if retry.timeout is None else f", {retry.timeout:g} s per attempt")


# shared components -------------------------------------------------------------------------

_TEXT: dict[str, Any] = {"type": "string"}
_ID = {**_TEXT, "minLength": 1, "maxLength": event.MAX_ID_LENGTH}
_TRACEPARENT = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_ATTRIBUTES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("specversion", "The CloudEvents version.", {**_TEXT, "const": event.SPECVERSION}),
    ("id", "The event id (a UUIDv7 by default); consumers' inboxes key on it.", _ID),
    ("source", "The publishing service's name.", {**_ID, "maxLength": event.MAX_SOURCE_LENGTH}),
    ("type", "The event type, e.g. `ORDER_PLACED`.", _ID),
    ("time", "When the event happened: RFC 3339, UTC.", {**_TEXT, "format": "date-time"}),
    ("typeversion", "The version of the event type's data schema.", {"type": "integer"}),
    ("partitionkey", "The event's key (CloudEvents Partitioning extension).", _TEXT),
    ("correlationid", "Shared by every event that follows from one request.", _ID),
    ("causationid", "The id of the event whose handling published this one.", _ID),
    ("traceparent", "W3C trace context (CloudEvents Distributed Tracing).", _TEXT),
    ("tracestate", "W3C trace state.", {**_TEXT, "maxLength": 512}),
)
_STRUCTURED_ONLY: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("datacontenttype", "The media type of `data`.", _TEXT),
    ("data", "The event's data (JSON).", {}),
    ("data_base64", "Binary data, instead of `data`.", {**_TEXT, "contentEncoding": "base64"}),
    ("tidingsheaders", "The event's headers, a JSON object of strings.", _TEXT),
)
_DLQ_HEADERS: tuple[tuple[str, str], ...] = (
    (dlq.REASON, "Why the record was set aside."),
    (dlq.EXCEPTION, "The exception's qualified class name."),
    (dlq.MESSAGE, "The exception's message."),
    (dlq.TRACEBACK, "The traceback (its end)."),
    (dlq.TOPIC, "The topic the record came from (from the outbox: was bound for)."),
    (dlq.PARTITION, "Its partition."),
    (dlq.OFFSET, "Its offset."),
    (dlq.HANDLER, "The handler that failed."),
    (dlq.ATTEMPTS, "The attempts made."),
    (dlq.TIME, "When it was dead-lettered (UTC)."),
    (dlq.EVENT_ID, "The event id (an outbox row the broker refused)."),
    (dlq.OMITTED, "Where a record too large to dead-letter is kept."),
)
_DLQ_REASONS = [value for name, value in vars(dlq).items() if name.startswith("REASON_")]


def _shared_schemas() -> dict[str, Any]:
    attributes = {n: {**s, "description": d} for n, d, s in _ATTRIBUTES + _STRUCTURED_ONLY}
    attributes["source"]["description"] += f" `{event.UNKNOWN_SOURCE}` when unknown."
    attributes["typeversion"] |= {"minimum": 1, "maximum": event.MAX_VERSION}
    attributes["partitionkey"]["description"] += " " + _PARTITIONING
    attributes["correlationid"]["description"] += (
        " The first event's id by default; events published while handling one inherit it."
    )
    attributes["traceparent"]["pattern"] = _TRACEPARENT
    attributes["tidingsheaders"]["contentMediaType"] = "application/json"
    cloudevent = {
        "type": "object",
        "title": "CloudEvent",
        "description": "A CloudEvents 1.0 event in structured mode (JSON), as tidings writes "
        "it. tidings also reads events without `time` (the record's time is taken), "
        "`typeversion` (version 1) or `correlationid` (the event starts its own chain).",
        "required": ["specversion", "id", "source", "type", "time", "typeversion", "correlationid"],
        "properties": attributes,
    }
    content_types = [event.STRUCTURED_CONTENT_TYPE, "application/json", "application/octet-stream"]
    headers = {
        "type": "object",
        "title": "Record headers",
        "description": "Kafka record headers (UTF-8). Structured mode (the default): only "
        f"`content-type: {content_types[0]}`, the attributes are in the payload. Binary mode "
        "(`ctx.publish(..., binary=True)`): the attributes travel as `ce_*` headers, the record "
        "value is `data` alone (`content-type: application/json`), and each event header is a "
        "record header of its own name.",
        "properties": {
            "content-type": {**_TEXT, "enum": content_types, "description": "The value's type."},
            **{f"ce_{n}": {**_TEXT, "description": f"Binary mode: {d}"} for n, d, _ in _ATTRIBUTES},
        },
        "additionalProperties": {**_TEXT, "description": "An event header (binary mode)."},
    }
    dead_letter: dict[str, Any] = {
        "type": "object",
        "title": "Dead-letter headers",
        "description": "The original record's headers, and these.",
        "required": [dlq.REASON, dlq.EXCEPTION, dlq.MESSAGE, dlq.TOPIC, dlq.TIME],
        "properties": {name: {**_TEXT, "description": text} for name, text in _DLQ_HEADERS},
        "additionalProperties": _TEXT,
    }
    dead_letter["properties"][dlq.REASON]["enum"] = _DLQ_REASONS
    return {CLOUDEVENT: cloudevent, RECORD_HEADERS: headers, DEAD_LETTER_HEADERS: dead_letter}


def _shared_messages(any_event: bool) -> dict[str, Any]:
    common = {"correlationId": _ref("components", "correlationIds", CORRELATION)}
    common["bindings"] = _ref("components", "messageBindings", KEY_BINDING)
    messages: dict[str, Any] = {}
    if any_event:
        messages[ANY_EVENT] = {
            "name": "CloudEvent",
            "title": "Any event",
            "description": "An event of a type the services declare nothing about.",
            "contentType": event.STRUCTURED_CONTENT_TYPE,
            "headers": _ref("components", "schemas", RECORD_HEADERS),
            "payload": _ref("components", "schemas", CLOUDEVENT),
            **common,
        }
    messages[DEAD_LETTER] = {
        "name": "DeadLetter",
        "title": "Dead letter",
        "description": "The original record unchanged (value, key and headers: usually a "
        "CloudEvent of a consumed topic; an undecodable record as it was) with `tidings-dlq-*` "
        "headers added. Replaying it re-delivers the same event id to its topic.",
        "headers": _ref("components", "schemas", DEAD_LETTER_HEADERS),
        "payload": {"description": "The original record's value, unchanged."},
        **common,
    }
    return messages


def _key_binding() -> dict[str, Any]:
    key = {
        **_TEXT,
        "description": "The event's key, UTF-8 (the CloudEvents `partitionkey`); none when the "
        "event has no key. " + _PARTITIONING,
    }
    return {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}}


def _correlation_id() -> dict[str, Any]:
    return {
        "description": "The CloudEvents `correlationid` extension attribute: in the payload in "
        "structured mode (the default); in binary mode the `ce_correlationid` header "
        "(`$message.header#/ce_correlationid`).",
        "location": "$message.payload#/correlationid",
    }


# JSON Schema 2020-12 (pydantic) -> AsyncAPI Schema Object (draft-07) ------------------------

_SCHEMA_MAPS = {"dependentSchemas": "dependencies", "$defs": "definitions"}
_SCHEMA_MAPS |= {name: name for name in ("properties", "patternProperties", "definitions")}
_SCHEMA_VALUES = {"additionalProperties", "additionalItems", "items", "contains", "propertyNames"}
_SCHEMA_VALUES |= {"not", "if", "then", "else"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_DROPPED = {"$schema", "$id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$comment"}
_DROPPED |= {"unevaluatedProperties", "unevaluatedItems", "minContains", "maxContains"}


class _Schemas:
    """The data schemas and their definitions, placed in `components/schemas`."""

    def __init__(self, reserved: Iterable[str]) -> None:
        self.components: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}
        self._reserved = set(reserved)

    def add(self, model: type[EventModel], owner: str) -> dict[str, str]:
        """Place `model`'s data schema (named `owner`) and its definitions (a definition
        already placed with the same content is shared); a reference to the data schema."""
        schema = json_schema(model)
        defs: dict[str, Any] = schema.pop("$defs", None) or {}
        names: dict[str, str] = {}
        for name in defs:
            fingerprint = _fingerprint(name, defs)
            base = _NAME_CHARS.sub("_", name) or "schema"
            candidate, n = base, 1
            while (
                candidate in self._reserved or candidate in self._fingerprints
            ) and self._fingerprints.get(candidate) != fingerprint:
                n += 1
                candidate = f"{owner}.{base}" if n == 2 else f"{owner}.{base}_{n}"
            names[name] = candidate
            self._fingerprints[candidate] = fingerprint
        for name, definition in defs.items():
            self.components.setdefault(names[name], _draft07(definition, names, owner))
        self.components[owner] = _draft07(schema, names, owner)
        return _ref("components", "schemas", owner)


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


def _rewrite_ref(ref: str, names: dict[str, str], owner: str) -> str:
    """A `$ref` of a data schema as a reference inside the AsyncAPI document."""
    if ref.startswith("#/$defs/"):
        name, _, rest = ref.removeprefix("#/$defs/").partition("/")
        target = names.get(_unescape(name), _unescape(name))
        return _ref("components", "schemas", target)["$ref"] + (f"/{rest}" if rest else "")
    if ref.startswith("#"):  # a pointer into the data schema itself
        return _ref("components", "schemas", owner)["$ref"] + ref[1:].rstrip("/")
    return ref


def _draft07(schema: Any, names: dict[str, str], owner: str) -> Any:
    """`schema` (JSON Schema 2020-12) as an AsyncAPI Schema Object (draft-07 based)."""
    if isinstance(schema, list):
        return [_draft07(item, names, owner) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED:
            continue
        if key == "$ref" and isinstance(value, str):
            out[key] = _rewrite_ref(value, names, owner)
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            converted = {k: _draft07(v, names, owner) for k, v in value.items()}
            out.setdefault(_SCHEMA_MAPS[key], {}).update(converted)
        elif key in _SCHEMA_VALUES:
            out[key] = _draft07(value, names, owner)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_draft07(item, names, owner) for item in value]
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
