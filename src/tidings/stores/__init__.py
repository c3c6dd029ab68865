"""Store backends and `connect_store(url)`, which picks one by URL scheme.

* `sqlite:///path/to/service.db` - the embedded default.
* `postgresql://user:password@host:port/dbname?schema=name` (or `postgres://`) - PostgreSQL.
* `memory://` - a throwaway store for tests (SQLite in a private temporary directory).
"""

from __future__ import annotations

from typing import Any

from tidings.errors import ConfigError
from tidings.stores.base import Store


def connect_store(url: str, **options: Any) -> Store:
    """A store for `url` (not started: call `await store.start()` or use `async with`).

    Raises ConfigError for an unknown scheme or a malformed URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"store URL {url!r} is malformed; expected e.g. sqlite:///path/to/service.db"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from tidings.stores.sqlite import SQLiteStore

        return SQLiteStore(url, **options)
    if scheme in ("postgresql", "postgres"):
        from tidings.stores.postgres import PostgresStore

        return PostgresStore(url, **options)
    if scheme == "memory":
        from tidings.stores.memory import MemoryStore

        return MemoryStore(url, **options)
    raise ConfigError(
        f"unknown store scheme {scheme!r}; supported: sqlite://, postgresql://, memory://"
    )
