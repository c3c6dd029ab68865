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
    MessageTooLargeError,
    StorageError,
    TidingsError,
    TopicError,
    TopicExistsError,
    UnknownTopicError,
)

__all__ = [
    "Admin",
    "Batch",
    "Broker",
    "BrokerClosedError",
    "CommitFailedError",
    "ConfigError",
    "Consumer",
    "DecodeError",
    "GroupInfo",
    "Message",
    "MessageTooLargeError",
    "OffsetReset",
    "PartitionLag",
    "Published",
    "Record",
    "SeekTo",
    "StorageError",
    "TidingsError",
    "TopicError",
    "TopicExistsError",
    "TopicInfo",
    "TopicPartition",
    "UnknownTopicError",
    "connect",
]
__version__ = "0.1.0"
