"""The schema registry as plain data, for `tidings schema` and the console: the registered
types with their versions, modes and the services that declared them; the differences between
two versions, each with its JSON path, its rule and whether it breaks the type's mode; what a
new mode would say of the versions already registered; which service handles what, exactly
where services described themselves (falling back on what the log tells); and the AsyncAPI
document of the services as the registry knows them.

Readers here never write: the registry is read with `load(create=False)` (a broker without
its topic has an empty registry)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tidings import compat
from tidings.asyncapi import MessageSpec, document_of
from tidings.brokers.base import Broker, CanRead
from tidings.errors import ConfigError
from tidings.ops.index import ANY_TYPE, Handles
from tidings.registry import Registration, SchemaRegistry, ServiceRecord


class UnknownSchemaError(ConfigError):
    """No schema is registered for that type (or version)."""


@dataclass(frozen=True, slots=True)
class TypeSummary:
    """A registered event type: its versions (oldest first), its mode (`mode_set`: set
    explicitly, else the default), and the services that declare they publish or handle it."""

    type: str
    versions: tuple[Registration, ...]
    mode: compat.Mode
    mode_set: bool
    published_by: tuple[str, ...]
    handled_by: tuple[str, ...]

    @property
    def latest(self) -> Registration:
        return self.versions[-1]


@dataclass(frozen=True, slots=True)
class Change:
    """A difference between two versions (read as: a consumer of the newer one reading data
    of the older one) and whether it breaks the type's mode."""

    difference: compat.Difference
    breaks: bool

    @property
    def path(self) -> str:
        return self.difference.path

    @property
    def rule(self) -> str:
        return self.difference.kind.value

    @property
    def message(self) -> str:
        return self.difference.message


@dataclass(frozen=True, slots=True)
class SchemaDiff:
    """From version `old` to `new` of `type` under `mode`: every change, and the
    incompatibilities that make the pair break the mode (judged on the schemas alone: such a
    version is registered only with an upcaster chain from `old`)."""

    type: str
    old: int
    new: int
    mode: compat.Mode
    changes: tuple[Change, ...]
    breaking: tuple[compat.Incompatibility, ...]

    @property
    def compatible(self) -> bool:
        return not self.breaking


# reading ------------------------------------------------------------------------------------


async def read_registry(broker: Broker, registry: SchemaRegistry | None = None) -> SchemaRegistry:
    """The registry on `broker`, read without writing (`registry`: one read before, brought
    up to date - it reads only what is new). A broker that cannot read records has an empty
    one."""
    registry = registry if registry is not None else SchemaRegistry(broker)
    if isinstance(broker, CanRead):
        await registry.load(create=False)
    return registry


def list_types(registry: SchemaRegistry) -> list[TypeSummary]:
    """Every registered type, by name."""
    publishers: dict[str, set[str]] = {}
    handlers: dict[str, set[str]] = {}
    for record in registry.services.values():
        for keys in record.publishes.values():
            for event_type, _ in keys:
                publishers.setdefault(event_type, set()).add(record.name)
        for handler in record.handlers:
            if handler.type is not None:
                handlers.setdefault(handler.type, set()).add(record.name)
    return [
        TypeSummary(
            event_type,
            tuple(registry.versions(event_type)),
            registry.mode(event_type),
            event_type in registry.modes,
            tuple(sorted(publishers.get(event_type, ()))),
            tuple(sorted(handlers.get(event_type, ()))),
        )
        for event_type in registry.types()
    ]


def get_type(registry: SchemaRegistry, event_type: str) -> TypeSummary:
    """One registered type; UnknownSchemaError if none."""
    for summary in list_types(registry):
        if summary.type == event_type:
            return summary
    raise UnknownSchemaError(f"no schema registered for {event_type!r} (see `tidings schema list`)")


def get_version(registry: SchemaRegistry, event_type: str, version: int) -> Registration:
    """One registered version; UnknownSchemaError if none."""
    registration = registry.schemas.get((event_type, version))
    if registration is None:
        get_type(registry, event_type)
        known = ", ".join(str(r.version) for r in registry.versions(event_type))
        raise UnknownSchemaError(
            f"{event_type} has no version {version} registered (registered: {known})"
        )
    return registration


def diff(registry: SchemaRegistry, event_type: str, old: int, new: int) -> SchemaDiff:
    """What changed from version `old` to `new` of `event_type`, under the type's mode.
    UnknownSchemaError for a version not registered; InvalidSchemaError (a ConfigError) for a
    schema the checker cannot read."""
    before = get_version(registry, event_type, old).schema
    after = get_version(registry, event_type, new).schema
    mode = registry.mode(event_type)
    return _diff(event_type, old, new, mode, before, after)


def _diff(
    event_type: str,
    old: int,
    new: int,
    mode: compat.Mode,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> SchemaDiff:
    breaking = compat.check(mode, after, [before])
    backward = {(i.path, i.kind) for i in breaking if i.breaks is compat.Mode.BACKWARD}
    forward = {i.path for i in breaking if i.breaks is compat.Mode.FORWARD}
    changes = tuple(
        Change(d, (d.path, d.kind) in backward or d.path in forward)
        for d in compat.differences(before, after)
    )
    return SchemaDiff(event_type, old, new, mode, changes, tuple(breaking))


def mode_effect(
    registry: SchemaRegistry, event_type: str, mode: compat.Mode | str
) -> list[SchemaDiff]:
    """The registered versions of `event_type` that would break `mode` (each against the
    versions before it, all of them for a *_TRANSITIVE mode), judged on the schemas alone:
    a mode applies to versions registered from now on, this says how far the history is
    from it. ValueError for an unknown mode."""
    mode = compat.Mode.parse(mode)
    versions = get_type(registry, event_type).versions
    found = []
    for index, registration in enumerate(versions[1:], start=1):
        earlier = versions[:index] if mode.transitive else versions[index - 1 : index]
        for before in earlier:
            pair = _diff(
                event_type,
                before.version,
                registration.version,
                mode,
                before.schema,
                registration.schema,
            )
            if pair.breaking:
                found.append(pair)
    return found


async def set_mode(
    registry: SchemaRegistry, event_type: str, mode: compat.Mode | str
) -> compat.Mode:
    """Set the compatibility mode of `event_type` (a registered type: UnknownSchemaError
    otherwise; ValueError for an unknown mode)."""
    get_type(registry, event_type)
    return await registry.set_mode(event_type, mode)


# who handles what ---------------------------------------------------------------------------


def known_handles(
    services: Mapping[str, ServiceRecord], inferred: Iterable[Handles] = ()
) -> list[Handles]:
    """Which service handles which event types on which topic: exactly, from the records of
    the services that described themselves in the registry (`declared`), and for the others
    what the log told (`inferred`, from an `EventIndex`)."""
    found = [h for h in inferred if h.service not in services]
    for record in services.values():
        for handler in record.handlers:
            for topic in handler.topics:
                found.append(
                    Handles(
                        record.name,
                        topic,
                        handler.type or ANY_TYPE,
                        handler.name,
                        declared=True,
                        versions=handler.accepts,
                    )
                )
    return sorted(found, key=lambda h: (h.service, h.topic, h.type, h.handler or ""))


# AsyncAPI -----------------------------------------------------------------------------------


def api_document(
    registry: SchemaRegistry,
    *,
    broker_url: str | None = None,
    title: str = "tidings services",
    version: str = "1.0.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the services that described themselves in `registry`,
    with the registered schemas (nothing of the services' code is imported: docstrings and
    retry policies are not in it; `tidings asyncapi` writes them)."""
    messages = {
        key: MessageSpec(registration.schema) for key, registration in registry.schemas.items()
    }
    records: Sequence[ServiceRecord] = [registry.services[n] for n in sorted(registry.services)]
    description = None
    if not records:
        description = (
            "No service has described itself in the schema registry yet (services do when "
            "they start)."
        )
    return document_of(
        records,
        messages,
        title=title,
        version=version,
        description=description,
        broker_url=broker_url,
    )
