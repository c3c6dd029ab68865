"""Operations on a running system, as plain data: what the CLI and the console show and do.

Every function takes a connected `Broker` and returns dataclasses (no printing, no UI). A
backend without a capability an operation needs (`CanInspect`, `CanRead`, `CanSeek`,
`CanResetOffsets`) gets a ConfigError naming it. Nothing here loads a whole topic to answer
for one page: `read_records` and `dead_letter_page` page; `list_dead_letters` and the
selections behind replay and purge read the dead-letter topics whole."""

from tidings.dlq import (
    DeadLetter,
    DeadLetterError,
    DeadLetterFilter,
    Replayed,
    Resolution,
    list_dead_letters,
)
from tidings.ops.dlq import (
    DeadLetterPage,
    ReplayResult,
    dead_letter_page,
    find_dead_letters,
    get_dead_letter,
    purge_dead_letters,
    replay_dead_letters,
    select_dead_letters,
)
from tidings.ops.groups import (
    GroupOffset,
    GroupReset,
    GroupSummary,
    describe_group,
    list_groups,
    reset_offsets,
)
from tidings.ops.index import EventIndex, Handles, IndexedEvent, IndexStatus
from tidings.ops.positions import PartitionSpan, offset_for_time, span
from tidings.ops.rebuild import Rebuild, RebuiltPartition, rebuild
from tidings.ops.records import EventFilter, LogEntry, RecordPage, decode, read_records
from tidings.ops.tail import tail
from tidings.ops.topics import CreatedTopic, create_topic, describe_topic, list_topics
from tidings.ops.topology import (
    Edge,
    ServiceNode,
    Topology,
    dead_letter_counts,
    is_internal_topic,
    is_tool_group,
    recent_sources,
    topology,
)
from tidings.ops.trace import Reaction, Reader, Trace, TraceNode, build_trace, trace
from tidings.records import SeekTo

__all__ = [
    "CreatedTopic",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterFilter",
    "DeadLetterPage",
    "Edge",
    "EventFilter",
    "EventIndex",
    "GroupOffset",
    "GroupReset",
    "GroupSummary",
    "Handles",
    "IndexStatus",
    "IndexedEvent",
    "LogEntry",
    "PartitionSpan",
    "Reaction",
    "Reader",
    "Rebuild",
    "RebuiltPartition",
    "RecordPage",
    "ReplayResult",
    "Replayed",
    "Resolution",
    "SeekTo",
    "ServiceNode",
    "Topology",
    "Trace",
    "TraceNode",
    "build_trace",
    "create_topic",
    "dead_letter_counts",
    "dead_letter_page",
    "decode",
    "describe_group",
    "describe_topic",
    "find_dead_letters",
    "get_dead_letter",
    "is_internal_topic",
    "is_tool_group",
    "list_dead_letters",
    "list_groups",
    "list_topics",
    "offset_for_time",
    "purge_dead_letters",
    "read_records",
    "rebuild",
    "recent_sources",
    "replay_dead_letters",
    "reset_offsets",
    "select_dead_letters",
    "span",
    "tail",
    "topology",
    "trace",
]
