"""Where the claim-check, sequence, ordering and article-envelope tests run their services: the
embedded SQLite broker with SQLite stores, or Kafka with PostgreSQL stores (topic names, a
group prefix and schemas of the test's own, removed afterwards). Kafka and PostgreSQL come from
`eval "$(scripts/services env)"`; without them those cases skip, or fail under CI=true."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import server_setting

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("kafka", id="kafka+postgres"),
]


@dataclass
class Site:
    """`broker` URL; `store(service)` a store URL per service; `name(base)` a topic or service
    name of this test (Kafka is shared); `blobs` a blob directory both services share."""

    kind: str
    broker: str
    blobs: Path
    suffix: str = ""
    tmp: Path | None = None
    dsn: str = ""
    bootstrap: str = ""
    stores: dict[str, str] = field(default_factory=dict)

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}" if self.suffix else base

    def store(self, service: str) -> str:
        if service not in self.stores:
            if self.tmp is not None:
                self.stores[service] = f"sqlite:///{self.tmp}/{service}.db"
            else:
                joiner = "&" if "?" in self.dsn else "?"
                schema = f"s_{self.suffix}_{len(self.stores)}"
                self.stores[service] = f"{self.dsn}{joiner}schema={schema}"
        return self.stores[service]


@contextlib.contextmanager
def site(kind: str, tmp_path: Path) -> Iterator[Site]:
    blobs = tmp_path / "blobs"
    if kind == "sqlite":
        yield Site("sqlite", f"sqlite:///{tmp_path}/bus.db", blobs, tmp=tmp_path)
        return
    bootstrap = server_setting("TIDINGS_KAFKA_BOOTSTRAP", "kafka")
    dsn = server_setting("TIDINGS_POSTGRES_DSN", "postgres")
    suffix = uuid.uuid4().hex[:10]
    prefix = f"test-{suffix}."
    url = f"kafka://{bootstrap}?group_prefix={prefix}"
    try:
        yield Site("kafka", url, blobs, suffix, dsn=dsn, bootstrap=bootstrap)
    finally:
        _drop_kafka(bootstrap, prefix, suffix)
        _drop_schemas(dsn, f"s_{suffix}_")


def _drop_kafka(bootstrap: str, prefix: str, suffix: str) -> None:
    import confluent_kafka as ck
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=10).topics if suffix in t]
    for future in admin.delete_topics(topics, request_timeout=10).values() if topics else []:
        with contextlib.suppress(ck.KafkaException):
            future.result()
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    ours = [g.group_id for g in groups if g.group_id.startswith(prefix)]
    for future in admin.delete_consumer_groups(ours, request_timeout=10).values() if ours else []:
        with contextlib.suppress(ck.KafkaException):
            future.result()


def _drop_schemas(dsn: str, prefix: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)
        ).fetchall()
        for (schema,) in rows:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
