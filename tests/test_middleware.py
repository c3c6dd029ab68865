"""Handler middleware and outcome observers: the seams tracing, metrics and users' own concerns
plug into without touching the dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support import eventually
from tidings import Event, Message, Retry, event_to_message
from tidings.runtime.handlers import Invocation, Next
from tidings.runtime.outcomes import Outcome, Settled
from tidings.schema import EventModel
from tidings.service import Context, Service

TOPIC = "mw-events"


class Tick(EventModel, type="MW_TICK", version=1):
    n: int


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[Settled] = []

    def settled(self, outcomes: Sequence[Settled]) -> None:
        self.outcomes.extend(outcomes)


async def test_middleware_wraps_every_attempt_in_order_and_observers_see_every_outcome(
    tmp_path: Path, running: Callable[[Service], Awaitable[None]]
) -> None:
    recorder = Recorder()
    calls: list[tuple[str, str, int, int]] = []

    async def outer(call: Invocation, next: Next) -> None:
        calls.append(("outer", call.handler.name, call.attempt, call.event.data["n"]))
        await next(call)

    service = Service(
        "mw",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/mw.db",
        migrations=["CREATE TABLE ticks (n INTEGER PRIMARY KEY)"],
        topics={TOPIC: 1},
        retry=Retry(immediate=1, max_attempts=2, initial_delay=0.01),
        middleware=[outer],
        observers=[recorder],
    )

    @service.use
    async def inner(call: Invocation, next: Next) -> None:
        calls.append(("inner", call.handler.name, call.attempt, call.event.data["n"]))
        assert call.position is not None and call.position[0] == TOPIC
        if call.event.data["n"] == 3:
            raise RuntimeError("refused by middleware")
        await next(call)

    @service.handler(TOPIC)
    async def tick(event: Tick, ctx: Context) -> None:
        await ctx.execute("INSERT INTO ticks(n) VALUES (?)", (event.n,))

    await service.start()
    first = Tick(n=1).to_event()
    messages = [event_to_message(first), event_to_message(Tick(n=2).to_event())]
    messages += [event_to_message(Tick(n=3).to_event()), event_to_message(first)]  # a duplicate
    messages.append(event_to_message(Event(type="MW_OTHER")))
    messages.append(Message(b"not an event"))
    await service.broker.publish(TOPIC, messages)
    await running(service)

    async def settled() -> bool:
        return len(recorder.outcomes) >= 7

    await eventually(settled)
    kinds = [
        (o.outcome, o.event.data.get("n") if o.event and o.event.data else None)
        for o in recorder.outcomes
    ]
    assert (Outcome.OK, 1) in kinds and (Outcome.OK, 2) in kinds
    assert kinds.count((Outcome.RETRIED, 3)) == 1
    assert (Outcome.DEAD_LETTERED, 3) in kinds
    assert (Outcome.DUPLICATE, 1) in kinds
    assert [o.outcome for o in recorder.outcomes].count(Outcome.UNKNOWN_TYPE) == 1
    undecodable = [o for o in recorder.outcomes if o.reason == "undecodable"]
    assert len(undecodable) == 1 and undecodable[0].handler is None
    ok = [o for o in recorder.outcomes if o.outcome is Outcome.OK]
    assert all(o.duration is not None and o.duration >= 0 for o in ok)
    # the first middleware is outermost; every attempt goes through both
    assert calls[:2] == [("outer", "tick", 1, 1), ("inner", "tick", 1, 1)]
    attempts_of_3 = [c for c in calls if c[3] == 3 and c[0] == "inner"]
    assert [c[2] for c in attempts_of_3][-2:] == [1, 2]
    assert service.stats.processed == 2 and service.stats.dead_lettered == 2
    assert sorted(r[0] for r in await service.store.query("SELECT n FROM ticks")) == [1, 2]


async def test_events_no_handler_takes_are_settled_without_a_store_transaction(
    tmp_path: Path, running: Callable[[Service], Awaitable[None]]
) -> None:
    """A batch holding only events of types this service does not handle writes nothing: it
    is acked and told to observers as UNKNOWN_TYPE without opening a transaction (a service
    reading a busy topic for one event type pays nothing for the others)."""
    recorder = Recorder()
    service = Service(
        "skip",
        broker=f"sqlite:///{tmp_path}/bus.db",
        store=f"sqlite:///{tmp_path}/skip.db",
        topics={TOPIC: 1},
        observers=[recorder],
    )

    @service.handler(TOPIC)
    async def tick(event: Tick, ctx: Context) -> None:
        pass

    await service.start()
    opened: list[int] = []
    transaction = service.store.transaction

    def counting() -> Any:
        opened.append(1)
        return transaction()

    service.store.transaction = counting  # type: ignore[method-assign]
    others = [event_to_message(Event(type="MW_OTHER", data={"n": n})) for n in range(50)]
    await service.broker.publish(TOPIC, others)
    await running(service)

    async def acked() -> bool:
        info = await service.broker.admin.describe_group("skip")
        return bool(info.partitions) and all(p.lag == 0 for p in info.partitions)

    await eventually(acked)
    assert [o.outcome for o in recorder.outcomes] == [Outcome.UNKNOWN_TYPE] * 50
    assert opened == []
    # an event it handles still goes through a transaction
    await service.broker.publish(TOPIC, [event_to_message(Tick(n=1).to_event())])

    async def handled() -> bool:
        return any(o.outcome is Outcome.OK for o in recorder.outcomes)

    await eventually(handled)
    assert opened
