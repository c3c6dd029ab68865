"""The Apache Kafka backend: `kafka://host:port[,host:port...]?setting=value`.

Built on confluent-kafka (librdkafka); it passes the same contract suite as the embedded broker.
Each module states the rules it enforces: `_settings` (URL and options, and the librdkafka
settings tidings manages and refuses as options), `_producer` (publishing), `_cluster`
(metadata and offsets), `_reader` (reading without a group), `_admin` (topics, groups,
retention), `_consumer` and `_member` (group members), `_records` (records of consumed
messages), `_errors` (librdkafka's errors).
"""

from tidings.brokers.kafka._admin import KafkaAdmin
from tidings.brokers.kafka._broker import KafkaBroker
from tidings.brokers.kafka._consumer import CONSUMER_DEFAULTS, KafkaConsumer
from tidings.brokers.kafka._settings import PASSWORD_ENV, KafkaSettings, parse_settings

__all__ = [
    "CONSUMER_DEFAULTS",
    "PASSWORD_ENV",
    "KafkaAdmin",
    "KafkaBroker",
    "KafkaConsumer",
    "KafkaSettings",
    "parse_settings",
]
