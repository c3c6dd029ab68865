"""`memory://`: a store for tests - a SQLite database in a private temporary directory (in
memory where `/dev/shm` exists), without fsync, deleted when the store closes. It is the SQLite
store in every other respect, so handlers' SQL runs as it will on `sqlite://`."""

from __future__ import annotations

import os
import shutil
import tempfile

from tidings.stores.sqlite import SQLiteStore

_SHM = "/dev/shm"  # noqa: S108 (a private directory is made inside it)


class MemoryStore(SQLiteStore):
    """A throwaway store; `memory://` (any name after the scheme is ignored: each instance is
    its own empty database)."""

    def __init__(self, url: str = "memory://") -> None:
        parent = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None
        self._directory = tempfile.mkdtemp(prefix="tidings-store-", dir=parent)
        super().__init__(f"sqlite:///{self._directory}/store.db", synchronous="off")
        self.url = url

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)
