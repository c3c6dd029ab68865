"""Open-loop load and the search for the highest steady rate (`python -m bench sync_vs_events`).

A closed loop (N requests in flight) measures latency at the rate the server happens to
sustain; capacity needs the opposite: requests sent at a fixed rate whatever the answers, as
shoppers arrive, for a fixed time, and a verdict on whether the system kept up. `open_loop`
sends request i at `start + i / rate` (requests that fall due together go out together: the
sender never waits for an answer), each answered or timed out on its own task.

`search` tries rates until it brackets the highest one that passes a caller's `verdict`: from a
first guess it goes up by `STEP_UP` while rates pass (down by half while they fail), then halves
the bracket `refine` times. Every try is reported to the caller's `report`.
"""

from __future__ import annotations

import asyncio
import time
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


async def open_loop(
    client: httpx.AsyncClient,
    requests: Sequence[tuple[dict[str, Any], dict[str, str]]],
    rate: float,
    timeout: float,
) -> OpenResult:
    """POST `requests` (body, headers) to /orders at `rate` per second; no retries."""
    result = OpenResult(rate=rate, seconds=len(requests) / rate)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []

    async def one(body: dict[str, Any], headers: dict[str, str]) -> None:
        started = time.perf_counter()
        kind: str | None = None
        try:
            async with asyncio.timeout(timeout):
                response = await client.post("/orders", json=body, headers=headers)
            if 200 <= response.status_code < 300:
                order_id = response.json().get("orderId")
                if order_id:
                    result.order_ids.append(str(order_id))
            else:
                kind = f"HTTP {response.status_code}"
        except TimeoutError:
            kind = "timeout"
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
        result.times_ms.append((time.perf_counter() - started) * 1000)
        if kind is None:
            result.ok += 1
        else:
            result.errors[kind] += 1

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
        tasks.append(asyncio.create_task(one(body, headers)))
        result.sent += 1
    result.send_seconds = last - first if len(requests) > 1 else 0.0
    await asyncio.gather(*tasks)
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
