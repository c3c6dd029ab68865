"""librdkafka's errors, classified and mapped onto tidings errors.

Every librdkafka failure surfaces as a tidings error (tidings.errors) whose message names what
was being done and librdkafka's own text and code (`describe`).
"""

from __future__ import annotations

from typing import Final

import confluent_kafka as ck

from tidings.errors import StorageError

UNREACHABLE: Final = frozenset(
    {
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._ALL_BROKERS_DOWN,
        ck.KafkaError._RESOLVE,
        ck.KafkaError.REQUEST_TIMED_OUT,
        ck.KafkaError._WAIT_COORD,
    }
)
UNKNOWN_TOPIC: Final = frozenset(
    {
        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
        ck.KafkaError._UNKNOWN_TOPIC,
        ck.KafkaError._UNKNOWN_PARTITION,
        ck.KafkaError.UNKNOWN_TOPIC_ID,
    }
)
TOO_LARGE: Final = frozenset(
    {
        ck.KafkaError.MSG_SIZE_TOO_LARGE,
        ck.KafkaError.RECORD_LIST_TOO_LARGE,
        ck.KafkaError.INVALID_MSG_SIZE,
    }
)
RETRY_LIST_OFFSETS: Final = frozenset(
    {
        ck.KafkaError.LEADER_NOT_AVAILABLE,
        ck.KafkaError.NOT_LEADER_FOR_PARTITION,
        ck.KafkaError.UNKNOWN_TOPIC_OR_PART,
        ck.KafkaError.OFFSET_NOT_AVAILABLE,
        ck.KafkaError.REPLICA_NOT_AVAILABLE,
        ck.KafkaError.UNKNOWN_LEADER_EPOCH,
        ck.KafkaError.FENCED_LEADER_EPOCH,
        ck.KafkaError._UNKNOWN_PARTITION,
    }
)
"""Partition leaders not known yet (just after a topic was created)."""
COMMIT_RETRY: Final = frozenset(
    {
        ck.KafkaError.REBALANCE_IN_PROGRESS,
        ck.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        ck.KafkaError.COORDINATOR_NOT_AVAILABLE,
        ck.KafkaError.NOT_COORDINATOR,
        ck.KafkaError.REQUEST_TIMED_OUT,
        ck.KafkaError._TIMED_OUT,
        ck.KafkaError._WAIT_COORD,
        ck.KafkaError._TRANSPORT,
        ck.KafkaError._IN_PROGRESS,
        ck.KafkaError._PREV_IN_PROGRESS,
        ck.KafkaError._STATE,
        # a rebalance is under way (the member rejoined, the group moved on to a new
        # generation): once it completes, the commit succeeds for the partitions still owned,
        # and the lost ones are reported by on_lost
        ck.KafkaError.ILLEGAL_GENERATION,
        ck.KafkaError.UNKNOWN_MEMBER_ID,
        ck.KafkaError.STALE_MEMBER_EPOCH,
        ck.KafkaError._ASSIGNMENT_LOST,
    }
)
COMMIT_FENCED: Final = frozenset({ck.KafkaError.FENCED_INSTANCE_ID, ck.KafkaError._FENCED})


def kafka_error(exc: BaseException) -> ck.KafkaError | None:
    if isinstance(exc, ck.KafkaException) and exc.args and isinstance(exc.args[0], ck.KafkaError):
        return exc.args[0]
    return None


def error_code(exc: BaseException) -> int | None:
    err = kafka_error(exc)
    return None if err is None else err.code()


def describe(err: ck.KafkaError | BaseException | None) -> str:
    if isinstance(err, BaseException):
        err = kafka_error(err) or err
    if isinstance(err, ck.KafkaError):
        return f"{err.str()} ({err.name()})"
    return str(err)


def storage_error(exc: BaseException, action: str, bootstrap: str, timeout: float) -> Exception:
    """The StorageError of a librdkafka failure while doing `action`."""
    if error_code(exc) in UNREACHABLE:
        return StorageError(
            f"Kafka at {bootstrap} did not answer {action} within {timeout:g}s "
            f"({describe(exc)}); is it running and reachable?"
        )
    return StorageError(f"Kafka at {bootstrap}: {action} failed: {describe(exc)}")
