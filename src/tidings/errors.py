"""Exceptions raised by tidings. Every error a user can cause names the problem."""

from __future__ import annotations


class TidingsError(Exception):
    """Base class of every error tidings raises on purpose."""


class ConfigError(TidingsError, ValueError):
    """A URL, option or setting is malformed or names something unknown."""


class TopicError(TidingsError, ValueError):
    """A topic name or partition count is invalid."""


class UnknownTopicError(TopicError, LookupError):
    """The topic does not exist."""


class TopicExistsError(TopicError):
    """The topic already exists with different settings."""


class MessageTooLargeError(TidingsError, ValueError):
    """A message exceeds the broker's configured maximum size; nothing of its batch was written."""


class DecodeError(TidingsError, ValueError):
    """Bytes read back could not be decoded into an event."""


class BlobNotFoundError(TidingsError, LookupError):
    """A blob store has no blob of that name (deleted by retention, or never reachable here)."""


class BrokerClosedError(TidingsError, RuntimeError):
    """The broker or consumer was used after close()."""


class CommitFailedError(TidingsError):
    """Offsets could not be committed because this member no longer owns the partitions."""


class StorageError(TidingsError, OSError):
    """The backing store is corrupt, read-only or otherwise unusable."""


class HandlerTimeoutError(TidingsError, TimeoutError):
    """A handler did not finish within its retry policy's `timeout`; it counts as a failure of
    that handler (retried, then dead-lettered)."""


class ContextClosedError(TidingsError, RuntimeError):
    """A handler's or request's Context was used after its unit of work ended (a `def` handler
    still running after its timeout, say): nothing it does then can reach the transaction."""


class DuplicateEventError(TidingsError):
    """An event id was written to the outbox twice for the same topic; the transaction was
    rolled back."""


class InboxConflictError(TidingsError):
    """`inbox_add_all` met a (consumer, event id) pair that already has an inbox row - another
    transaction recorded it first, or this one did. The transaction must be rolled back."""


class SchemaConflictError(TidingsError):
    """An event schema cannot be registered: a different schema under a registered (type,
    version), or a new version incompatible with earlier ones (the message lists each)."""


class DeadLetterError(TidingsError):
    """A dead letter cannot be found, replayed or purged (the message says why)."""


class MigrationError(TidingsError):
    """A schema migration failed or an applied migration was changed."""


class IntegrityError(TidingsError):
    """A statement's data broke a constraint of the schema - a unique or primary key, a foreign
    key, a CHECK, NOT NULL - the same on every store; the driver's own error (sqlite3's or
    psycopg's) is `orig` and the cause. The transaction can then only roll back, unless the
    statement ran in a savepoint."""

    def __init__(self, message: str, orig: Exception | None = None) -> None:
        super().__init__(message)
        self.orig = orig

    def __reduce__(self) -> tuple[type[IntegrityError], tuple[str, Exception | None]]:
        return type(self), (str(self), self.orig)


class TransactionAbortedError(TidingsError):
    """An earlier statement of the transaction failed - queued with `defer` or not, whether or
    not the code caught its error - so it can only be rolled back; raised by every later
    statement, the end of an enclosing savepoint block and the commit, on every store."""
