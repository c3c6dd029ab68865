"""Retry policies for handlers: immediate retries, then exponential backoff with jitter,
capped by attempts and total time, each attempt bounded by a timeout. Permanent failures
(decode and schema errors, an event too large to publish, and the exception types a policy
names as not retryable) are never retried.

A transaction the database aborted because of a concurrent one (a deadlock or serialization
failure: SQLSTATE 40P01 / 40001, e.g. two partitions' batches updating the same rows in
different orders) is not the handler's failure: it is retried after a short random delay
without using up `max_attempts` (also under NO_RETRY), bounded only by `max_elapsed`."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tidings.errors import ConfigError, DecodeError, DuplicateEventError, MessageTooLargeError

TRANSACTION_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
CONFLICT_MAX_DELAY = 0.5


def is_transaction_conflict(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a database's deadlock or
    serialization failure, recognised by its SQLSTATE (psycopg and other drivers expose
    `sqlstate`)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if getattr(current, "sqlstate", None) in TRANSACTION_CONFLICT_SQLSTATES:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class PermanentError(Exception):
    """Raise (or subclass) in a handler for a failure that no retry can fix: the event goes to
    the dead-letter topic at once."""


@dataclass(frozen=True, slots=True)
class Retry:
    """When to try a failed handler again.

    Attempt 1 is the first delivery. Attempts 2..`immediate`+1 follow at once; later attempts
    wait `initial_delay * multiplier**k` seconds (capped at `max_delay`, +/- `jitter` as a
    fraction). Retrying stops after `max_attempts` attempts or once `max_elapsed` seconds have
    passed since the first failure, and the event is dead-lettered.

    `timeout` bounds one attempt: a handler still running after that many seconds is cancelled
    (a `def` handler's thread cannot be stopped: it runs on, but its context is closed) and
    the attempt fails with HandlerTimeoutError. None: no bound.
    """

    immediate: int = 2
    max_attempts: int = 6
    initial_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    max_elapsed: float | None = 300.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = 60.0

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"Retry.timeout must be > 0 seconds or None, got {self.timeout}")
        if self.immediate < 0:
            raise ConfigError(f"Retry.immediate must be >= 0, got {self.immediate}")
        if self.max_attempts < 1:
            raise ConfigError(f"Retry.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigError("Retry delays must be >= 0")
        if self.multiplier < 1:
            raise ConfigError(f"Retry.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"Retry.jitter must be in [0, 1), got {self.jitter}")

    def retryable(self, exc: BaseException) -> bool:
        """False for permanent failures: never worth another attempt. A transaction conflict
        is retryable whatever `retry_on` names."""
        from tidings.schema import SchemaError

        permanent: tuple[type[BaseException], ...] = (
            PermanentError,
            DecodeError,
            SchemaError,
            DuplicateEventError,
            MessageTooLargeError,
            *self.give_up_on,
        )
        if isinstance(exc, permanent):
            return False
        return isinstance(exc, self.retry_on) or is_transaction_conflict(exc)

    def next_delay(self, attempt: int, elapsed: float, exc: BaseException) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up."""
        if not self.retryable(exc):
            return None
        if is_transaction_conflict(exc):
            # full jitter, so the transactions that collided do not collide again in step
            delay = random.uniform(0, min(CONFLICT_MAX_DELAY, 0.005 * 2 ** min(attempt, 10)))
        elif attempt >= self.max_attempts:
            return None
        elif attempt <= self.immediate:
            delay = 0.0
        else:
            step = attempt - self.immediate - 1
            delay = min(self.max_delay, self.initial_delay * self.multiplier**step)
            delay *= 1 + self.jitter * (2 * random.random() - 1)
        if self.max_elapsed is not None and elapsed + delay > self.max_elapsed:
            return None
        return delay


NO_RETRY = Retry(immediate=0, max_attempts=1)
"""Dead-letter on the first failure."""
