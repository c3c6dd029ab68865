"""The embedded broker: a durable, partitioned event log in one SQLite file.

`sqlite:///path/to/bus.db` (relative) or `sqlite:////abs/bus.db`. Options in the query string or
as keyword arguments: `synchronous` (`full` by default: a publish survives power loss once it
returns; `normal` survives process crashes only), `max_message_bytes` (default 1 MiB; at most
SQLite's limit on one value less ROW_HEADROOM).

Several processes may open the same file: publishes from all of them interleave safely,
consumer groups span them (see `_groups`), and an idle consumer is woken by a datagram from
the writer (see `tidings._notify`) instead of polling. Offset commits and heartbeats use
`synchronous=normal`: losing the last commit to a power cut only means redelivery.
"""

from tidings.brokers.sqlite._broker import SQLiteAdmin, SQLiteBroker
from tidings.brokers.sqlite._log import MAX_ROW_BYTES, ROW_HEADROOM, SQLiteLog

__all__ = ["MAX_ROW_BYTES", "ROW_HEADROOM", "SQLiteAdmin", "SQLiteBroker", "SQLiteLog"]
