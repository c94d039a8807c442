"""One DiffusionGemma request's state: its encoder cache, the canvas being denoised, what is committed.

``advance`` applies one decoder pass to the canvas (sample, accept by entropy, renoise) and streams
what became final: the whole canvas when it ends, or (ultra-fast) its sure leading tokens earlier.
The family (``family.py``) holds the model and runs the passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dfast_serve.engine.block import sampler
from dfast_serve.engine.sequence import Sequence
from dfast_serve.models.diffusion_gemma import GemmaSampling
from dfast_serve.wire import UltraFastConfig


@dataclass(eq=False)
class DiffusionGemmaSequence(Sequence):
    """One request: its encoder cache, the canvas being denoised, and what has been committed."""

    sampling: GemmaSampling
    steps: int  # denoising steps per canvas
    ultra: UltraFastConfig | None
    canvas_length: int
    vocab_size: int
    cache: Any
    to_encode: torch.Tensor | None  # (1, n) final tokens the encoder has not seen yet
    self_conditioning_dtype: torch.dtype = torch.float32
    encoded: int = 0  # tokens in the cache
    encoder_passes: int = 0
    block_index: int = 0
    block_step: int = 0
    cursor: int = 0  # committed (and streamed) leading positions of the current canvas
    revealed: bool = False
    canvas: torch.Tensor | None = None  # (1, L) the current canvas, None between canvases
    argmax: torch.Tensor | None = None  # (L,) the latest argmax canvas (committed positions frozen)
    self_conditioning: torch.Tensor | None = None  # (L, vocab) last step's tempered logits
    tokens: torch.Tensor | None = None  # (L,) committed tokens
    committed: torch.Tensor | None = None  # (L,) bool
    held_for: torch.Tensor | None = None  # (L,) steps the current token has been accepted in a row
    history: list[torch.Tensor] = field(default_factory=list)  # previous argmax canvases of this canvas
    passes_per_block: list[int] = field(default_factory=list)

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def block_start(self) -> int:
        return self.block_index * self.canvas_length

    @property
    def limit(self) -> int:
        """Positions of the current canvas that belong to the answer (fewer in a last, cut canvas)."""
        return min(self.canvas_length, self.target_tokens - self.block_start)

    def progress(self) -> float:
        return min(1.0, (self.block_start + self.cursor) / self.target_tokens)

    # ---- encode -------------------------------------------------------------------------------
    def encoded_now(self, cache: Any, count: int) -> None:
        """The encoder has added ``count`` tokens to the cache: the next canvas starts from noise."""
        self.cache, self.encoded, self.to_encode = cache, self.encoded + count, None
        self.encoder_passes += 1
        length, device = self.canvas_length, self.generator.device
        self.canvas = torch.randint(0, self.vocab_size, (1, length), generator=self.generator, device=device)
        self.argmax = self.canvas[0]
        self.self_conditioning, self.history, self.block_step, self.cursor = None, [], 0, 0
        self.tokens = torch.zeros(length, dtype=torch.long, device=device)
        self.committed = torch.zeros(length, dtype=torch.bool, device=device)
        self.held_for = torch.zeros(length, dtype=torch.long, device=device)

    @property
    def denoising(self) -> bool:
        return self.canvas is not None and not self.finished

    # ---- one denoising step -------------------------------------------------------------------
    def advance(self, logits: torch.Tensor) -> None:
        """Apply one decoder pass's logits (L, vocab) for this canvas: sample, accept, renoise, stream."""
        assert self.canvas is not None and self.committed is not None and self.tokens is not None
        params, s = self.request.params, self.sampling
        self.nfe += 1
        self.block_step += 1
        self.shape_logits(logits, self.block_start)  # EOS bans (ignore_eos, min_tokens); the rest is refused
        temperature = sampler.schedule_temperature(self.block_step, self.steps, s.t_min, s.t_max)
        if params.temperature > 0 and params.temperature != 1.0:
            temperature = temperature * params.temperature
        tempered = logits / temperature
        probs = torch.softmax(tempered, dim=-1, dtype=torch.float32)
        if params.temperature > 0:
            drawn = torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(-1)
        else:
            drawn = tempered.argmax(-1)
        frozen = self.committed
        argmax = torch.where(frozen, self.tokens, tempered.argmax(-1))
        drawn = torch.where(frozen, self.tokens, drawn)
        entropy = sampler.token_entropy(tempered)
        accept = sampler.accept_by_entropy(entropy, s.entropy_bound) | frozen
        held = torch.where((self.held_for > 0) & (self.canvas[0] == drawn), self.held_for + 1, 1)
        self.held_for = torch.where(accept, held, 0)
        self.canvas = sampler.renoise(torch.where(accept, drawn, self.canvas[0])[None], accept[None], self.vocab_size,
                                      self.generator)
        ends = self.block_step >= self.steps or self._stops(argmax, entropy, probs)
        self.history.append(argmax)
        self.argmax = argmax
        self.self_conditioning = tempered.to(self.self_conditioning_dtype)
        if ends:
            self._end_canvas(argmax)
        elif self.ultra is not None:
            self._commit_early(argmax, entropy)
        if params.draft and self.error is None:
            self.attach_draft(self.draft_text())

    def _stops(self, argmax: torch.Tensor, entropy: torch.Tensor, probs: torch.Tensor) -> bool:
        """The model's stable-and-confident stop; under ultra-fast early stop also when the argmax is
        stable and the mean top-token probability reaches ``early_stop_confidence``."""
        s = self.sampling
        if sampler.stable_and_confident(self.history, argmax, s.stability_threshold, entropy.mean(),
                                        s.confidence_threshold):
            return True
        ultra = self.ultra
        if ultra is None or not ultra.enable_early_stop:
            return False
        sure = float(probs.max(-1).values.mean()) >= ultra.early_stop_confidence
        return sure and sampler.is_stable(self.history, argmax, max(s.stability_threshold or 0, 1))

    def _commit_early(self, argmax: torch.Tensor, entropy: torch.Tensor) -> None:
        """Ultra-fast: commit (stream and freeze) the leading tokens that are sure enough."""
        ultra, bound = self.ultra, self.sampling.entropy_bound
        assert ultra is not None and self.canvas is not None and self.committed is not None
        if self.nfe < ultra.first_token_steps:  # no text before that pass, as in masked diffusion
            return
        ready = sampler.held_and_sure(self.held_for, entropy, ultra.hold_steps, bound)
        if ultra.enable_instant_first_token and not self.revealed and self.block_index == 0 \
                and self.nfe >= ultra.first_token_steps:
            self.revealed = True
            ready = ready | (entropy < bound)
        count = sampler.leading_run(ready, self.cursor, self.limit)
        if count == 0:
            return
        span = slice(self.cursor, self.cursor + count)
        self.tokens[span] = argmax[span]
        self.committed[span] = True
        self.canvas[0, span] = argmax[span]
        new_ids = argmax[span].tolist()
        self.cursor += count
        self.emit(new_ids, exhausted=self.block_start + self.cursor >= self.target_tokens)

    def _end_canvas(self, final: torch.Tensor) -> None:
        """Stream the canvas's text; the encoder takes it before the next canvas (unless the answer ended)."""
        self.passes_per_block.append(self.block_step)
        new_ids = final[self.cursor : self.limit].tolist()
        exhausted = self.block_start + self.limit >= self.target_tokens
        self.cursor = self.limit
        self.emit(new_ids, exhausted=exhausted)
        self.canvas = None
        self.self_conditioning = None
        if not self.finished:
            self.to_encode = final[None].clone()
            self.block_index += 1

    # ---- draft --------------------------------------------------------------------------------
    def draft_text(self) -> str:
        """The text after what the stream has released: the answer so far plus the current argmax
        canvas's uncommitted positions (to the first EOS), decoded whole, minus the released prefix."""
        tail: list[int] = []
        if self.canvas is not None and self.argmax is not None:
            tail = self.argmax[self.cursor : self.limit].tolist()
            eos = next((i for i, t in enumerate(tail) if t in self.eos_ids), None)
            tail = tail if eos is None else tail[:eos]
        full = self.detokenizer.tokenizer.decode(self.detokenizer.token_ids + tail,
                                                 skip_special_tokens=self.detokenizer.skip_special_tokens,
                                                 clean_up_tokenization_spaces=False)
        return full[self.detokenizer.sent_chars :]
