"""This process's stable identity among the processes of its services: `TIDINGS_INSTANCE_ID`.

Give each process of a service its own id that survives restarts (a StatefulSet pod's name, a
systemd instance name), unique among that service's processes. Then a process killed and
started again takes its place back at once instead of waiting for the dead one's leases to
expire: the outbox relay's lease (its holder is `relay-<id>`) and, on Kafka, its partitions
(the consumer joins as static member `group.instance.id=<id>`). Unset: a fresh identity per
start (the safe default: two processes can never share one)."""

from __future__ import annotations

import os
import re
from typing import Final

from tidings.errors import ConfigError

INSTANCE_ENV: Final = "TIDINGS_INSTANCE_ID"
_VALID: Final = re.compile(r"[A-Za-z0-9._-]{1,100}")


def instance_id() -> str | None:
    """`TIDINGS_INSTANCE_ID`, or None when unset or empty; ConfigError if it is malformed."""
    value = os.environ.get(INSTANCE_ENV, "").strip()
    if not value:
        return None
    if not _VALID.fullmatch(value):
        raise ConfigError(f"{INSTANCE_ENV}={value!r}: use 1-100 letters, digits, '.', '_' or '-'")
    return value
