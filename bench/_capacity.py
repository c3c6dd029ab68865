"""Open-loop load and the search for the highest steady rate (`python -m bench sync_vs_events`).

A closed loop (N requests in flight) measures latency at the rate the server happens to
sustain; capacity needs the opposite: requests sent at a fixed rate whatever the answers, as
shoppers arrive, for a fixed time, and a verdict on whether the system kept up. `open_loop`
sends request i at `start + i / rate` (requests that fall due together go out together: the
sender never waits for an answer) to whichever of its connections is free first.

`search` tries rates until it brackets the highest one that passes a caller's `verdict`: from a
first guess it goes up by `STEP_UP` while rates pass (down by half while they fail), then halves
the bracket `refine` times. Every try is reported to the caller's `report`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench._common import percentile

STEP_UP = 1.5
MIN_RATE = 5.0


@dataclass
class OpenResult:
    """What one open-loop run saw."""

    rate: float
    seconds: float
    sent: int = 0
    ok: int = 0
    times_ms: list[float] = field(default_factory=list)
    order_ids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    behind_max_s: float = 0.0
    """How far the sender fell behind its schedule at worst (the client's own limit)."""
    send_seconds: float = 0.0

    @property
    def achieved(self) -> float:
        """Requests sent per second, first to last."""
        return self.sent / self.send_seconds if self.send_seconds > 0 else float(self.sent)

    def pct(self, p: float) -> float:
        return percentile(sorted(self.times_ms), p) if self.times_ms else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 1),
            "achieved": round(self.achieved, 1),
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "response_p50_ms": round(self.pct(50), 2),
            "response_p99_ms": round(self.pct(99), 2),
            "sender_behind_max_s": round(self.behind_max_s, 3),
        }


CONNECTIONS = 64
"""Keep-alive connections of the open-loop client: requests due while all are busy wait for
one, and that wait counts in their response time."""


@dataclass
class OpenLoopClient:
    """Where the open-loop requests go: `base_url` and headers sent with every request."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)


async def open_loop(
    client: OpenLoopClient,
    requests: Sequence[tuple[dict[str, Any], dict[str, str]]],
    rate: float,
    timeout: float,
) -> OpenResult:
    """POST `requests` (body, headers) to /orders at `rate` per second; no retries. A request's
    response time runs from when it was due; one not answered within `timeout` of that (or
    still waiting for a connection then) fails as a timeout.

    `CONNECTIONS` workers take the next request due, each with an httpx client of its own
    holding one connection: httpx's shared pool, with requests cancelled by their timeout,
    degrades under overload until nearly every request times out, which measured the client
    rather than the server."""
    result = OpenResult(rate=rate, seconds=len(requests) / rate)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, dict[str, Any], dict[str, str]] | None] = asyncio.Queue()

    def done(due: float, kind: str | None, response: httpx.Response | None = None) -> None:
        result.times_ms.append((loop.time() - due) * 1000)
        if kind is not None:
            result.errors[kind] += 1
            return
        result.ok += 1
        with contextlib.suppress(ValueError, AttributeError):
            order_id = response.json().get("orderId") if response is not None else None
            if order_id:
                result.order_ids.append(str(order_id))

    async def worker(http: httpx.AsyncClient) -> None:
        while (item := await queue.get()) is not None:
            due, body, headers = item
            left = due + timeout - loop.time()
            if left <= 0:
                done(due, "timeout")
                continue
            try:
                async with asyncio.timeout(left):
                    response = await http.post("/orders", json=body, headers=headers)
            except TimeoutError:
                done(due, "timeout")
            except httpx.HTTPError as exc:
                done(due, type(exc).__name__)
            else:
                ok = 200 <= response.status_code < 300
                done(due, None if ok else f"HTTP {response.status_code}", response)

    # made before the clock starts: a client takes milliseconds to make (its TLS context)
    clients = [
        httpx.AsyncClient(
            base_url=client.base_url,
            headers=client.headers,
            timeout=timeout + 1.0,  # asyncio.timeout above cuts each request at its due time
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for _ in range(CONNECTIONS)
    ]
    workers = [asyncio.create_task(worker(http)) for http in clients]
    start = loop.time() + 0.01
    first = last = start
    for index, (body, headers) in enumerate(requests):
        due = start + index / rate
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
            now = loop.time()
        result.behind_max_s = max(result.behind_max_s, now - due)
        if index == 0:
            first = now
        last = now
        queue.put_nowait((due, body, headers))
        result.sent += 1
    result.send_seconds = last - first if len(requests) > 1 else 0.0
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    await asyncio.gather(*(http.aclose() for http in clients))
    return result


Verdict = tuple[bool, dict[str, Any]]
"""Whether a rate passed, and what was measured (reported as it is)."""


async def search(
    trial: Callable[[float], Awaitable[Verdict]],
    first_guess: float,
    *,
    refine: int,
    max_trials: int,
    report: Callable[[float, bool, dict[str, Any]], None],
) -> tuple[float | None, list[dict[str, Any]]]:
    """The highest rate that passed (None if none did) and every trial, in order."""
    trials: list[dict[str, Any]] = []
    passed: float | None = None
    failed: float | None = None
    rate = max(MIN_RATE, first_guess)

    async def attempt(rate: float) -> bool:
        ok, measured = await trial(rate)
        trials.append({"rate": round(rate, 1), "passed": ok, **measured})
        report(rate, ok, measured)
        return ok

    while len(trials) < max_trials:
        if await attempt(rate):
            passed = rate
            if failed is not None:
                break
            rate *= STEP_UP
        else:
            failed = rate
            if passed is not None:
                break
            if rate <= MIN_RATE:
                return None, trials
            rate = max(MIN_RATE, rate / 2)
    for _ in range(refine):
        if passed is None or failed is None or len(trials) >= max_trials:
            break
        middle = (passed + failed) / 2
        if await attempt(middle):
            passed = middle
        else:
            failed = middle
    return passed, trials
