"""Step-level batching: one engine thread runs every in-flight request, one step at a time.

A replica's requests do not each run their own generator. They join one loop that, before every
step, drops the requests whose caller left, admits new ones (up to ``max_active``), and calls
``engine.step(sequences)`` once for all of them: the engine shares forward passes among them (up
to its batch size) and each sequence queues its own chunks, which are handed to that request's
asyncio queue. A request that arrives mid-generation joins at the next step without restarting
the others; a cancelled one leaves at the next step. Should the thread itself die (an engine bug
that escapes a step), every request in it and every later one gets an error instead of waiting
forever, and ``alive`` turns false, which fails the replica's health check.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from dfast_serve.engine import Engine, GenerationRequest, StreamingChunk

_END = object()


@dataclass(eq=False)
class Subscription:
    """One request inside the loop: its chunks arrive on ``queue``; ``cancel`` takes it out."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sequence: Any = None

    def cancel(self) -> None:
        self.cancelled.set()

    def _send(self, item: Any) -> None:
        _hand_over(self.loop, self.queue.put_nowait, item)

    async def chunks(self) -> AsyncIterator[StreamingChunk]:
        """The request's chunks in order; re-raises an error the engine hit on its behalf."""
        while True:
            item = await self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _hand_over(loop: asyncio.AbstractEventLoop, callback: Any, argument: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, argument)
    except RuntimeError:  # that event loop is closed: nobody is waiting for these items any more
        pass


def _deliver(items: list[tuple[Subscription, Any]]) -> None:
    """On the subscribers' event loop: queue a step's items, in order."""
    for subscription, item in items:
        subscription.queue.put_nowait(item)


class StepLoopDied(RuntimeError):
    def __init__(self) -> None:
        super().__init__("the replica's engine thread stopped")


class StepLoop:
    """The thread that owns the engine. ``submit`` may be called from any event loop."""

    def __init__(self, engine: Engine, max_active: int, name: str = "engine") -> None:
        self.engine = engine
        self.max_active = max_active
        self._waiting: deque[Subscription] = deque()
        self._active: list[Subscription] = []
        self._wake = threading.Condition()
        self.steps = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"step-loop-{name}", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Subscription:
        subscription = Subscription(request, asyncio.get_running_loop())
        with self._wake:
            if self._stopped:
                subscription._send(StepLoopDied())
            else:
                self._waiting.append(subscription)
                self._wake.notify()
        return subscription

    @property
    def alive(self) -> bool:
        """The engine thread is running (``check_health`` of the replica)."""
        return self._thread.is_alive() and not self._stopped

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _run(self) -> None:
        try:
            self._loop_forever()
        finally:  # only a BaseException escaping the engine gets here
            with self._wake:
                self._stopped = True
                for subscription in [*self._active, *self._waiting]:
                    subscription._send(StepLoopDied())
                self._active, self._waiting = [], deque()

    def _loop_forever(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._active:
                    self._wake.wait()
                self._admit()
            self._active = [s for s in self._active if not s.cancelled.is_set()]
            if self._active:
                self._step()

    def _admit(self) -> None:
        """Move waiting requests into the batch (called with the lock held)."""
        while self._waiting and len(self._active) < self.max_active:
            subscription = self._waiting.popleft()
            if subscription.cancelled.is_set():
                continue
            try:
                subscription.sequence = self.engine.start(subscription.request)
            except Exception as exc:  # noqa: BLE001 - reported to that request alone
                subscription._send(exc)
                continue
            self._active.append(subscription)

    def _step(self) -> None:
        """One engine step for every active request. A request whose own work failed (the engine
        marks its sequence with the ``error``) gets that error and leaves; its batch mates go on.
        Only an error of the step as a whole (an engine bug) reaches every request in it."""
        try:
            self.engine.step([s.sequence for s in self._active])
        except Exception as exc:  # noqa: BLE001 - the engine itself failed: nobody's step ran
            for subscription in self._active:
                subscription._send(exc)
            self._active = []
            return
        self.steps += 1
        still_running = []
        # One hand-over per event loop per step (one self-pipe write and loop wake-up), not one per chunk.
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[Subscription, Any]]] = {}
        for subscription in self._active:
            sequence = subscription.sequence
            items: list[Any] = list(sequence.drain())
            if sequence.error is not None:
                items.append(sequence.error)
            elif sequence.finished:
                items.append(_END)
            else:
                still_running.append(subscription)
            deliveries.setdefault(subscription.loop, []).extend((subscription, item) for item in items)
        for loop, batch in deliveries.items():
            if batch:
                _hand_over(loop, _deliver, batch)
        self._active = still_running
