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

__all__ = [
    "Admin",
    "Batch",
    "Broker",
    "BrokerClosedError",
    "CommitFailedError",
    "ConfigError",
    "Consumer",
    "DecodeError",
    "Event",
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
    "decode_event",
    "encode_event",
    "event_from_record",
    "event_to_message",
    "from_cloudevent",
    "from_kafka_binary",
    "to_cloudevent",
    "to_kafka_binary",
]
__version__ = "0.1.0"
