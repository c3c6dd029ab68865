"""Typed events: pydantic models with an event type, a version, and upcasters between versions.

Declare each version of an event as an `EventModel` subclass with class keywords::

    class OrderPlacedV1(EventModel, type="ORDER_PLACED", version=1):
        order_id: str
        total: float

    class OrderPlaced(EventModel, type="ORDER_PLACED", version=2):
        order_id: str
        total: float
        currency: str

    @OrderPlaced.upcaster(from_version=1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "USD"}

Every subclass of `EventModel` is a concrete event model and must pass `type=`; there are no
abstract intermediate models. To share fields or settings between event models, inherit from a
plain pydantic model as well (`class X(EventModel, Common, type="X")`) or from another event
model, passing `type=` and a `version=` of its own.

On the wire, field names are camelCase (`orderId`); in Python they are snake_case, and
validation accepts both. Nested models get the same conventions by subclassing `WireModel`.
Unknown fields are ignored, so a reader keeps working when a producer adds fields. Models are
frozen. A `model_config` in a subclass is merged over these defaults.

Reading (`from_event`) never guesses: a different type, a version newer than the model's, a
missing upcaster, a failing upcaster or invalid data all raise `SchemaError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, TypeVar, Unpack

import pydantic
from pydantic.alias_generators import to_camel

from tidings.errors import TidingsError
from tidings.event import Event

__all__ = [
    "EventModel",
    "SchemaError",
    "Upcaster",
    "WireModel",
    "json_schema",
    "registered",
    "upcasters",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the `data` of version N of an event type into the `data` of version N + 1."""

_U = TypeVar("_U", bound=Upcaster)

_MAX_LISTED_ERRORS = 20


class SchemaError(TidingsError, ValueError):
    """An event's data cannot be read as the requested event model.

    Raised for a different event type, a version newer than the model's, a missing or failing
    upcaster, and data that is not an object or fails validation. It is a permanent failure:
    the same event fails the same way every time, so it is never worth retrying; the event
    belongs in the dead-letter topic with this message as the reason.
    """


# (event type, version) -> the model declared for it.
_models: dict[tuple[str, int], type[EventModel]] = {}
# (event type, from_version) -> the upcaster to from_version + 1. Shared by all versions' models.
_upcasters: dict[tuple[str, int], Upcaster] = {}


def _qualified_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


class WireModel(pydantic.BaseModel):
    """A pydantic model with the wire conventions of event models, for the models nested in
    them (an order's items): camelCase on the wire, snake_case in Python, unknown fields
    ignored, frozen. A nested plain `pydantic.BaseModel` keeps its own field names and rules.
    """

    model_config = pydantic.ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )


class EventModel(WireModel):
    """Base class of typed events: one subclass per (event type, version).

    Class keywords: `type` (non-empty string, required) and `version` (integer >= 1, default 1),
    exposed as `event_type` and `event_version`. Declaring a second, different class for a
    (type, version) already declared raises TypeError; re-declaring a class of the same
    qualified name (a module reload) replaces it.
    """

    event_type: ClassVar[str]
    event_version: ClassVar[int]

    def __init_subclass__(
        cls, *, type: str | None = None, version: int = 1, **kwargs: Unpack[pydantic.ConfigDict]
    ) -> None:
        if not isinstance(type, str) or not type:
            if type is None:
                problem = "is missing the class keyword `type=`"
            else:
                problem = f"needs `type=` to be a non-empty string, got {type!r}"
            raise TypeError(
                f"event model {cls.__qualname__} {problem}: declare it as "
                f'`class {cls.__name__}(EventModel, type="EVENT_TYPE", version=1)`'
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise TypeError(
                f"event model {cls.__qualname__} needs `version=` to be an integer >= 1, "
                f"got {version!r}"
            )
        cls.event_type = type
        cls.event_version = version
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Called once pydantic has built the model; `type`/`version` were checked above.
        kwargs.pop("type", None)
        kwargs.pop("version", None)
        super().__pydantic_init_subclass__(**kwargs)
        key = (cls.event_type, cls.event_version)
        existing = _models.get(key)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise TypeError(
                f"{cls.event_type} version {cls.event_version} is already declared by "
                f"{_qualified_name(existing)}; cannot declare it again as {_qualified_name(cls)}"
            )
        _models[key] = cls

    @classmethod
    def upcaster(cls, *, from_version: int) -> Callable[[_U], _U]:
        """Register the decorated function as the upcaster of this model's event type from
        version `from_version` to `from_version + 1`; it returns the function unchanged.

        The function takes the data (camelCase keys, as on the wire) of version `from_version`
        and returns new data for the next version. It must not modify its argument in place
        (it is given a copy anyway). `from_version` must satisfy 1 <= from_version <
        event_version; a second upcaster for the same step raises TypeError, unless it has the
        same qualified name (a module reload), which replaces the first.
        """
        if (
            isinstance(from_version, bool)
            or not isinstance(from_version, int)
            or not 1 <= from_version < cls.event_version
        ):
            raise TypeError(
                f"upcaster for {cls.event_type} (model {cls.__qualname__}, version "
                f"{cls.event_version}) needs 1 <= from_version < {cls.event_version}, "
                f"got {from_version!r}"
            )
        key = (cls.event_type, from_version)

        def register(function: _U) -> _U:
            existing = _upcasters.get(key)
            if existing is not None and _qualified_name(existing) != _qualified_name(function):
                raise TypeError(
                    f"{cls.event_type} already has an upcaster from version {from_version} to "
                    f"{from_version + 1}: {_qualified_name(existing)}; cannot register "
                    f"{_qualified_name(function)} too"
                )
            _upcasters[key] = function
            return function

        return register

    def to_event(
        self,
        *,
        key: str | None = None,
        source: str = "",
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Event:
        """An `Event` of this model's type and version whose data is this model as JSON-ready
        builtins with camelCase keys."""
        return Event(
            type=self.event_type,
            version=self.event_version,
            data=self.__pydantic_serializer__.to_python(self, mode="json", by_alias=True),
            key=key,
            source=source,
            headers={} if headers is None else dict(headers),
            correlation_id=correlation_id,
            causation_id=causation_id,
        )

    @classmethod
    def from_event(cls, event: Event) -> Self:
        """`event`'s data as this model, upcast first if the event has an older version.

        Raises SchemaError if the event has another type or a newer version, if an upcaster
        step is missing or fails, or if the data is not an object or is invalid. The event and
        its data are never modified.
        """
        if event.type != cls.event_type:
            raise SchemaError(
                f"cannot read a {event.type} event as {cls.__qualname__} ({cls.event_type})"
            )
        version = event.version
        if version > cls.event_version:
            raise SchemaError(
                f"{event.type} version {version} is newer than the handler's version "
                f"{cls.event_version}"
            )
        data = event.data
        if not isinstance(data, dict):
            raise SchemaError(
                f"{event.type} version {version} data must be a JSON object, "
                f"got {data.__class__.__name__}"
            )
        try:
            if version != cls.event_version:
                data = _upcast(event.type, version, cls.event_version, data)
            # What model_validate() does, minus its keyword handling (~0.6 us per event).
            model: Self = cls.__pydantic_validator__.validate_python(data)
        except pydantic.ValidationError as exc:
            raise SchemaError(_describe(cls, exc)) from None
        except SchemaError:
            raise
        except RecursionError:
            raise SchemaError(f"{event.type} version {version} data is nested too deeply") from None
        except Exception as exc:  # a model's own validator raising something odd
            raise SchemaError(
                f"{event.type} version {version} data cannot be read as {cls.__qualname__}: "
                f"{exc.__class__.__name__}: {exc}"
            ) from exc
        return model


def _upcast(type: str, version: int, target: int, data: dict[str, Any]) -> dict[str, Any]:
    """`data` of `type` version `version` brought to version `target` (> version)."""
    steps: list[Upcaster] = []
    for step in range(version, target):
        upcaster = _upcasters.get((type, step))
        if upcaster is None:
            raise SchemaError(
                f"{type} has no upcaster from version {step} to {step + 1}, needed to read "
                f"version {version} as version {target}"
            )
        steps.append(upcaster)
    data = _copy_json(data)
    for step, upcaster in enumerate(steps, start=version):
        try:
            data = upcaster(data)
        except Exception as exc:
            raise SchemaError(
                f"{type} upcaster from version {step} to {step + 1} "
                f"({_qualified_name(upcaster)}) failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise SchemaError(
                f"{type} upcaster from version {step} to {step + 1} "
                f"({_qualified_name(upcaster)}) returned {data.__class__.__name__}, not a dict"
            )
    return data


def _copy_json(value: Any) -> Any:
    """A deep copy of the dicts and lists in `value`, so upcasters cannot alter the event."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _describe(model: type[EventModel], exc: pydantic.ValidationError) -> str:
    """One line for the event, then one line per error: field path (as on the wire) and why.

    Input values are left out: they may be personal data, and the event is kept anyway.
    """
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    count = len(errors)
    lines = [
        f"invalid {model.event_type} version {model.event_version} data for "
        f"{model.__qualname__}: {count} error{'' if count == 1 else 's'}"
    ]
    for error in errors[:_MAX_LISTED_ERRORS]:
        lines.append(f"  {_path(error['loc'])}: {error['msg']}")
    if count > _MAX_LISTED_ERRORS:
        lines.append(f"  ... and {count - _MAX_LISTED_ERRORS} more")
    return "\n".join(lines)


def _path(loc: tuple[int | str, ...]) -> str:
    """`items[0].price` for ("items", 0, "price"); `(data)` for an error about the whole object."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(data)"


def json_schema(model: type[EventModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `model`'s data as accepted on the wire (camelCase
    names), titled with the event type and carrying the version as `x-tidings-version`."""
    if not (isinstance(model, type) and issubclass(model, EventModel) and model is not EventModel):
        raise TypeError(f"json_schema() needs an EventModel subclass, got {model!r}")
    schema = model.model_json_schema(by_alias=True)
    schema["title"] = model.event_type
    schema["x-tidings-version"] = model.event_version
    return schema


def upcasters(type: str, from_version: int, to_version: int) -> list[Upcaster] | None:
    """The upcasters that bring `type` data from `from_version` to `to_version`, in order, or
    None if a step is missing."""
    chain = []
    for step in range(from_version, to_version):
        upcaster = _upcasters.get((type, step))
        if upcaster is None:
            return None
        chain.append(upcaster)
    return chain


def registered() -> list[tuple[str, int, type[EventModel]]]:
    """Every declared event model as (type, version, model), sorted by type then version."""
    return [(type, version, _models[type, version]) for type, version in sorted(_models)]
