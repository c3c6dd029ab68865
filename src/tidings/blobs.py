"""Blob stores: where claim-checked payloads are kept (see `tidings.runtime.claimcheck`).

`BlobStore` is the interface - four calls on names like `orders/0193...json` - and
`DirectoryBlobStore` the default, a directory that every service exchanging claim-checked events
must reach (one machine: a directory next to the embedded broker's file; several machines: a
shared file system). Another store (S3, GCS, ...) is a class with the same four methods, passed
as `Service(blobs=...)`.

Names are paths of components made of letters, digits, `.`, `_` and `-` (no `.` or `..`
component), so that a name read from an event can never leave the store.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from tidings.errors import BlobNotFoundError, ConfigError, StorageError

__all__ = ["BlobInfo", "BlobStore", "DirectoryBlobStore", "check_blob_name"]

_COMPONENT = re.compile(r"[A-Za-z0-9._-]{1,200}")
_MAX_NAME = 1024


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    size: int
    created: datetime
    """When it was written (UTC)."""


@runtime_checkable
class BlobStore(Protocol):
    """Where payloads too large for an event are kept. Every method may raise StorageError
    when the store is unusable (unreachable, full, not permitted)."""

    url: str
    """Where it is, for messages (no secrets)."""

    async def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name` (replacing any blob of that name); durable on return."""
        ...

    async def get(self, name: str) -> bytes:
        """The blob called `name`; BlobNotFoundError if there is none."""
        ...

    async def delete(self, name: str) -> None:
        """Remove the blob called `name`, if there is one."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """The blobs whose names start with `prefix` (a folder such as `orders/`), in no
        particular order."""
        ...


def check_blob_name(name: str) -> str:
    """`name` if it is a valid blob name, else ConfigError."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= _MAX_NAME
        or not all(
            _COMPONENT.fullmatch(part) and part not in (".", "..") for part in name.split("/")
        )
    ):
        raise ConfigError(
            f"invalid blob name {name!r}: use '/'-separated parts of letters, digits, '.', '_' "
            "and '-' (no '.' or '..' part)"
        )
    return name


class DirectoryBlobStore:
    """Blobs as files under `root`: files are mode 0600, directories tidings creates 0700. A
    blob is written to a temporary file, fsync'd, renamed into place and its directory fsync'd:
    once `put` returns it survives a crash or power cut, and a reader never sees half of it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"

    def __repr__(self) -> str:
        return f"DirectoryBlobStore({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        return self.root / check_blob_name(name)

    async def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        await asyncio.to_thread(self._put, path, data)

    def _put(self, path: Path, data: bytes) -> None:
        try:
            self._make_dirs(path.parent)
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                temporary.unlink(missing_ok=True)
                raise
            os.close(fd)
            os.replace(temporary, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write blob {path}: {exc}") from exc

    def _make_dirs(self, directory: Path) -> None:
        """Create `directory` and its missing parents with mode 0700."""
        missing: list[Path] = []
        while not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for created in reversed(missing):
            try:
                os.mkdir(created, 0o700)
            except FileExistsError:
                continue
            os.chmod(created, 0o700)  # whatever the umask
            _fsync_dir(created.parent)

    async def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {name!r} in {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read blob {path}: {exc}") from exc

    async def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            await asyncio.to_thread(path.unlink, True)
        except OSError as exc:
            raise StorageError(f"cannot delete blob {path}: {exc}") from exc

    async def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Also the partial files of writes cut short by a crash (`.NAME.XXXX.partial`), so
        that retention removes them too."""
        directory = prefix.rpartition("/")[0]
        if directory:
            check_blob_name(directory)
        found = await asyncio.to_thread(lambda: list(self._walk(self.root / directory)))
        for info in found:
            if info.name.startswith(prefix):
                yield info

    def _walk(self, directory: Path) -> Iterator[BlobInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(f"cannot list blobs in {directory}: {exc}") from exc
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    yield BlobInfo(
                        name=Path(entry.path).relative_to(self.root).as_posix(),
                        size=stat.st_size,
                        created=datetime.fromtimestamp(stat.st_mtime, UTC),
                    )
            except FileNotFoundError:
                continue  # deleted meanwhile


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
