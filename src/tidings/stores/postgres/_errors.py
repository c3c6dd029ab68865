"""PostgreSQL's connection errors as tidings reports them: StorageError naming the server (never
the password), and which of them are worth retrying."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from tidings.errors import StorageError
from tidings.stores.postgres._url import PostgresURL, scrub

POOL_TIMEOUT_S = 30.0
"""How long a transaction waits for a pooled connection."""

_PERMANENT = (
    "authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "certificate",
    "sslmode",
    "invalid",
)
_LOST_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_connection_loss(exc: BaseException) -> bool:
    """True for errors that mean "no usable connection right now" (worth retrying)."""
    if isinstance(exc, PoolTimeout | PoolClosed) or not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    if state is None:
        text = str(exc).lower()
        return not any(marker in text for marker in _PERMANENT)
    return state.startswith("08") or state in _LOST_STATES


def translate(exc: psycopg.Error, config: PostgresURL, context: str) -> Exception:
    """A StorageError naming the server (never the password) for connection problems;
    `exc` itself for everything else (SQL errors, constraint violations...)."""
    text = scrub(str(exc), config.secrets)
    if isinstance(exc, PoolTimeout):
        return StorageError(
            f"PostgreSQL at {config.where}: no connection within {POOL_TIMEOUT_S:.0f}s "
            f"(server unreachable, or all {config.pool_size} pooled connections busy)"
        )
    if isinstance(exc, PoolClosed):
        return StorageError(f"PostgreSQL at {config.where}: store is closed")
    if not isinstance(exc, psycopg.OperationalError):
        return exc
    lowered = text.lower()
    if "authentication failed" in lowered or "no password supplied" in lowered:
        return StorageError(
            f"cannot log in to PostgreSQL at {config.where} as user {config.user!r} "
            f"(check the user and password of the store URL): {text}"
        )
    if exc.sqlstate is None and any(marker in lowered for marker in _PERMANENT):
        return StorageError(f"cannot connect to PostgreSQL at {config.where}: {text}")
    if is_connection_loss(exc):
        return StorageError(
            f"lost or no connection to PostgreSQL at {config.where} {context}: {text}"
        )
    return exc


def first_failure(exc: psycopg.Error) -> psycopg.Error:
    """The failed statement's own error behind a "pipeline aborted": psycopg raises that for
    the results skipped after a failure while it is still handling the failure itself (its
    __context__), as when a statement fails while the pipeline is leaving."""
    seen: BaseException | None = exc
    while isinstance(seen, psycopg.errors.PipelineAborted):
        seen = seen.__context__
    return seen if isinstance(seen, psycopg.Error) else exc
