"""Structured logs: `configure("json")` (or `TIDINGS_LOG_FORMAT=json`) writes one JSON object per
line - time, level, logger, message, and what tidings knows of the moment: service, handler,
event id and type, correlation and causation ids, topic, partition and offset, and the trace
and span ids when tracing is on. The human format stays the terminal's default.

The event fields come from a handler middleware (`instrument(service)`), so every line logged
while a handler runs - by tidings or by the handler - carries them."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tidings.runtime.handlers import Invocation, Next

if TYPE_CHECKING:
    from tidings.runtime.spec import ServiceSpec

FORMATS = ("human", "json")
HUMAN = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tidings_log_context", default=None
)


def _trace_ids() -> dict[str, str]:
    try:
        from opentelemetry import trace
    except ImportError:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the event context of the moment."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _current.get()
        if context:
            line.update(context)
        line.update(_trace_ids())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


async def middleware(call: Invocation, next: Next) -> None:
    """Put the attempt's event context where the JSON formatter finds it."""
    event = call.event
    context: dict[str, Any] = {
        "service": call.context.service.name,
        "handler": call.handler.consumer,
        "event_id": event.id,
        "event_type": event.type,
        "correlation_id": event.correlation_id,
        "attempt": call.attempt,
    }
    if event.causation_id is not None:
        context["causation_id"] = event.causation_id
    position = call.position
    if position is not None:
        context["topic"], context["partition"], context["offset"] = position
    token = _current.set(context)
    try:
        await next(call)
    finally:
        _current.reset(token)


def instrument(service: ServiceSpec) -> None:
    """Add the log-context middleware to `service` (inside tracing, so its span ids are the
    attempt's); idempotent."""
    if middleware in service.middleware:
        return
    tracing = service.extensions.get("tracing")
    position = 1 if tracing is not None else 0
    service.middleware.insert(position, middleware)


def chosen(format: str | None = None) -> str:
    """The log format asked for: `format`, else `TIDINGS_LOG_FORMAT`, else human."""
    value = (format or os.environ.get("TIDINGS_LOG_FORMAT") or "human").lower()
    if value not in FORMATS:
        from tidings.errors import ConfigError

        raise ConfigError(f"log format must be one of {', '.join(FORMATS)}, got {value!r}")
    return value


def configure(format: str | None = None, level: int = logging.INFO) -> str:
    """Send the root logger's records to stderr in `chosen(format)`; returns the format."""
    value = chosen(format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if value == "json" else logging.Formatter(HUMAN))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return value
