"""The PostgreSQL store: `postgresql://user:password@host:port/dbname?schema=orders` (see
`_url` for the options). Transactions run on pooled connections, concurrently; statements use
`?` placeholders as on SQLite (see `_placeholders`)."""

from tidings.stores.postgres._placeholders import translate_placeholders
from tidings.stores.postgres._store import PostgresStore
from tidings.stores.postgres._transaction import PostgresTransaction
from tidings.stores.postgres._url import PostgresURL, parse_url

__all__ = [
    "PostgresStore",
    "PostgresTransaction",
    "PostgresURL",
    "parse_url",
    "translate_placeholders",
]
