"""Distributed tracing with OpenTelemetry (`pip install 'tidings[otel]'`), following its
messaging semantic conventions.

`instrument(service)` plugs into a service's seams, nothing else: a publish hook makes a
`create <topic>` span (PRODUCER) for every event published through a Context and puts its W3C
trace context in the event (`traceparent`, stored with the outbox row, so the trace survives
however long the event waits); a middleware makes a `process <topic>` span (CONSUMER) for every
handler attempt, a child of the event's trace context - one span per event and handler, also
in batch transactions - with retries as span events; an observer marks dead letters (a
`dead_letter <topic>` span with error status and the reason); the relay's hook makes one
`send <topic>` span (PRODUCER) per publish, linked to the events it carries.

Tracing is on when `configured()`: the OpenTelemetry SDK is installed, `OTEL_SDK_DISABLED` is not
true, and either the application set its own tracer provider (respected as it is) or an
exporter is configured with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_TRACES_EXPORTER`). Then tidings makes one tracer
provider per service, named `OTEL_SERVICE_NAME` or the service's name, exporting over OTLP/HTTP,
sampled per `OTEL_TRACES_SAMPLER`. Off, nothing is installed and nothing is paid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from tidings.event import Event
from tidings.records import Message
from tidings.runtime.handlers import Invocation, Next
from tidings.runtime.outcomes import Outcome, Settled

if TYPE_CHECKING:
    from tidings.runtime.spec import ServiceSpec

_EXPORTER_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)


def configured() -> bool:
    """Whether tracing should be on (see the module docstring)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    own = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return own or any(os.environ.get(name) for name in _EXPORTER_VARIABLES)


def _provider(service_name: str) -> trace.TracerProvider:
    """The application's tracer provider if it set one, else one of this service's own."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def parent_of(event: Event) -> otel_context.Context | None:
    """The trace context an event carries, or None (also for a malformed traceparent)."""
    traceparent = event.traceparent
    if traceparent is None:
        return None
    span_context = _span_context(traceparent, event.tracestate)
    if span_context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def _span_context(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The remote span context of a W3C traceparent (version 00 layout, as the propagator
    reads it), or None if it is not one."""
    if len(traceparent) < 55 or traceparent[2] != "-" or traceparent[35] != "-":
        return None
    try:
        trace_id = int(traceparent[3:35], 16)
        span_id = int(traceparent[36:52], 16)
        flags = int(traceparent[53:55], 16)
    except ValueError:
        return None
    if traceparent[:2] == "ff" or not trace_id or not span_id or traceparent[52] != "-":
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state
    )


def _event_attributes(event: Event) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.message.id": event.id,
        "messaging.message.conversation_id": event.correlation_id or event.id,
        "tidings.event.type": event.type,
        "tidings.event.version": event.version,
    }
    if event.causation_id is not None:
        attributes["tidings.causation_id"] = event.causation_id
    if event.key is not None:
        attributes["messaging.kafka.message.key"] = event.key
    return attributes


class Tracing:
    """The tracing of one service: its publish hook, middleware, observer and relay hook."""

    def __init__(self, service: ServiceSpec, provider: trace.TracerProvider | None = None) -> None:
        self.service = service
        self.provider = provider or _provider(service.name)
        self.tracer = self.provider.get_tracer("tidings")
        self.system = "kafka" if service.broker.url.startswith("kafka") else "tidings"
        self._commons: dict[tuple[str, str], dict[str, Any]] = {}

    def _common(self, operation: str, kind: str, topic: str) -> dict[str, Any]:
        """The attributes a span has at its start (where samplers see them), kept per
        operation and topic (the SDK copies what it is given)."""
        key = (operation, topic)
        common = self._commons.get(key)
        if common is None:
            common = self._commons[key] = {
                "messaging.system": self.system,
                "messaging.operation.type": kind,
                "messaging.operation.name": operation,
                "messaging.destination.name": topic,
            }
            if operation != "publish" and operation != "send":
                common["messaging.consumer.group.name"] = self.service.name
        return common

    # create: where an event is published into the outbox --------------------------------

    def on_publish(self, topic: str, event: Event) -> Event:
        """A `create` span for `event` (a child of the current span, such as the handler's
        `process` span), its context put in the event (the publish hook)."""
        span = self.tracer.start_span(
            f"create {topic}",
            kind=SpanKind.PRODUCER,
            attributes=self._common("publish", "create", topic),
        )
        if span.is_recording():  # the event's attributes only for spans that are kept
            span.set_attributes(_event_attributes(event))
        span.end()
        context = span.get_span_context()
        if not context.is_valid:
            return event
        traceparent = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        )
        tracestate = context.trace_state.to_header() or None
        return msgspec.structs.replace(event, traceparent=traceparent, tracestate=tracestate)

    # process: one span per handler attempt ------------------------------------------------

    async def middleware(self, call: Invocation, next: Next) -> None:
        event = call.event
        position = call.position
        topic = position[0] if position else ""
        span = self.tracer.start_span(
            f"process {topic}",
            context=parent_of(event),
            kind=SpanKind.CONSUMER,
            attributes=self._common("process", "process", topic),
        )
        if span.is_recording():  # the event's attributes only for spans that are kept
            attributes = _event_attributes(event)
            attributes["tidings.handler"] = call.handler.consumer
            if call.attempt > 1:
                attributes["tidings.attempt"] = call.attempt
            if position is not None:
                attributes["messaging.destination.partition.id"] = str(position[1])
                attributes["messaging.kafka.offset"] = position[2]
            span.set_attributes(attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            if call.attempt > 1:
                span.add_event("retry", {"tidings.attempt": call.attempt})
            await next(call)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    # outcomes: dead letters as errors ---------------------------------------------------------

    def settled(self, outcomes: Sequence[Settled]) -> None:
        for outcome in outcomes:
            if outcome.outcome is not Outcome.DEAD_LETTERED:
                continue
            topic = outcome.record.topic
            attributes = dict(self._common("dead_letter", "settle", topic))
            attributes["tidings.dead_letter.reason"] = outcome.reason or ""
            attributes["tidings.dead_letter.topic"] = self.service.dead_letter_topic
            if outcome.event is not None:
                attributes |= _event_attributes(outcome.event)
            if outcome.handler is not None:
                attributes["tidings.handler"] = outcome.handler.consumer
            parent = parent_of(outcome.event) if outcome.event is not None else None
            span = self.tracer.start_span(
                f"dead_letter {topic}",
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
            )
            if outcome.error is not None:
                span.record_exception(outcome.error)
            span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {outcome.reason}"))
            span.end()

    # send: the relay's publish of outbox rows ----------------------------------------------------

    def relayed(self, topic: str, messages: Sequence[Message], started: float) -> None:
        """A `send` span per relay publish, linked to the events' own spans; `started` is
        `time.time()` when the publish began."""
        links = []
        for message in messages:
            for name, value in message.headers:
                if name == "ce_traceparent":
                    links.append(_link(value.decode("ascii", "replace")))
                    break
            else:
                traceparent = _structured_traceparent(message.value)
                if traceparent is not None:
                    links.append(_link(traceparent))
        attributes = dict(self._common("send", "send", topic))
        attributes["messaging.batch.message_count"] = len(messages)
        span = self.tracer.start_span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=[link for link in links if link is not None],
            start_time=int(started * 1e9),
        )
        span.end(end_time=time.time_ns())

    def shutdown(self) -> None:
        """Export what is buffered (a provider of tidings' own)."""
        flush = getattr(self.provider, "force_flush", None)
        if flush is not None:
            flush()


def _link(traceparent: str) -> Link | None:
    span_context = _span_context(traceparent)
    return Link(span_context) if span_context is not None else None


_TRACEPARENT_KEY = b'"traceparent":"'


def _structured_traceparent(value: bytes) -> str | None:
    """The traceparent of a structured-mode CloudEvent, found without decoding it all."""
    start = value.find(_TRACEPARENT_KEY)
    if start < 0:
        return None
    start += len(_TRACEPARENT_KEY)
    return value[start : start + 55].decode("ascii", "replace")


def instrument(service: ServiceSpec, provider: trace.TracerProvider | None = None) -> Tracing:
    """Trace `service` (see the module docstring); idempotent."""
    existing = service.extensions.get("tracing")
    if isinstance(existing, Tracing):
        return existing
    tracing = Tracing(service, provider)
    service.publish_hooks.append(tracing.on_publish)
    service.middleware.insert(0, tracing.middleware)
    service.observers.append(tracing)
    service.relay_hooks.append(tracing)
    service.extensions["tracing"] = tracing
    return tracing
