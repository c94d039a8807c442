"""Per-request state shared by every family: the stream a sequence builds as its answer grows.

The core's step advances sequences (``core.py``); each sequence turns its newly final answer tokens into
chunks with ``emit`` (EOS, stop strings, UTF-8 hold-back, finish reasons, usage), and the caller
takes them with ``drain``. A sequence whose own work failed carries the ``error`` and is finished;
its batch mates are untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.sampling import apply_min_p, penalize_repetition
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.wire import FinishReason, StreamingChunk


@dataclass(eq=False)
class Sequence:
    """One request in flight: its stream and counters; engines subclass it with their own state."""

    request: GenerationRequest
    detokenizer: StreamingDetokenizer
    eos_ids: frozenset[int]
    generator: torch.Generator
    started: float = field(default_factory=time.perf_counter, kw_only=True)
    nfe: int = field(default=0, kw_only=True)  # forward passes this request took part in
    finish_reason: FinishReason | None = field(default=None, kw_only=True)
    error: Exception | None = field(default=None, kw_only=True)
    chunks_sent: int = field(default=0, kw_only=True)
    pending: list[StreamingChunk] = field(default_factory=list, kw_only=True)

    def __post_init__(self) -> None:
        # The request's choice reaches the detokenizer the engine built (one place for both engines).
        self.detokenizer.skip_special_tokens = self.request.params.skip_special_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def target_tokens(self) -> int:
        return self.request.params.max_tokens

    def progress(self) -> float:
        """Share of the answer decided so far."""
        raise NotImplementedError

    def context_ids(self) -> torch.Tensor:
        """The tokens a repetition penalty counts as already said: the prompt and the answer so far."""
        return torch.tensor(self.request.prompt_ids + self.detokenizer.token_ids, dtype=torch.long)

    def shape_logits(self, logits: torch.Tensor, first_position: int) -> torch.Tensor:
        """The request's logit processors, in place, before any token is chosen: EOS banned where
        ``ignore_eos`` / ``min_tokens`` forbid it, then the repetition penalty, then min-p. ``logits``
        is (vocab,) or (rows, vocab) for answer positions ``first_position ..``."""
        params = self.request.params
        rows = logits if logits.dim() == 2 else logits[None]
        banned_rows = rows.shape[0] if params.ignore_eos else max(0, params.min_tokens - first_position)
        if banned_rows and self.eos_ids:
            rows[:banned_rows, sorted(self.eos_ids)] = -torch.inf
        if params.repetition_penalty != 1.0:
            penalize_repetition(rows, self.context_ids(), params.repetition_penalty)
        apply_min_p(rows, params.min_p, params.temperature)
        return logits

    def emit(self, new_ids: list[int], exhausted: bool) -> None:
        """Stream answer tokens that just became final, in order. An EOS among them ends the answer
        there; ``exhausted`` says no token can follow (``max_tokens`` reached)."""
        hit_eos = next((i for i, t in enumerate(new_ids) if t in self.eos_ids), None)
        if hit_eos is not None:
            new_ids = new_ids[:hit_eos]
        counted = self.detokenizer.token_count
        text = self.detokenizer.add(new_ids)
        if self.detokenizer.stopped or hit_eos is not None:
            self.finish_reason = "stop"
        elif exhausted:
            self.finish_reason = "length"
        if self.finish_reason is not None:
            text += self.detokenizer.finish()
        if text or self.finish_reason is not None:
            self._queue(text, self.detokenizer.token_count - counted)

    def fail(self, error: Exception) -> None:
        """This request alone failed (bad parameters, a forward pass it could not run)."""
        self.error = error

    def attach_draft(self, draft: str) -> None:
        """Give this pass's last chunk the draft, or queue a chunk carrying only the draft."""
        if not self.pending:
            self._queue("", 0)
        self.pending[-1].draft = "" if self.pending[-1].is_final else draft

    def _queue(self, text: str, new_tokens: int) -> None:
        final = self.finish_reason is not None
        self.pending.append(StreamingChunk(
            new_text=text, new_tokens=new_tokens, total_tokens=self.detokenizer.token_count,
            target_tokens=self.target_tokens, progress=1.0 if final else self.progress(),
            time_ms=(time.perf_counter() - self.started) * 1000.0,
            is_first=self.chunks_sent + len(self.pending) == 0, is_final=final, nfe=self.nfe,
            finish_reason=self.finish_reason, prompt_tokens=len(self.request.prompt_ids),
        ))

    def drain(self) -> list[StreamingChunk]:
        """The chunks queued since the last call."""
        out, self.pending = self.pending, []
        self.chunks_sent += len(out)
        return out
