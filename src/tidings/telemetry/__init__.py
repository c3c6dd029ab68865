"""Telemetry for services: tracing (OpenTelemetry), metrics (Prometheus), JSON logs and health
endpoints. Each part plugs into a service's seams - middleware, observers, publish and relay
hooks - and costs nothing when it is off."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings.runtime.spec import ServiceSpec

log = logging.getLogger("tidings.telemetry")


def auto_instrument(service: ServiceSpec) -> None:
    """Turn on what the environment asks for: tracing when `tidings.telemetry.tracing`
    says it is configured (the standard `OTEL_*` variables, or the application's own tracer
    provider) and OpenTelemetry is installed (`pip install 'tidings[otel]'`)."""
    try:
        from tidings.telemetry import tracing
    except ImportError:
        if any(name.startswith("OTEL_EXPORTER_OTLP") for name in os.environ):
            log.warning(
                "%s: OTEL_EXPORTER_OTLP_* is set but OpenTelemetry is not installed; "
                "pip install 'tidings[otel]' to trace",
                service.name,
            )
        return
    if tracing.configured():
        tracing.instrument(service)
