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

`document_of(records, messages)` writes the same document from what services told the schema
registry of themselves (`tidings.registry.ServiceRecord`) and the registered schemas, without
their code: what only the code knows (docstrings, retry policies, model names) is left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from tidings import dlq, event
from tidings._asyncapi_schema import NAME_CHARS as _NAME_CHARS
from tidings._asyncapi_schema import Schemas as _Schemas
from tidings._asyncapi_schema import ref as _ref
from tidings.errors import ConfigError
from tidings.registry import HandlerRecord, ServiceRecord, describe
from tidings.schema import json_schema, registered
from tidings.service import DEFAULT_PARTITIONS, Service

if TYPE_CHECKING:
    from tidings.retry import Retry

__all__ = ["ASYNCAPI_VERSION", "MessageSpec", "document", "document_of", "dumps"]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"

CLOUDEVENT = "tidings.CloudEvent"
RECORD_HEADERS = "tidings.RecordHeaders"
DEAD_LETTER_HEADERS = "tidings.DeadLetterHeaders"
ANY_EVENT = "tidings.AnyEvent"
DEAD_LETTER = "tidings.DeadLetter"
CORRELATION = "tidings.correlationid"
KEY_BINDING = "tidings.key"

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
    records = [describe(service) for service in services]
    texts: dict[tuple[str, str], _HandlerText] = {}
    declared = {(t, v): m for t, v, m in registered()}
    for service in services:
        for handler in service.handlers:
            doc = (handler.function.__doc__ or "").strip()
            summary = doc.splitlines()[0] if doc else ""
            texts[(service.name, handler.name)] = _HandlerText(summary, _retry_text(handler.retry))
            if handler.model is not None:
                declared[(handler.model.event_type, handler.model.event_version)] = handler.model
        for models in service.publications.values():
            declared.update({(m.event_type, m.event_version): m for m in models})
    messages = {
        key: MessageSpec(
            json_schema(model),
            f"{model.__module__}.{model.__qualname__}",
            (model.__dict__.get("__doc__") or "").strip(),
        )
        for key, model in declared.items()
    }
    return document_of(
        records,
        messages,
        title=title,
        version=version,
        description=description,
        broker_url=broker_url,
        texts=texts,
    )


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """What the message of one event type and version is made of: its data's JSON Schema and,
    when known from code, the model's qualified name and docstring."""

    schema: Mapping[str, Any]
    model: str = ""
    doc: str = ""


@dataclass(frozen=True, slots=True)
class _HandlerText:
    summary: str
    retry: str


def document_of(
    records: Sequence[ServiceRecord],
    messages: Mapping[tuple[str, int], MessageSpec],
    *,
    title: str = "tidings services",
    version: str = "1.0.0",
    description: str | None = None,
    broker_url: str | None = None,
    texts: Mapping[tuple[str, str], _HandlerText] | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of services as they describe themselves (`records`, as
    the schema registry keeps them), their messages' schemas in `messages` by (type,
    version): those handlers accept among the older versions of their type, and a message
    without a schema there has an empty one. The other arguments as for `document`."""
    names = [record.name for record in records]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"services named twice: {', '.join(duplicates)}")
    builder = _Builder(list(records), messages, texts or {})
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


_Key = tuple[str, int]
"""An event type and version."""


@dataclass
class _Channel:
    models: set[_Key] = field(default_factory=set)
    partitions: list[int] = field(default_factory=list)
    publishers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    dead_letters_of: str | None = None


def _unique(name: str, taken: Iterable[str]) -> str:
    base = _NAME_CHARS.sub("_", name)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


class _Builder:
    def __init__(
        self,
        services: list[ServiceRecord],
        messages: Mapping[_Key, MessageSpec],
        texts: Mapping[tuple[str, str], _HandlerText],
    ) -> None:
        self.services = services
        self.messages = messages
        self.texts = texts
        self.topics: dict[str, _Channel] = {}
        for service in services:
            for topic, keys in service.publishes.items():
                self.topics.setdefault(topic, _Channel()).models.update(keys)
                self.topics[topic].publishers.append(service.name)
            for handler in service.handlers:
                for topic in handler.topics:
                    channel = self.topics.setdefault(topic, _Channel())
                    channel.consumers.append(f"{service.name}.{handler.name}")
                    channel.models.update(self.accepted(handler))
            for topic, partitions in service.topics.items():
                self.topics.setdefault(topic, _Channel()).partitions.append(partitions)
        for service in services:
            self.topics.setdefault(service.dead_letter_topic, _Channel())
            self.topics[service.dead_letter_topic].dead_letters_of = service.name
        self.ids: dict[_Key, str] = {}
        taken = {CLOUDEVENT, RECORD_HEADERS, DEAD_LETTER_HEADERS, ANY_EVENT, DEAD_LETTER}
        every = {key for channel in self.topics.values() for key in channel.models}
        for event_type, event_version in sorted(every):
            name = _unique(f"{event_type}.v{event_version}", taken)
            self.ids[(event_type, event_version)] = name
            taken.add(name)
        self.schemas = _Schemas(taken)

    def accepted(self, handler: HandlerRecord) -> list[_Key]:
        """The (type, version)s `handler` reads: its own and the older ones upcast to it that
        have a message (declared, or registered)."""
        if handler.type is None or handler.version is None:
            return []
        return [
            (handler.type, v)
            for v in sorted(set(handler.accepts) | {handler.version})
            if v == handler.version or (handler.type, v) in self.messages
        ]

    def messages_of(self, topic: str) -> list[str]:
        """The ids of the messages on `topic`'s channel."""
        channel = self.topics[topic]
        found = [self.ids[m] for m in sorted(channel.models)]
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
            if service.publishes:
                parts.append("publishes to " + ", ".join(f"`{t}`" for t in service.publishes))
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
            operations[_unique(name, operations)] = operation | {"x-tidings-service": service.name}

        for service in self.services:
            for topic, keys in service.publishes.items():
                ids = [self.ids[k] for k in sorted(set(keys))]
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
        self, service: ServiceRecord, handler: HandlerRecord, topic: str, group_prefix: str
    ) -> tuple[list[str], dict[str, Any]]:
        accepted = self.accepted(handler)
        if not accepted:
            ids = self.messages_of(topic)
            receives = "every event of the topic, as the envelope (`tidings.Event`)"
        else:
            ids = [self.ids[key] for key in accepted]
            receives = f"{handler.type} version {handler.version}"
            if len(accepted) > 1:
                receives += " (older versions upcast to it)"
            receives += "; it acknowledges and skips other event types"
        fields: dict[str, Any] = {"action": "receive", "title": f"{service.name}.{handler.name}"}
        text = self.texts.get((service.name, handler.name), _HandlerText("", ""))
        if text.summary:
            fields["summary"] = text.summary
        retries = f"{text.retry}; then" if text.retry else "After its retries,"
        fields["description"] = (
            f"Handler `{handler.name}` of service `{service.name}` receives {receives}. Each "
            f"delivery is one transaction of the service's store (inbox "
            f"`{service.name}.{handler.name}`: a redelivered event is skipped). {retries} the "
            f"event goes to `{service.dead_letter_topic}`."
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

    def _message(self, key: _Key, message_id: str) -> dict[str, Any]:
        event_type, event_version = key
        spec = self.messages.get(key) or MessageSpec({}, "", "Not in the schema registry.")
        data = self.schemas.add(spec.schema, message_id)
        qualified, doc = spec.model, spec.doc
        title = f"{event_type} v{event_version}"
        message: dict[str, Any] = {"name": event_type, "title": title}
        if doc:
            message["summary"] = doc.splitlines()[0]
        message["description"] = (doc + "\n\n" if doc else "") + (
            f"Version {event_version} of `{event_type}`{f' (`{qualified}`)' if qualified else ''}"
            ": the CloudEvent in structured mode, its `data` the event's data (camelCase names)."
        )
        envelope = {
            "type": {"type": "string", "const": event_type},
            "typeversion": {"type": "integer", "const": event_version},
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
        if qualified:
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
