"""The claim check: an event's payload kept in a blob store, the event carrying a reference.

Publishing (`Context.publish(..., claim_check=True)`, or automatically above
`Service(claim_check_over=...)`): the payload - the data as JSON, or the bytes as they are -
becomes the blob `<service>/<uuid7>.json` (or `.bin`) and the event carries
`dataref: tidings-blob:<name>` (the CloudEvents Dataref extension) and no data. The blob is an
attachment of the outbox row (`tidings.stores.outbox.Attachment`): written and fsync'd when the
transaction flushes, before the row; deleted again if the transaction or savepoint rolls back.

Consuming: before a handler reads the event, `resolve` puts the payload back into `data`. A blob
that is missing or unreadable as its type says raises ClaimCheckError - a DecodeError and a
SchemaError: the event is dead-lettered (`undecodable`) and the partition moves on; replaying the
dead letter once the blob is back delivers it. A blob store that fails (StorageError) is an
outage: the batch waits for it.

Garbage: `collect_garbage` deletes a service's blobs older than its retention (every
`BLOB_GC_S` while the service runs, and `tidings blobs gc`); that also removes the blobs of
transactions that died with their process between writing the blob and committing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from tidings._ids import uuid7
from tidings.blobs import BlobStore, DirectoryBlobStore
from tidings.errors import BlobNotFoundError, DecodeError
from tidings.event import Event, event_to_message
from tidings.records import Message
from tidings.schema import SchemaError

__all__ = [
    "BLOB_GC_S",
    "BLOB_SCHEME",
    "ClaimCheckError",
    "check_in",
    "collect_garbage",
    "default_blob_store",
    "resolve",
]

log = logging.getLogger("tidings.claimcheck")

BLOB_SCHEME = "tidings-blob:"
"""How a `dataref` names a blob of the service's blob store."""
BLOB_GC_S = 600.0
"""How often a running service deletes its blobs past retention."""
_JSON_SUFFIX = ".json"
_BYTES_SUFFIX = ".bin"
_encoder = msgspec.json.Encoder()


class ClaimCheckError(DecodeError, SchemaError):
    """A claim-checked event whose payload cannot be read back: its blob is missing (deleted
    by retention, or the blob store is not the one its producer wrote to) or is not what its
    name says. Permanent: the event is dead-lettered."""


@dataclass(slots=True)
class BlobAttachment:
    """A payload to store before its outbox row is written (`Attachment`)."""

    blobs: BlobStore
    name: str
    payload: bytes
    written: bool = False

    async def write(self) -> None:
        await self.blobs.put(self.name, self.payload)
        self.written = True

    async def discard(self) -> None:
        if self.written:
            await self.blobs.delete(self.name)
            self.written = False

    def __repr__(self) -> str:
        return f"blob {self.name!r} in {self.blobs.url}"


def check_in(
    envelope: Event, blobs: BlobStore, service: str, *, binary: bool
) -> tuple[Event, Message, BlobAttachment]:
    """`envelope` claim-checked into `blobs`: the envelope with its `dataref` (and its data,
    for the caller), the message to put in the outbox, and the blob to write before it."""
    data = envelope.data
    if isinstance(data, bytes):
        payload, suffix = data, _BYTES_SUFFIX
    else:
        payload, suffix = _encoder.encode(data), _JSON_SUFFIX
    name = f"{service}/{uuid7()}{suffix}"
    checked = msgspec.structs.replace(envelope, dataref=BLOB_SCHEME + name)
    message = event_to_message(msgspec.structs.replace(checked, data=None), binary=binary)
    return checked, message, BlobAttachment(blobs, name, payload)


async def resolve(blobs: BlobStore, event: Event) -> Event:
    """`event` with its claim-checked payload back in `data`; the event itself if it has none
    to fetch (no `dataref`, a `dataref` that is not `tidings-blob:`, or data already there).
    ClaimCheckError if the blob is missing or unreadable; StorageError if the store fails."""
    ref = event.dataref
    if ref is None or event.data is not None or not ref.startswith(BLOB_SCHEME):
        return event
    name = ref[len(BLOB_SCHEME) :]
    try:
        payload = await blobs.get(name)
    except BlobNotFoundError as exc:
        raise ClaimCheckError(
            f"the payload of {event.type} event {event.id} ({ref}) is not in the blob store "
            f"{blobs.url}: {exc} (deleted after its retention, or the producing service wrote "
            "to another blob store: services must share it)"
        ) from None
    except ValueError as exc:  # ConfigError: a name that is no blob name
        raise ClaimCheckError(f"event {event.id} has an invalid dataref {ref!r}: {exc}") from None
    data: Any = payload
    if name.endswith(_JSON_SUFFIX):
        try:
            data = msgspec.json.decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ClaimCheckError(
                f"the payload of event {event.id} ({ref}) is not JSON: {exc}"
            ) from None
    return msgspec.structs.replace(event, data=data)


async def collect_garbage(
    blobs: BlobStore, *, prefix: str, retention_s: float, now: datetime | None = None
) -> list[str]:
    """Delete the blobs under `prefix` (e.g. `orders/`) written more than `retention_s`
    seconds ago; returns their names."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention_s)
    deleted = []
    async for info in blobs.list(prefix):
        if info.created < cutoff:
            await blobs.delete(info.name)
            deleted.append(info.name)
    return deleted


def default_blob_store(
    spec: str | BlobStore | None, broker_url: str, environ: Mapping[str, str] = os.environ
) -> BlobStore:
    """The blob store from `spec` (a directory or a BlobStore), else the `TIDINGS_BLOBS`
    directory, else `blobs/` next to the embedded broker's file (which every service on that
    broker shares), else `.tidings/blobs`."""
    if spec is None or spec == "":
        spec = environ.get("TIDINGS_BLOBS") or None
    if spec is None:
        spec = _next_to_broker(broker_url) or os.path.join(".tidings", "blobs")
    if isinstance(spec, str | os.PathLike):
        return DirectoryBlobStore(spec)
    return spec


def _next_to_broker(url: str) -> str | None:
    if not url.startswith("sqlite:"):
        return None
    from tidings._sqlite import parse_url

    try:
        path = parse_url(url, allowed={"synchronous", "max_message_bytes"}).path
    except ValueError:
        return None
    return str(Path(path).absolute().parent / "blobs")
