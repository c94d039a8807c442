"""The replica's engine thread: it moves work between the event loop and the engine core, nothing else.

Requests submitted from the event loop wait in an inbox; before every step the thread hands them to
the core (``EngineCore.add``), tells it which callers left (``abort``), and calls ``step`` once: the
core admits, schedules, runs and advances every running request together (step-level batching) and
returns each one's new chunks, which are handed to that request's asyncio queue in one call per
event loop. A request that arrives mid-generation joins at the next step without restarting the
others; a cancelled one leaves before the next step. Should the thread itself die (an engine bug
that escapes a step), every request in it and every later one gets an error instead of waiting
forever, and ``alive`` turns false, which fails the replica's health check.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from dfast_serve.engine import EngineCore, GenerationRequest, StreamingChunk

_END = object()


@dataclass(eq=False)
class Subscription:
    """One request inside the loop: its chunks arrive on ``queue``; ``cancel`` takes it out."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

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
    """The thread that owns the engine core. ``submit`` may be called from any event loop."""

    def __init__(self, engine: EngineCore, name: str = "engine") -> None:
        self.engine = engine
        self._inbox: deque[Subscription] = deque()
        self._active: list[Subscription] = []  # handed to the core, not yet ended
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
                self._inbox.append(subscription)
                self._wake.notify()
        return subscription

    @property
    def alive(self) -> bool:
        """The engine thread is running (``check_health`` of the replica)."""
        return self._thread.is_alive() and not self._stopped

    @property
    def active(self) -> int:
        return self.engine.running

    @property
    def waiting(self) -> int:
        return len(self._inbox) + self.engine.waiting

    def _run(self) -> None:
        try:
            self._loop_forever()
        finally:  # only a BaseException escaping the engine gets here
            with self._wake:
                self._stopped = True
                for subscription in [*self._active, *self._inbox]:
                    subscription._send(StepLoopDied())
                self._active, self._inbox = [], deque()

    def _loop_forever(self) -> None:
        while True:
            with self._wake:
                while not self._inbox and not self._active:
                    self._wake.wait()
                arrived, self._inbox = list(self._inbox), deque()
            for subscription in arrived:
                self.engine.add(subscription.request, subscription)
            self._active.extend(arrived)
            for subscription in [s for s in self._active if s.cancelled.is_set()]:
                self.engine.abort(subscription)
                self._active.remove(subscription)
            if self._active:
                self._step()

    def _step(self) -> None:
        """One core step; each request's chunks, then its error or its end, to its event loop. Only an
        error of the step as a whole (an engine bug) reaches every request in it."""
        try:
            outputs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - the engine itself failed: nobody's step ran
            for subscription in self._active:
                self.engine.abort(subscription)
                subscription._send(exc)
            self._active = []
            return
        self.steps += 1
        # One hand-over per event loop per step (one self-pipe write and loop wake-up), not one per chunk.
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[Subscription, Any]]] = {}
        for output in outputs:
            subscription: Subscription = output.owner
            items: list[Any] = list(output.chunks)
            if output.error is not None:
                items.append(output.error)
            elif output.finished:
                items.append(_END)
            if output.finished:
                self._active.remove(subscription)
            deliveries.setdefault(subscription.loop, []).extend((subscription, item) for item in items)
        for loop, batch in deliveries.items():
            if batch:
                _hand_over(loop, _deliver, batch)
