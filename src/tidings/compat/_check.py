"""Compatibility modes, and checking a new schema (or event model) against earlier ones."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tidings.compat._diff import diff_labelled, version_of
from tidings.compat._kinds import Kind
from tidings.compat._samples import samples
from tidings.schema import EventModel, _upcasters, json_schema

__all__ = ["Incompatibility", "Mode", "check", "check_with_upcast"]


class Mode(enum.StrEnum):
    """A compatibility policy, as Confluent Schema Registry names them.

    BACKWARD (the default): consumers using the new schema can read data written with the
    last earlier one. FORWARD: consumers using the last earlier schema can read data written
    with the new one. FULL: both. The *_TRANSITIVE modes check against every earlier version,
    not only the last. NONE checks nothing.
    """

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"
    NONE = "NONE"

    @classmethod
    def parse(cls, value: Mode | str) -> Mode:
        """`value` as a Mode, accepting any case (`"full_transitive"`); ValueError otherwise."""
        if isinstance(value, Mode):
            return value
        try:
            return cls(str(value).strip().upper())
        except ValueError:
            names = ", ".join(mode.value for mode in cls)
            raise ValueError(f"unknown compatibility mode {value!r}: use one of {names}") from None

    @property
    def backward(self) -> bool:
        """Whether this mode requires new readers to read earlier data."""
        return self in (Mode.BACKWARD, Mode.BACKWARD_TRANSITIVE, Mode.FULL, Mode.FULL_TRANSITIVE)

    @property
    def forward(self) -> bool:
        """Whether this mode requires earlier readers to read new data."""
        return self in (Mode.FORWARD, Mode.FORWARD_TRANSITIVE, Mode.FULL, Mode.FULL_TRANSITIVE)

    @property
    def transitive(self) -> bool:
        """Whether this mode checks against every earlier version, not only the last."""
        return self.value.endswith("_TRANSITIVE")


@dataclass(frozen=True)
class Incompatibility:
    """A change that breaks a compatibility mode: where (`path`), which rule (`kind`), which
    direction it breaks (`breaks`: Mode.BACKWARD or Mode.FORWARD), which schemas read and
    wrote (`reader`, `writer`: "v2", "v1"...) and what differs (`detail`). `message` (and
    `str()`) is one sentence for a CI log."""

    path: str
    kind: Kind
    breaks: Mode
    reader: str
    writer: str
    detail: str

    @property
    def message(self) -> str:
        return (
            f"{self.path}: {self.detail} ({self.kind}) - breaks {self.breaks}: consumers of "
            f"{self.reader} cannot read {self.writer} data"
        )

    def __str__(self) -> str:
        return self.message


def check(
    mode: Mode | str, new: Mapping[str, Any] | bool, previous: Sequence[Mapping[str, Any] | bool]
) -> list[Incompatibility]:
    """What stops `new` from being registered after `previous` (earlier versions' schemas,
    oldest first) under `mode`: the differences that break it, against the last earlier
    schema, or against each of them for a *_TRANSITIVE mode (oldest first; for FULL modes the
    BACKWARD ones of a version before its FORWARD ones). Empty when compatible.

    Raises InvalidSchemaError for a schema it cannot read, ValueError for an unknown mode.
    """
    mode = Mode.parse(mode)
    if isinstance(previous, Mapping):
        raise TypeError("check() takes the earlier schemas as a list, oldest first")
    if mode is Mode.NONE or not previous:
        return []
    against = list(enumerate(previous))
    if not mode.transitive:
        against = against[-1:]
    found: list[Incompatibility] = []
    for index, earlier in against:
        new_label, old_label = _labels(new, earlier, index)
        found += _broken(mode, new, earlier, new_label, old_label, backward=True)
        found += _broken(mode, new, earlier, new_label, old_label, backward=False)
    return found


def check_with_upcast(
    mode: Mode | str,
    new_model: type[EventModel],
    old_models: Sequence[type[EventModel]],
    *,
    verify: bool = True,
    require_upcasters: bool = True,
) -> list[Incompatibility]:
    """`check()` for event models, where upcasters count: a tidings consumer of `new_model`
    reads an older version's data through the upcaster chain, never directly.

    For each earlier model checked (the last, or all for a *_TRANSITIVE mode):

    - BACKWARD, when an upcaster exists for every step from its version to the new one: the
      schema rules are not applied (the data a consumer validates is the chain's output).
      With `verify`, the chain also runs on sample data built from the earlier model's schema
      (required properties only; every property), each sample first validated and serialized
      by the earlier model (exactly what its producers write), the result read with
      `new_model.from_event()`; the first sample that raises or comes out invalid is an
      UPCAST_FAILED.
    - BACKWARD, when a step has no upcaster: the schema rules apply, and with
      `require_upcasters` (the default) an UPCASTER_MISSING is reported too, because
      `from_event()` refuses an older version it cannot upcast, however compatible the
      schemas. Pass False when the readers of this type are not tidings event models.
    - FORWARD: the schema rules only; upcasters play no part in old readers reading new data.

    Raises TypeError unless every model is an EventModel of the new model's type and an
    older version.
    """
    mode = Mode.parse(mode)
    models = _checked_models(new_model, old_models)
    if mode is Mode.NONE or not models:
        return []
    if not mode.transitive:
        models = models[-1:]
    new_schema = json_schema(new_model)
    new_label = f"v{new_model.event_version}"
    found: list[Incompatibility] = []
    for old_model in models:
        old_schema = json_schema(old_model)
        old_label = f"v{old_model.event_version}"
        if mode.backward:
            missing = _missing_steps(new_model, old_model)
            if missing:
                found += _broken(mode, new_schema, old_schema, new_label, old_label, backward=True)
                if require_upcasters:
                    found.append(_missing(new_model, old_label, new_label, missing))
            elif verify:
                found += _run_upcasters(new_model, old_model, old_schema, old_label, new_label)
        found += _broken(mode, new_schema, old_schema, new_label, old_label, backward=False)
    return found


def _broken(
    mode: Mode,
    new: Mapping[str, Any] | bool,
    old: Mapping[str, Any] | bool,
    new_label: str,
    old_label: str,
    *,
    backward: bool,
) -> list[Incompatibility]:
    if backward and mode.backward:
        found = diff_labelled(old, new, old_label, new_label)
        breaks, reader, writer = Mode.BACKWARD, new_label, old_label
    elif not backward and mode.forward:
        found = diff_labelled(new, old, new_label, old_label)
        breaks, reader, writer = Mode.FORWARD, old_label, new_label
    else:
        return []
    return [
        Incompatibility(d.path, d.kind, breaks, reader, writer, d.message)
        for d in found
        if not d.compatible
    ]


def _labels(
    new: Mapping[str, Any] | bool, earlier: Mapping[str, Any] | bool, index: int
) -> tuple[str, str]:
    new_version, old_version = version_of(new), version_of(earlier)
    new_label = "the new schema" if new_version is None else f"v{new_version}"
    old_label = f"earlier schema #{index + 1}" if old_version is None else f"v{old_version}"
    if new_label == old_label:
        return f"the new {new_label}", f"the earlier {old_label}"
    return new_label, old_label


def _checked_models(
    new_model: type[EventModel], old_models: Sequence[type[EventModel]]
) -> list[type[EventModel]]:
    if not _is_model(new_model):
        raise TypeError(f"check_with_upcast() needs an EventModel subclass, got {new_model!r}")
    models = list(old_models)
    for model in models:
        if not _is_model(model):
            raise TypeError(f"check_with_upcast() needs EventModel subclasses, got {model!r}")
        if model.event_type != new_model.event_type:
            raise TypeError(
                f"{model.__qualname__} is a {model.event_type} event, not "
                f"{new_model.event_type} like {new_model.__qualname__}"
            )
        if model.event_version >= new_model.event_version:
            raise TypeError(
                f"{model.__qualname__} (version {model.event_version}) is not older than "
                f"{new_model.__qualname__} (version {new_model.event_version})"
            )
    return models


def _is_model(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, EventModel) and model is not EventModel


def _missing_steps(new_model: type[EventModel], old_model: type[EventModel]) -> list[int]:
    """The versions from which no upcaster leads on, between the old model's and the new's."""
    event_type = new_model.event_type
    steps = range(old_model.event_version, new_model.event_version)
    return [step for step in steps if (event_type, step) not in _upcasters]


def _missing(
    new_model: type[EventModel], old_label: str, new_label: str, missing: list[int]
) -> Incompatibility:
    steps = ", ".join(f"{step} to {step + 1}" for step in missing)
    return Incompatibility(
        "#",
        Kind.UPCASTER_MISSING,
        Mode.BACKWARD,
        new_label,
        old_label,
        f"{new_model.event_type} has no upcaster from version {steps}, and a tidings consumer "
        f"reads {old_label} events only through upcasters",
    )


def _run_upcasters(
    new_model: type[EventModel],
    old_model: type[EventModel],
    old_schema: dict[str, Any],
    old_label: str,
    new_label: str,
) -> list[Incompatibility]:
    found = []
    for what, sample in samples(old_schema):
        try:  # what an old producer writes: the old model's own serialization
            event = old_model.model_validate(sample).to_event()
        except Exception:  # a sample the old model rejects proves nothing  # noqa: S112
            continue
        try:
            new_model.from_event(event)
        except Exception as exc:
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            found.append(
                Incompatibility(
                    "#",
                    Kind.UPCAST_FAILED,
                    Mode.BACKWARD,
                    new_label,
                    old_label,
                    f"the upcasters do not turn a {what} {old_label} sample "
                    f"{_brief(event.data)} into valid {new_label} data: {reason or repr(exc)}",
                )
            )
            break  # one failing sample shows the chain is broken
    return found


def _brief(data: Any, limit: int = 160) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."
