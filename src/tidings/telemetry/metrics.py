"""Prometheus metrics for services (`pip install 'tidings[metrics]'`).

`instrument(service)` makes the service count what becomes of its events (an observer) and what
its relay publishes (a relay hook); `Metrics.refresh(service)` reads its consumer lag and outbox
(the serving task does every few seconds). Everything goes into one registry per process,
labelled by service, so one `/metrics` endpoint serves every service of a process:

* `tidings_consumer_lag{service,group,topic,partition}` - records not committed yet
* `tidings_consumer_lag_seconds{service,group,topic,partition}` - age of the oldest of them
* `tidings_events_processed_total{service,handler,type,outcome}` - outcome: ok, retried,
  dead_lettered, duplicate_skipped, unknown_type
* `tidings_handler_duration_seconds{service,handler}` - successful attempts (histogram)
* `tidings_outbox_pending{service}`, `tidings_outbox_oldest_age_seconds{service}`
* `tidings_relay_published_total{service,topic}`
* `tidings_dead_letters_total{service,reason}`
* `tidings_transaction_conflicts_total{service}` - deadlock or serialization retries
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tidings.brokers.base import CanInspect, CanRead
from tidings.records import Message, TopicPartition
from tidings.runtime.outcomes import Outcome, Settled

if TYPE_CHECKING:
    from tidings.runtime.spec import ServiceSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The metrics of the services of one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.lag = Gauge(
            "tidings_consumer_lag",
            "Records of a partition the group has not committed yet",
            ["service", "group", "topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "tidings_consumer_lag_seconds",
            "Age of the oldest record of a partition the group has not committed yet",
            ["service", "group", "topic", "partition"],
            registry=r,
        )
        self.processed = Counter(
            "tidings_events_processed",
            "What became of events, per handler and outcome",
            ["service", "handler", "type", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "tidings_handler_duration_seconds",
            "Time a handler attempt took (successful attempts)",
            ["service", "handler"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.outbox_pending = Gauge(
            "tidings_outbox_pending", "Outbox rows not relayed yet", ["service"], registry=r
        )
        self.outbox_age = Gauge(
            "tidings_outbox_oldest_age_seconds",
            "Age of the oldest outbox row not relayed yet",
            ["service"],
            registry=r,
        )
        self.relayed = Counter(
            "tidings_relay_published",
            "Events the outbox relay published",
            ["service", "topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tidings_dead_letters", "Events dead-lettered", ["service", "reason"], registry=r
        )
        self.conflicts = Counter(
            "tidings_transaction_conflicts",
            "Transactions the database aborted as a deadlock or serialization failure, retried",
            ["service"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    async def refresh(self, service: ServiceSpec) -> None:
        """Read `service`'s consumer lag and outbox into the gauges."""
        stats = await service.store.outbox_stats()
        self.outbox_pending.labels(service.name).set(stats.pending)
        self.outbox_age.labels(service.name).set(stats.oldest_age_s or 0.0)
        admin = service.broker.admin
        if not service.handlers or not isinstance(admin, CanInspect):
            return
        info = await admin.describe_group(service.name)
        now = time.time()
        reader = service.broker if isinstance(service.broker, CanRead) else None
        for p in info.partitions:
            labels = (service.name, info.name, p.topic, str(p.partition))
            self.lag.labels(*labels).set(p.lag)
            age = 0.0
            if p.lag and reader is not None:
                position = max(p.committed or p.start_offset, p.start_offset)
                records = await reader.read(TopicPartition(p.topic, p.partition), position, 1)
                if records:
                    age = max(0.0, now - records[0].timestamp / 1000)
            self.lag_seconds.labels(*labels).set(age)


class _ServiceMetrics:
    """What one service tells the metrics: an outcome observer and a relay hook."""

    def __init__(self, metrics: Metrics, service: str) -> None:
        self.metrics = metrics
        self.service = service

    def settled(self, outcomes: Sequence[Settled]) -> None:
        metrics, service = self.metrics, self.service
        for o in outcomes:
            handler = o.handler.consumer if o.handler is not None else ""
            kind = o.event.type if o.event is not None else ""
            metrics.processed.labels(service, handler, kind, o.outcome.value).inc()
            if o.outcome is Outcome.OK and o.duration is not None:
                metrics.duration.labels(service, handler).observe(o.duration)
            elif o.outcome is Outcome.DEAD_LETTERED:
                metrics.dead_letters.labels(service, o.reason or "").inc()
            elif o.outcome is Outcome.RETRIED and _conflict(o.error):
                metrics.conflicts.labels(service).inc()

    def relayed(self, topic: str, messages: Sequence[Message], started: float) -> None:
        self.metrics.relayed.labels(self.service, topic).inc(len(messages))


def _conflict(error: BaseException | None) -> bool:
    from tidings.retry import is_transaction_conflict

    return error is not None and is_transaction_conflict(error)


def instrument(service: ServiceSpec, metrics: Metrics) -> None:
    """Make `service` report to `metrics`; idempotent."""
    if "metrics" in service.extensions:
        return
    reporter = _ServiceMetrics(metrics, service.name)
    service.observers.append(reporter)
    service.relay_hooks.append(reporter)
    service.extensions["metrics"] = metrics
