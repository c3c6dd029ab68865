"""Broker backends and `connect(url)`, which picks one by URL scheme.

* `sqlite:///path/to/bus.db` - the embedded, durable, multi-process log (default);
* `memory://` or `memory://NAME` - in-process, for unit tests;
* `kafka://host:port[,host:port]?setting=value` - Apache Kafka (needs confluent-kafka).
"""

from __future__ import annotations

from typing import Any

from tidings.brokers.base import Broker
from tidings.errors import ConfigError


def connect(url: str, **options: Any) -> Broker:
    """A broker for `url`. Options are backend settings (see each backend's docs).

    Raises ConfigError for an unknown scheme or a malformed URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"broker URL {url!r} is malformed; expected e.g. sqlite:///path/to/bus.db, memory:// "
            "or kafka://host:9092"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        from tidings.brokers.memory import MemoryBroker

        return MemoryBroker(url, **options)
    if scheme == "sqlite":
        from tidings.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, **options)
    if scheme == "kafka":
        try:
            from tidings.brokers.kafka import KafkaBroker
        except ImportError as exc:
            raise ConfigError(
                f"kafka:// needs the confluent-kafka package ({exc}); "
                "install it with: pip install 'confluent-kafka>=2.6'"
            ) from None
        return KafkaBroker(url, **options)
    raise ConfigError(
        f"unknown broker scheme {scheme!r} in {url!r}; supported: sqlite://, memory://, kafka://"
    )
