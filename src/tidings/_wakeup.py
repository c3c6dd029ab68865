"""A wake-up flag of one event loop that any thread may raise: what consumers and the relay
sleep on between looks at their work."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Wakeup:
    """An `asyncio.Event` of the loop it was made on. `set()` from the loop's thread sets it
    directly; from another thread it is handed to the loop (`call_soon_threadsafe`), unless
    it is set already. Callers `clear()` it before they look at their work, so a thread that
    changed that work before calling `set()` is always seen."""

    __slots__ = ("_event", "_loop", "_thread")

    def __init__(self) -> None:
        """Call on the event loop that waits."""
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def set(self) -> None:
        """Raise the flag; from any thread. Never raises (a closed loop is ignored)."""
        if threading.get_ident() == self._thread:
            self._event.set()
        elif not self._event.is_set():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set, at most `timeout` seconds; False if the time ran out. No task per
        wait (unlike `asyncio.wait_for`)."""
        if timeout is None:
            await self._event.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True
