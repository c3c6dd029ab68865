"""The SQLite store: `sqlite:///path/to/service.db`, option `synchronous` (`full` by default: a
committed transaction survives power loss).

SQLite has one writer at a time, so transactions are serialized - within a process by an
asyncio lock, across processes by `BEGIN IMMEDIATE` (which waits; never "database is locked") -
outbox seqs follow commit order, and the relay can never skip a row that commits late.
"""

from tidings.stores.sqlite._store import CHECKPOINT_INTERVAL_S, SQLiteStore
from tidings.stores.sqlite._transaction import SQLiteTransaction

__all__ = ["CHECKPOINT_INTERVAL_S", "SQLiteStore", "SQLiteTransaction"]
