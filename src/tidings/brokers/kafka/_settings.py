"""`kafka://` URLs and options.

Query parameters and keyword options are librdkafka settings given to every client, or to one
client with a `producer.` or `consumer.` prefix, plus tidings' own options (`_OPTIONS`). Settings
the delivery guarantees depend on are tidings' to set (`_FIXED`). Secrets never appear in
`KafkaSettings.url`; `sasl.password` comes from `PASSWORD_ENV` when not given.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from tidings.brokers.base import DEFAULT_MAX_MESSAGE_BYTES
from tidings.errors import ConfigError

rdkafka_log = logging.getLogger("tidings.kafka.librdkafka")
"""The logger every client gives librdkafka's own log lines to."""

PASSWORD_ENV: Final = "TIDINGS_KAFKA_SASL_PASSWORD"  # noqa: S105 (a variable name)
DEFAULT_PORT: Final = 9092
DEFAULT_REQUEST_TIMEOUT: Final = 15.0
DEFAULT_REVOKE_TIMEOUT: Final = 10.0
DEFAULT_MAX_BUFFER_BYTES: Final = 64 * 1024 * 1024
KAFKA_MAX_MESSAGE_BYTES: Final = DEFAULT_MAX_MESSAGE_BYTES - 1024
"""What a topic with Kafka's default max.message.bytes (1 MiB + 12) takes, uncompressed, for
messages of up to about 150 headers: that limit counts the record batch, whose framing adds up
to 74 bytes plus 6 per header for a batch of one record."""

_OPTIONS: Final = frozenset(
    {"max_message_bytes", "request_timeout", "revoke_timeout", "group_prefix", "max_buffer_bytes"}
)
_FIXED: Final = frozenset(
    {
        "bootstrap.servers",
        "metadata.broker.list",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "partition.assignment.strategy",
        "group.protocol",
        "enable.idempotence",
        "acks",
        "request.required.acks",
        "auto.offset.reset",
        "session.timeout.ms",
        "enable.partition.eof",
    }
)
_SECRET = re.compile(r"password|secret|token", re.IGNORECASE)
_CLIENT_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class KafkaSettings:
    """A parsed `kafka://` URL plus options."""

    url: str
    """The URL with secrets masked."""
    bootstrap: str
    common: dict[str, Any] = field(repr=False)
    producer: dict[str, Any] = field(repr=False)
    consumer: dict[str, Any] = field(repr=False)
    max_message_bytes: int = KAFKA_MAX_MESSAGE_BYTES
    """Larger messages are refused before anything is produced (MessageTooLargeError, like a
    message Kafka refuses)."""
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    """Seconds: the bound of every metadata and admin request."""
    revoke_timeout: float = DEFAULT_REVOKE_TIMEOUT
    """Seconds a rebalance waits for the batch in flight of a partition that moves away."""
    group_prefix: str = ""
    """Prepended to every consumer group name on Kafka; the admin shows and takes names without
    it and lists only the groups that have it."""
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES
    """Bound of what a consumer buffers ahead of the application, in bytes of key + value."""


def parse_settings(url: str, options: Mapping[str, Any]) -> KafkaSettings:
    """Parse `kafka://host:port[,host:port]?setting=value` and keyword options (which win).

    Raises ConfigError naming the problem."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kafka":
        raise ConfigError(f"not a kafka URL: {_mask_url(url)!r}")
    if "@" in parts.netloc:
        raise ConfigError(
            "kafka URL must not contain credentials; give sasl.username as an option and the "
            f"password in ${PASSWORD_ENV}"
        )
    if parts.path not in {"", "/"} or parts.fragment:
        raise ConfigError(
            f"kafka URL {_mask_url(url)!r} has a path; expected kafka://host:port[,host:port]"
        )
    servers = []
    for item in parts.netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(DEFAULT_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"kafka URL {_mask_url(url)!r}: {item!r} is not host:port; "
                "expected kafka://host:port[,host:port]"
            )
        servers.append(f"{host}:{int(port)}")
    given: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in given:
            raise ConfigError(f"kafka URL option {key!r} is given twice")
        given[key] = value
    given.update(options)

    own = {k: given.pop(k) for k in list(given) if k in _OPTIONS}
    unknown = sorted(k for k in given if "." not in k and k not in _OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown kafka option(s) {', '.join(unknown)}; tidings options are "
            f"{', '.join(sorted(_OPTIONS))}, librdkafka settings contain a dot "
            "(e.g. security.protocol)"
        )
    common: dict[str, Any] = {}
    producer: dict[str, Any] = {}
    consumer: dict[str, Any] = {}
    for key, value in given.items():
        target, name = common, key
        if key.startswith("producer."):
            target, name = producer, key.removeprefix("producer.")
        elif key.startswith("consumer."):
            target, name = consumer, key.removeprefix("consumer.")
        if name in _FIXED:
            raise ConfigError(
                f"kafka setting {key!r} is managed by tidings and cannot be set "
                "(see tidings.brokers.kafka)"
            )
        target[name] = value
    if "sasl.password" not in common and os.environ.get(PASSWORD_ENV):
        uses_sasl = "sasl" in str(common.get("security.protocol", "")).lower() or any(
            k.startswith("sasl.") for k in common
        )
        if uses_sasl:
            common["sasl.password"] = os.environ[PASSWORD_ENV]
    common["bootstrap.servers"] = ",".join(servers)
    common.setdefault("client.id", _default_client_id())

    return KafkaSettings(
        url=_mask_url(url),
        bootstrap=",".join(servers),
        common=common,
        producer=producer,
        consumer=consumer,
        max_message_bytes=_positive_int(
            "max_message_bytes", own.get("max_message_bytes"), KAFKA_MAX_MESSAGE_BYTES
        ),
        request_timeout=_positive_float(
            "request_timeout", own.get("request_timeout"), DEFAULT_REQUEST_TIMEOUT
        ),
        revoke_timeout=_positive_float(
            "revoke_timeout", own.get("revoke_timeout"), DEFAULT_REVOKE_TIMEOUT
        ),
        group_prefix=str(own.get("group_prefix") or ""),
        max_buffer_bytes=_positive_int(
            "max_buffer_bytes", own.get("max_buffer_bytes"), DEFAULT_MAX_BUFFER_BYTES
        ),
    )


def _positive_int(name: str, value: object, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be >= 1, got {number}")
    return number


def _positive_float(name: str, value: object, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{name} must be > 0, got {number}")
    return number


def _mask_url(url: str) -> str:
    """`url` with the values of secret-looking query parameters replaced by ***."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(
        f"{k}={'***' if _SECRET.search(k) else v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit(parts._replace(query=query))


def _default_client_id() -> str:
    host = _CLIENT_ID_CHARS.sub("-", socket.gethostname())[:40] or "host"
    return f"tidings-{host}-{os.getpid()}"
