"""One batch in flight per partition: the bookkeeping every group consumer shares.

A partition hands out its next batch only once the previous one is settled (acked or nacked).
An ack or nack of any other batch - one abandoned by a seek or a rebalance, or one of another
consumer - changes nothing. An acked offset waits here until it is committed. A partition being
revoked hands out no batch; its revocation waits for the batch in flight to settle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Mapping

from tidings.records import Batch, TopicPartition


class InFlight:
    """Per partition: the batch in flight (and since when), the offset acked after it and not
    committed yet, and whether the partition is being revoked.

    Thread-safe: every method holds `lock`. It is re-entrant, so that a consumer can hold it
    around changes of its own per-partition state (positions, buffers) that go with these.
    `changed`, a condition over it, is notified whenever a batch is settled or dropped."""

    __slots__ = ("_acked", "_batches", "_revoking", "_rotation", "changed", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._batches: dict[TopicPartition, tuple[Batch, float]] = {}
        self._acked: dict[TopicPartition, int] = {}
        self._revoking: set[TopicPartition] = set()
        self._rotation = 0

    # handing out and settling --------------------------------------------------------------

    def ready(self, tps: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Those of `tps` that may hand out a batch (none in flight, not being revoked), in an
        order that starts one place further at each call finding some: every partition gets
        its turn."""
        with self.lock:
            batches, revoking = self._batches, self._revoking
            if batches or revoking:
                ready = [tp for tp in tps if tp not in batches and tp not in revoking]
            else:
                ready = list(tps)
            if ready:
                self._rotation += 1
                start = self._rotation % len(ready)
                if start:
                    ready = ready[start:] + ready[:start]
            return ready

    def begin(self, tp: TopicPartition, batch: Batch) -> bool:
        """Make `batch` the batch in flight of its partition `tp`; False if `tp` has one or is
        being revoked."""
        with self.lock:
            if tp in self._batches or tp in self._revoking:
                return False
            self._batches[tp] = (batch, time.monotonic())
            return True

    def ack(self, batch: Batch, next_offset: int | None = None) -> bool:
        """Settle `batch` as processed: `next_offset` (default: the batch's) is to be committed.
        False, changing nothing, unless `batch` is its partition's batch in flight."""
        tp = batch.tp
        with self.lock:
            if not self._settle(tp, batch):
                return False
            self._acked[tp] = batch.next_offset if next_offset is None else next_offset
            return True

    def nack(self, batch: Batch) -> bool:
        """Settle `batch` as not processed (the consumer redelivers it). False, changing
        nothing, unless `batch` is its partition's batch in flight."""
        with self.lock:
            return self._settle(batch.tp, batch)

    def _settle(self, tp: TopicPartition, batch: Batch) -> bool:
        entry = self._batches.get(tp)
        if entry is None or entry[0] is not batch:
            return False
        del self._batches[tp]
        self.changed.notify_all()
        return True

    def drop(self, tp: TopicPartition) -> None:
        """Forget the partition's batch in flight (a seek moved it): its ack or nack changes
        nothing, and the partition may hand out a batch again."""
        with self.lock:
            if self._batches.pop(tp, None) is not None:
                self.changed.notify_all()

    def in_flight(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, float]:
        """Those of `tps` with a batch in flight, with the `time.monotonic()` it was handed out."""
        with self.lock:
            return {tp: self._batches[tp][1] for tp in tps if tp in self._batches}

    # revoking ------------------------------------------------------------------------------

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """`tps` are being revoked too: none of them hands out a batch any more."""
        with self.lock:
            self._revoking.update(tps)

    def set_revoking(self, tps: Iterable[TopicPartition]) -> None:
        """Exactly `tps` are being revoked (for a coordinator that says so at every heartbeat)."""
        with self.lock:
            self._revoking = set(tps)

    def revoking(self) -> set[TopicPartition]:
        with self.lock:
            return set(self._revoking)

    def is_revoking(self, tp: TopicPartition) -> bool:
        with self.lock:
            return tp in self._revoking

    # committing ----------------------------------------------------------------------------

    def acked(self, among: Collection[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """The acked offsets not committed yet (of the partitions `among`, if given)."""
        with self.lock:
            if among is None:
                return dict(self._acked)
            return {tp: offset for tp, offset in self._acked.items() if tp in among}

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """`offsets` were committed: forget the acked offsets that are still those."""
        with self.lock:
            acked = self._acked
            for tp, offset in offsets.items():
                if acked.get(tp) == offset:
                    del acked[tp]

    # leaving -------------------------------------------------------------------------------

    def forget(self, tp: TopicPartition) -> bool:
        """The partition left the consumer: forget everything about it. True if it had an acked
        offset that was not committed."""
        with self.lock:
            self.drop(tp)
            self._revoking.discard(tp)
            return self._acked.pop(tp, None) is not None

    def clear(self) -> None:
        with self.lock:
            self._batches.clear()
            self._acked.clear()
            self._revoking.clear()
            self.changed.notify_all()
