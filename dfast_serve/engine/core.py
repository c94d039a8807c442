"""The engine core: one step = schedule → run → advance, the same for every model family.

``EngineCore.step`` admits waiting requests in arrival order (up to ``max_running`` requests, and
while the running requests' reserved tokens stay within ``max_running_tokens``), then runs the
running sequences' step and returns each request's output:

* **schedule** — the family says which sequences run and how they share forward passes
  (``Family.schedule`` yields ``Pass``es; masked diffusion's fair turns within its token budget and
  its packing live there);
* **run** — the core calls ``Family.forward`` for each pass; a pass that fails for a group is run
  again one sequence at a time, so an error ends only the request that causes it (in one place
  for every family);
* **advance** — ``Family.advance`` moves each sequence on from its row of the pass's output
  (decide tokens, stream them); a sequence whose advance fails is finished with that error.

A family supplies what differs behind ``Family`` (below): ``validate`` (a request's limits, once,
before admission: a 400 naming the field), ``start`` (its sequence), ``schedule``, ``forward`` and
``advance``. Sequences are plain state (``sequence.Sequence``); decisions are pure functions of it.
The core knows no threads: the replica's step loop (``serve/step_loop.py``) calls ``add``,
``abort`` and ``step`` from its one thread and moves outputs to the event loop.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generic, Iterable, Iterator, Protocol, TypeVar

from dfast_serve.engine.limits import check_context
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sequence import Sequence
from dfast_serve.wire import StreamingChunk

S = TypeVar("S", bound=Sequence)
logger = logging.getLogger(__name__)


@dataclass
class Pass(Generic[S]):
    """One forward pass: the sequences sharing it, each one's plan for it (``plans[i]`` for
    ``sequences[i]``, None when the family needs none) and what the pass does (``phase``: the family's
    word, e.g. ``encode`` / ``denoise``; ``shape``: a fixed shape it must run in, if any)."""

    sequences: list[S]
    plans: list[Any] | None = None
    phase: str = "forward"
    shape: Any = None

    def alone(self, row: int) -> "Pass[S]":
        """The same pass for one of its sequences (how a failed pass is retried)."""
        return replace(self, sequences=[self.sequences[row]], plans=None if self.plans is None else [self.plans[row]])

    def plan(self, row: int) -> Any:
        return None if self.plans is None else self.plans[row]


class Family(Protocol[S]):
    """What a model family supplies to the core.

    ``validate(request)`` raises ``wire.APIError`` (400, ``param`` naming the field) for a request the
    family cannot run on its model: called once, before the request is admitted. ``start(request)``
    builds its sequence (no checks: it was validated). ``schedule(sequences)`` yields the step's passes;
    it may be a generator whose later passes depend on the earlier ones having run (DiffusionGemma
    encodes, then denoises). ``forward(pass_)`` runs the model once and returns what ``advance`` reads;
    ``advance(seq, row, output, pass_)`` moves one sequence on from its row.
    """

    kind: str
    max_batch_size: int

    def validate(self, request: GenerationRequest) -> None: ...
    def start(self, request: GenerationRequest) -> S: ...
    def schedule(self, sequences: list[S]) -> Iterable[Pass[S]]: ...
    def forward(self, pass_: Pass[S]) -> Any: ...
    def advance(self, seq: S, row: int, output: Any, pass_: Pass[S]) -> None: ...


def reserved_tokens(request: GenerationRequest) -> int:
    """What a request counts against ``max_running_tokens``: its prompt and every answer token it may
    produce (the positions its cache or canvas may come to hold)."""
    return len(request.prompt_ids) + request.params.max_tokens


@dataclass
class StepOutput:
    """What one step did for one request: its new chunks and, once it ended, how."""

    owner: Any
    chunks: list[StreamingChunk]
    error: Exception | None = None
    finished: bool = False


@dataclass(eq=False)
class _Entry:
    request: GenerationRequest
    owner: Any
    sequence: Sequence | None = None


@dataclass
class EngineCore:
    """Runs one model family's requests: ``add`` / ``abort`` / ``step`` for a serving loop, or
    ``generate`` for one request alone. ``forward_passes`` counts every pass run (retries included).

    Admission: at most ``max_running`` requests run at once, and (unless it is None) their
    ``reserved_tokens`` (prompt + ``max_tokens``) sum to at most ``max_running_tokens``; the
    queue's head waits until both hold (later requests wait behind it: no overtaking), and a request
    whose own cost exceeds the cap is refused by ``validate`` (400), as it could never start."""

    family: Family
    max_running: int = 8
    max_running_tokens: int | None = None
    forward_passes: int = 0
    failed_in_a_row: int = 0  # passes that failed even for one sequence alone, since the last that ran
    _waiting: deque[_Entry] = field(default_factory=deque, repr=False)
    _running: list[_Entry] = field(default_factory=list, repr=False)

    @property
    def kind(self) -> str:
        return self.family.kind

    @property
    def max_batch_size(self) -> int:
        return self.family.max_batch_size

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def running_tokens(self) -> int:
        """The running requests' reserved tokens (what ``max_running_tokens`` caps)."""
        return sum(reserved_tokens(e.request) for e in self._running)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    # ---- requests ---------------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> None:
        """Raise ``APIError`` (400 naming the field) for a request this model cannot run."""
        self.family.validate(request)
        if self.max_running_tokens is not None:
            check_context(request, self.max_running_tokens, why="the replica's max_running_tokens")

    def add(self, request: GenerationRequest, owner: Any) -> None:
        """Queue a validated request; its outputs carry ``owner``."""
        self._waiting.append(_Entry(request, owner))

    def abort(self, owner: Any) -> None:
        """Forget the request of ``owner`` (its caller left): it takes no further pass."""
        self._waiting = deque(e for e in self._waiting if e.owner is not owner)
        self._running = [e for e in self._running if e.owner is not owner]

    # ---- one step ------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Admit, then schedule → run → advance the running sequences; every request's new output."""
        outputs = self._admit()
        self.step_sequences([e.sequence for e in self._running])
        still_running = []
        for entry in self._running:
            seq = entry.sequence
            outputs.append(StepOutput(entry.owner, seq.drain(), seq.error, seq.finished))
            if not seq.finished:
                still_running.append(entry)
        self._running = still_running
        return outputs

    def _admit(self) -> list[StepOutput]:
        refused = []
        tokens = self.running_tokens
        while self._waiting and len(self._running) < self.max_running:
            cost = reserved_tokens(self._waiting[0].request)
            if self.max_running_tokens is not None and self._running and tokens + cost > self.max_running_tokens:
                break  # the head waits for running requests to end; no later one overtakes it
            entry = self._waiting.popleft()
            try:
                entry.sequence = self.family.start(entry.request)
            except Exception as exc:  # noqa: BLE001 - that request alone cannot start
                refused.append(StepOutput(entry.owner, [], exc, True))
                continue
            self._running.append(entry)
            tokens += cost
        return refused

    def step_sequences(self, sequences: list[Sequence]) -> None:
        """One step of ``sequences``: the family's passes, each run with its failures isolated."""
        for pass_ in self.family.schedule(sequences):
            self._run(pass_)

    def _run(self, pass_: Pass) -> None:
        self.forward_passes += 1
        try:
            output = self.family.forward(pass_)
        except Exception as exc:  # noqa: BLE001 - find the sequence that causes it: each alone
            if len(pass_.sequences) == 1:
                self.failed_in_a_row += 1
                logger.warning("a %s pass failed for request %s: %s: %s", pass_.phase,
                               pass_.sequences[0].request.request_id, type(exc).__name__, exc)
                pass_.sequences[0].fail(exc)
                return
            logger.warning("a %s pass of %d sequences failed (%s); running each alone", pass_.phase,
                           len(pass_.sequences), type(exc).__name__)
            for row in range(len(pass_.sequences)):
                self._run(pass_.alone(row))
            return
        self.failed_in_a_row = 0
        for row, seq in enumerate(pass_.sequences):
            try:
                self.family.advance(seq, row, output, pass_)
            except Exception as exc:  # noqa: BLE001 - reported to this request alone
                seq.fail(exc)

    # ---- one request alone ------------------------------------------------------------------
    def start(self, request: GenerationRequest) -> Sequence:
        """Validate and start one request's sequence, for callers that step it themselves."""
        self.family.validate(request)
        return self.family.start(request)

    def generate(self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
                 ) -> Iterator[StreamingChunk]:
        """One request's chunks as its sequence is stepped alone; ``should_stop`` is polled before every
        step; the request's own error (a refusal, a failed pass) is raised."""
        seq = self.start(request)
        while not seq.finished:
            if should_stop is not None and should_stop():
                return
            self.step_sequences([seq])
            if seq.error is not None:
                raise seq.error
            yield from seq.drain()
