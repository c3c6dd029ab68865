"""Where the example's services keep their data, and the simulated gateway's behaviour."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tidings import Retry


@dataclass(frozen=True, slots=True)
class Settings:
    """`broker`/`store` None means tidings' own defaults (`TIDINGS_BROKER`/`TIDINGS_STORE`, else
    `sqlite:///.tidings/bus.db` and `sqlite:///.tidings/{service}.db`): the same code runs on
    Kafka and PostgreSQL by configuration."""

    broker: str | None = None
    store: str | None = None
    mailbox: Path = Path(".tidings/mailbox")
    payment_failure_rate: float = 0.1
    payment_latency_s: float = 0.0
    retry: Retry | None = None

    @classmethod
    def in_directory(cls, path: Path, **overrides: object) -> Settings:
        """Everything under `path`: the mailbox and, unless `TIDINGS_BROKER` / `TIDINGS_STORE`
        name other backends, the bus and one database per service."""
        path = path.resolve()
        return cls(
            broker=os.environ.get("TIDINGS_BROKER") or f"sqlite:///{path}/bus.db",
            store=os.environ.get("TIDINGS_STORE") or f"sqlite:///{path}/{{service}}.db",
            mailbox=path / "mailbox",
            **overrides,  # type: ignore[arg-type]
        )
