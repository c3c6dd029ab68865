"""tidings: decoupled, event-driven Python services.

The public API lives here; everything in underscore modules is private.
"""

from tidings.brokers import connect
from tidings.brokers.base import (
    Admin,
    Batch,
    Broker,
    Consumer,
    GroupInfo,
    Message,
    OffsetReset,
    PartitionLag,
    Published,
    Record,
    SeekTo,
    TopicInfo,
    TopicPartition,
)
from tidings.errors import (
    BrokerClosedError,
    CommitFailedError,
    ConfigError,
    DecodeError,
    IntegrityError,
    MessageTooLargeError,
    StorageError,
    TidingsError,
    TopicError,
    TopicExistsError,
    TransactionAbortedError,
    UnknownTopicError,
)
from tidings.event import (
    Event,
    decode_event,
    encode_event,
    event_from_record,
    event_to_message,
    from_cloudevent,
    from_kafka_binary,
    to_cloudevent,
    to_kafka_binary,
)
from tidings.retry import NO_RETRY, PermanentError, Retry
from tidings.schema import EventModel, SchemaError, WireModel, json_schema, registered
from tidings.service import Context, Service, SyncContext
from tidings.stores import connect_store
from tidings.stores.base import Store, Transaction

__all__ = [
    "NO_RETRY",
    "Admin",
    "Batch",
    "Broker",
    "BrokerClosedError",
    "CommitFailedError",
    "ConfigError",
    "Consumer",
    "Context",
    "DecodeError",
    "Event",
    "EventModel",
    "GroupInfo",
    "IntegrityError",
    "Message",
    "MessageTooLargeError",
    "OffsetReset",
    "PartitionLag",
    "PermanentError",
    "Published",
    "Record",
    "Retry",
    "SchemaError",
    "SeekTo",
    "Service",
    "StorageError",
    "Store",
    "SyncContext",
    "TidingsError",
    "TopicError",
    "TopicExistsError",
    "TopicInfo",
    "TopicPartition",
    "Transaction",
    "TransactionAbortedError",
    "UnknownTopicError",
    "WireModel",
    "connect",
    "connect_store",
    "decode_event",
    "encode_event",
    "event_from_record",
    "event_to_message",
    "from_cloudevent",
    "from_kafka_binary",
    "json_schema",
    "registered",
    "to_cloudevent",
    "to_kafka_binary",
]
__version__ = "0.1.0"
