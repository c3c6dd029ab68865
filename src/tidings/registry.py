"""The schema registry: the JSON Schema of every event type and version, kept in the broker
itself - the topic `tidings.schemas` (one partition, never expiring), as Confluent's registry
keeps `_schemas` - so every service and tool on a broker sees the same schemas.

A service registers the models it handles and publishes when it starts (`register_service`).
A (type, version) is registered once: registering a different schema under it is refused
(`SchemaConflictError`, naming the differences) - a change is a new version plus an upcaster.
A new version must be compatible with the earlier ones under its type's mode (BACKWARD by
default; `set_mode`), upcasters counting for consumers (`tidings.compat`); a handler whose
model is newer than a registered version needs an upcaster chain from it.

A service also writes its description (`describe_service`): its handlers (name, topics, the
event type and versions each takes), what it declares it publishes, its dead-letter topic and
when it registered - only when it differs from the last one, so restarts do not grow the topic.
Tools read it to know exactly which service handles what (the console's topology and traces, an
AsyncAPI document without importing the services' code).

Records are JSON keyed `schema:<type>:<version>`, `mode:<type>` or `service:<name>`; the first
schema record of a (type, version) wins, so two services registering at once cannot both
succeed with different schemas; the last mode record of a type and the last service record of
a service win. Reading is total: a record that does not decode (or is of a kind this version
does not know) is skipped with a log line; service records carry a version (`v`) and readers
ignore fields they do not know, so older and newer writers share the topic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from tidings import compat
from tidings.brokers.base import UNLIMITED, Broker, CanRead, require
from tidings.errors import ConfigError, SchemaConflictError, UnknownTopicError
from tidings.records import Message, Record, TopicPartition
from tidings.schema import EventModel, json_schema, registered, upcasters

log = logging.getLogger("tidings.registry")

TOPIC = "tidings.schemas"
"""The registry's topic, after the broker's namespace (Kafka's `group_prefix`), if any."""
READ_PAGE = 1000
SERVICE_RECORD_VERSION = 1
"""The `v` of the service records this version writes."""


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered schema."""

    type: str
    version: int
    schema: dict[str, Any]
    fingerprint: str
    service: str
    at: datetime


@dataclass(frozen=True, slots=True)
class HandlerRecord:
    """A handler as its service described it: `type` None takes every event type (as the
    envelope); else `accepts` are the versions of `type` it reads (its own, `version`, and the
    older ones with an upcaster chain to it)."""

    name: str
    topics: tuple[str, ...]
    type: str | None = None
    version: int | None = None
    accepts: tuple[int, ...] = ()

    def takes(self, event_type: str) -> bool:
        return self.type is None or self.type == event_type


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What a service told the registry of itself when it last started with something new:
    its handlers, the (type, version)s it declares it publishes per topic, the partitions of
    the topics it creates, its dead-letter topic; `v` is the record format's version."""

    name: str
    handlers: tuple[HandlerRecord, ...] = ()
    publishes: Mapping[str, tuple[tuple[str, int], ...]] = dataclasses.field(default_factory=dict)
    topics: Mapping[str, int] = dataclasses.field(default_factory=dict)
    dead_letter_topic: str = ""
    at: datetime | None = None
    v: int = SERVICE_RECORD_VERSION

    def handles(self, topic: str, event_type: str) -> list[HandlerRecord]:
        """Its handlers of `event_type` events on `topic`."""
        return [h for h in self.handlers if topic in h.topics and h.takes(event_type)]

    def same_as(self, other: ServiceRecord) -> bool:
        """The same description, whenever it was written."""
        return dataclasses.replace(self, at=None) == dataclasses.replace(other, at=None)


class _HandlerLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def topics(self) -> tuple[str, ...]: ...
    @property
    def model(self) -> type[EventModel] | None: ...


class DescribedService(Protocol):
    """What `describe` reads of a `tidings.Service`."""

    @property
    def name(self) -> str: ...
    @property
    def handlers(self) -> Sequence[_HandlerLike]: ...
    @property
    def publications(self) -> Mapping[str, Sequence[type[EventModel]]]: ...
    @property
    def topics(self) -> Mapping[str, int]: ...
    @property
    def dead_letter_topic(self) -> str: ...


def describe(service: DescribedService, at: datetime | None = None) -> ServiceRecord:
    """The record of `service` (a `tidings.Service`), from its declarations."""
    handlers = []
    for h in service.handlers:
        if h.model is None:
            handlers.append(HandlerRecord(h.name, tuple(h.topics)))
            continue
        kind, version = h.model.event_type, h.model.event_version
        accepts = tuple(
            v for v in range(1, version + 1) if v == version or upcasters(kind, v, version)
        )
        handlers.append(HandlerRecord(h.name, tuple(h.topics), kind, version, accepts))
    publishes = {
        topic: tuple(sorted({(m.event_type, m.event_version) for m in models}))
        for topic, models in service.publications.items()
    }
    return ServiceRecord(
        service.name,
        tuple(handlers),
        publishes,
        dict(service.topics),
        service.dead_letter_topic,
        at,
    )


class _Record(msgspec.Struct, omit_defaults=True):
    kind: str
    type: str
    version: int = 0
    schema: dict[str, Any] | None = None
    fingerprint: str = ""
    service: str = ""
    at: datetime | None = None
    mode: str = ""


class _TypeVersion(msgspec.Struct):
    type: str
    version: int


class _Publication(msgspec.Struct):
    topic: str
    types: list[_TypeVersion] = []


class _HandlerEntry(msgspec.Struct, omit_defaults=True):
    name: str
    topics: list[str]
    type: str | None = None
    version: int | None = None
    accepts: list[int] = []


class _ServiceEntry(msgspec.Struct, omit_defaults=True):
    kind: str
    name: str
    v: int = SERVICE_RECORD_VERSION
    handlers: list[_HandlerEntry] = []
    publishes: list[_Publication] = []
    topics: dict[str, int] = {}
    dead_letter_topic: str = ""
    at: datetime | None = None

    @classmethod
    def of(cls, record: ServiceRecord) -> _ServiceEntry:
        return cls(
            "service",
            record.name,
            record.v,
            [
                _HandlerEntry(h.name, list(h.topics), h.type, h.version, list(h.accepts))
                for h in record.handlers
            ],
            [
                _Publication(topic, [_TypeVersion(t, v) for t, v in types])
                for topic, types in record.publishes.items()
            ],
            dict(record.topics),
            record.dead_letter_topic,
            record.at,
        )

    def record(self) -> ServiceRecord:
        return ServiceRecord(
            self.name,
            tuple(
                HandlerRecord(h.name, tuple(h.topics), h.type, h.version, tuple(h.accepts))
                for h in self.handlers
            ),
            {p.topic: tuple((t.type, t.version) for t in p.types) for p in self.publishes},
            dict(self.topics),
            self.dead_letter_topic,
            self.at,
            self.v,
        )


def fingerprint(schema: dict[str, Any]) -> str:
    """A stable digest of a schema (canonical JSON)."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class SchemaRegistry:
    """The registry on one broker (`load()` reads it; the other reads see what was loaded),
    or, for checks in CI, a directory of schema files (`from_directory`)."""

    def __init__(self, broker: Broker | None) -> None:
        self.broker = broker
        self.schemas: dict[tuple[str, int], Registration] = {}
        self.modes: dict[str, compat.Mode] = {}
        self.services: dict[str, ServiceRecord] = {}
        """The last record of each service that described itself (`describe_service`)."""
        self.skipped = 0
        """Records read that were skipped (malformed, or of a kind this version does not know)."""
        self._next = 0

    @classmethod
    def from_directory(cls, path: str | Path) -> SchemaRegistry:
        """A registry read from `path`, as `export` writes it: `<TYPE>.v<N>.json` files (each
        the schema) and an optional `modes.json` (`{"TYPE": "FULL", ...}`)."""
        registry = cls(None)
        directory = Path(path)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: not a directory of schemas")
        for file in sorted(directory.glob("*.v*.json")):
            event_type, _, version = file.name.removesuffix(".json").rpartition(".v")
            if not version.isdigit():
                continue
            try:
                schema = json.loads(file.read_text())
            except ValueError as exc:
                raise ConfigError(f"{file}: not JSON ({exc})") from None
            registry.schemas[(event_type, int(version))] = Registration(
                event_type, int(version), schema, fingerprint(schema), str(file), datetime.now(UTC)
            )
        modes = directory / "modes.json"
        if modes.exists():
            for event_type, mode in json.loads(modes.read_text()).items():
                registry.modes[event_type] = compat.Mode.parse(mode)
        return registry

    def export(self, path: str | Path) -> list[Path]:
        """Write every schema (and the modes) to `path` as `from_directory` reads them."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for (event_type, version), registration in sorted(self.schemas.items()):
            file = directory / f"{event_type}.v{version}.json"
            file.write_text(json.dumps(registration.schema, indent=2, sort_keys=True) + "\n")
            written.append(file)
        if self.modes:
            modes = {t: m.value for t, m in sorted(self.modes.items())}
            (directory / "modes.json").write_text(json.dumps(modes, indent=2) + "\n")
        return written

    @property
    def topic(self) -> str:
        return (self.broker.namespace if self.broker is not None else "") + TOPIC

    def _broker(self) -> Broker:
        if self.broker is None:
            raise ConfigError("this schema registry is a directory; it cannot be written to")
        return self.broker

    async def load(self, *, create: bool = True) -> SchemaRegistry:
        """Read what is new in the registry topic. It is created if missing, unless `create`
        is False (a reader that must not write: a missing topic is an empty registry)."""
        broker = self._broker()
        if create:
            await broker.admin.create_topic(
                self.topic, 1, retention_ms=UNLIMITED, retention_bytes=UNLIMITED, exist_ok=True
            )
        reader = require(broker, CanRead, "read the schema registry")
        tp = TopicPartition(self.topic, 0)
        while True:
            try:
                records = await reader.read(tp, self._next, READ_PAGE)
            except UnknownTopicError:
                if create:
                    raise
                return self
            if not records:
                return self
            for record in records:
                self._apply(record)
            self._next = records[-1].offset + 1

    def _apply(self, record: Record) -> None:
        """Take one record in; one that does not decode is skipped with a log line."""
        try:
            raw = msgspec.json.decode(record.value)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
            kind = raw.get("kind")
            if kind == "service":
                described = msgspec.convert(raw, _ServiceEntry).record()
                self.services[described.name] = described
            elif kind in ("schema", "mode"):
                self._apply_entry(msgspec.convert(raw, _Record))
            else:
                self.skipped += 1
                log.debug(
                    "schema registry: record at offset %d is of no kind known here (%r)",
                    record.offset,
                    kind,
                )
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            self.skipped += 1
            log.warning(
                "schema registry %s: record at offset %d skipped, it does not decode: %s",
                self.topic,
                record.offset,
                str(exc)[:200],
            )

    def _apply_entry(self, entry: _Record) -> None:
        if entry.kind == "schema" and entry.schema is not None:
            key = (entry.type, entry.version)
            if key not in self.schemas:
                self.schemas[key] = Registration(
                    entry.type,
                    entry.version,
                    entry.schema,
                    entry.fingerprint,
                    entry.service,
                    entry.at or datetime.now(UTC),
                )
        elif entry.kind == "mode":
            self.modes[entry.type] = compat.Mode.parse(entry.mode)  # ValueError: skipped

    # reading --------------------------------------------------------------------------------

    def types(self) -> list[str]:
        return sorted({t for t, _ in self.schemas})

    def versions(self, event_type: str) -> list[Registration]:
        """The registered versions of `event_type`, oldest first."""
        return [r for (t, _), r in sorted(self.schemas.items()) if t == event_type]

    def get(self, event_type: str, version: int) -> Registration:
        registration = self.schemas.get((event_type, version))
        if registration is None:
            raise ConfigError(
                f"no schema registered for {event_type} version {version} "
                "(see `tidings schema list`)"
            )
        return registration

    def mode(self, event_type: str) -> compat.Mode:
        return self.modes.get(event_type, compat.Mode.BACKWARD)

    # writing --------------------------------------------------------------------------------

    async def set_mode(self, event_type: str, mode: compat.Mode | str) -> compat.Mode:
        parsed = compat.Mode.parse(mode)
        await self._publish(f"mode:{event_type}", _Record("mode", event_type, mode=parsed.value))
        await self.load()
        return parsed

    def problems(
        self,
        models: Iterable[type[EventModel]],
        handled: Iterable[type[EventModel]] = (),
    ) -> list[str]:
        """What stops `models` from being registered: a different schema under a registered
        (type, version); an incompatibility with earlier versions under the type's mode;
        for a model in `handled` (a consumer's), a registered earlier version without an
        upcaster chain to it. Each a sentence."""
        consumed = set(handled)
        problems: list[str] = []
        for model in _unique([*models, *consumed]):
            schema = json_schema(model)
            existing = self.schemas.get((model.event_type, model.event_version))
            if existing is not None and existing.fingerprint != fingerprint(schema):
                problems.append(_conflict(model, existing, schema))
                continue
            problems.extend(self._incompatibilities(model, schema, model in consumed))
        return problems

    def _incompatibilities(
        self, model: type[EventModel], schema: dict[str, Any], consumed: bool
    ) -> list[str]:
        mode = self.mode(model.event_type)
        earlier = [r for r in self.versions(model.event_type) if r.version < model.event_version]
        if not earlier or mode is compat.Mode.NONE:
            return []
        label = f"{model.event_type} version {model.event_version} ({_name(model)})"
        local = {version: m for t, version, m in registered() if t == model.event_type}
        found: list[compat.Incompatibility] = []
        for registration in earlier:
            chain = upcasters(model.event_type, registration.version, model.event_version)
            if chain is None and consumed:
                return [
                    f"{label} is handled here, but registered version {registration.version} "
                    "has no upcaster chain to it: those events could not be read; declare "
                    f"@{model.__name__}.upcaster(from_version=...) for each step"
                ]
            old = local.get(registration.version)
            if chain is not None and old is not None:
                found += compat.check_with_upcast(mode, model, [old])
            elif chain is not None:  # upcast for consumers: only the forward rules apply
                if mode.forward:
                    found += compat.check(compat.Mode.FORWARD, schema, [registration.schema])
            else:
                found += compat.check(mode, schema, [registration.schema])
            if found and not mode.transitive:
                break
        return [f"{label} breaks {mode.value}: {incompatibility}" for incompatibility in found]

    async def register(
        self,
        models: Iterable[type[EventModel]],
        service: str,
        handled: Iterable[type[EventModel]] = (),
    ) -> list[str]:
        """Register `models` (and `handled`, the models of the service's handlers) for
        `service`; returns the (type, version) newly registered as `TYPE vN`. Raises
        SchemaConflictError naming every problem, registering nothing."""
        await self.load()
        handled = list(handled)
        wanted = _unique([*models, *handled])
        problems = self.problems(wanted, handled)
        if problems:
            raise SchemaConflictError(
                f"service {service!r} cannot register its event schemas:\n  - "
                + "\n  - ".join(problems)
            )
        new = [m for m in wanted if (m.event_type, m.event_version) not in self.schemas]
        if not new:
            return []
        now = datetime.now(UTC)
        messages = []
        for model in new:
            schema = json_schema(model)
            entry = _Record(
                "schema",
                model.event_type,
                model.event_version,
                schema,
                fingerprint(schema),
                service,
                now,
            )
            messages.append(_message(f"schema:{model.event_type}:{model.event_version}", entry))
        await self._broker().publish(self.topic, messages)
        await self.load()
        lost = [m for m in new if self.schemas[(m.event_type, m.event_version)].service != service]
        clashes = [m for m in lost if self.problems([m])]  # another service registered it first
        if clashes:  # another service registered a different schema first
            raise SchemaConflictError(
                "registered concurrently with a different schema:\n  - "
                + "\n  - ".join(self.problems(clashes))
            )
        return [f"{m.event_type} v{m.event_version}" for m in new]

    async def describe_service(self, service: DescribedService) -> bool:
        """Write the record of `service` (see `describe`) unless its last record says the
        same; returns whether it wrote one."""
        await self.load()
        record = describe(service, datetime.now(UTC))
        last = self.services.get(record.name)
        if last is not None and last.same_as(record):
            return False
        await self._publish(f"service:{record.name}", _ServiceEntry.of(record))
        await self.load()
        return True

    @property
    def read_to(self) -> int:
        """The offset of the registry topic read up to (what `load` read so far)."""
        return self._next

    async def _publish(self, key: str, entry: _Record | _ServiceEntry) -> None:
        broker = self._broker()
        await broker.admin.create_topic(
            self.topic, 1, retention_ms=UNLIMITED, retention_bytes=UNLIMITED, exist_ok=True
        )
        await broker.publish(self.topic, [_message(key, entry)])


def _message(key: str, entry: _Record | _ServiceEntry) -> Message:
    return Message(msgspec.json.encode(entry), key.encode(), partition=0)


def _unique(models: Iterable[type[EventModel]]) -> list[type[EventModel]]:
    seen: dict[tuple[str, int], type[EventModel]] = {}
    for model in models:
        seen.setdefault((model.event_type, model.event_version), model)
    return [seen[key] for key in sorted(seen)]


def _name(model: type[EventModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _conflict(model: type[EventModel], existing: Registration, schema: dict[str, Any]) -> str:
    differences = compat.differences(existing.schema, schema)
    listed = "; ".join(str(d) for d in differences[:10]) or "their JSON differs"
    return (
        f"{model.event_type} version {model.event_version} ({_name(model)}) differs from the "
        f"schema registered by service {existing.service!r}: {listed}. A change is a new "
        "version with an upcaster, not a new schema for the same version"
    )
