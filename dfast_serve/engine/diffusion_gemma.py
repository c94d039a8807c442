"""DiffusionGemma generation: block diffusion over a uniform-noise canvas, streamed.

The answer is written one canvas (``canvas_length`` tokens) at a time. A canvas starts as
uniformly random tokens; each step runs the decoder once against the encoder's KV cache of
everything final, then the sampler (``gemma_sampler``) draws, accepts by entropy and renoises.
The canvas ends at the step budget or at the model's own stable-and-confident stop, and its
argmax is the text: it is streamed at once, and the encoder adds it to the cache before the
next canvas starts.

Streaming, standard mode (what transformers' ``generate`` computes, token for token at batch 1
with the same seed): a canvas's text is committed when the canvas ends (acceptance is
recomputed over the whole canvas at every step, so nothing is final before); every step's argmax
canvas goes out as the native stream's ``draft``. Ultra-fast adds earlier commits of the
canvas's leading tokens, which are then frozen in the canvas: the early first reveal (at pass
``first_token_steps`` of the first canvas, the leading run whose entropy is already under the
bound), the held commit (``hold_steps`` steps accepted with the same token and under the bound),
and an early stop (the model's stability test with ``early_stop_confidence`` as the mean top-token
probability). ``max_tokens`` that is not a multiple of the canvas: the last canvas is denoised
whole (the model always denoises a full canvas) and only its first tokens up to ``max_tokens``
are sent (finish reason ``length``).

``DiffusionGemmaEngine.step`` = encode (prompts and finished canvases, one sequence a pass) →
denoise (sequences whose caches have the same length share a decoder pass, ``max_batch_size``
at most; each row draws from its own generator, so a batched request samples exactly as alone)
→ postprocess (each sequence's ``advance``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from dfast_serve.engine import gemma_sampler as sampler
from dfast_serve.engine.batching import split_into
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.options import DiffusionOptions, UltraFastConfig
from dfast_serve.engine.sampling import make_generator
from dfast_serve.engine.sequence import Sequence, generate_alone
from dfast_serve.engine.types import GenerationRequest, SamplingParams, StreamingChunk
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM, GemmaSampling, stack_caches

# Request options that mean nothing for this family; a request that changes one gets a 400 naming it.
REFUSED_OPTIONS = ("block_length", "remasking", "decoding", "threshold", "confidence", "cache")
REFUSED_ULTRA = ("first_token_confidence_threshold", "stream_confidence_threshold", "stream_every_n_tokens",
                 "steps_per_block", "min_steps", "max_steps", "early_stop_min_progress", "schedule")
REFUSED_SAMPLING = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class Refusal:
    message: str
    param: str


def refusal(params: SamplingParams, options: DiffusionOptions | None, defaults: DiffusionOptions | None,
            canvas_length: int) -> Refusal | None:
    """The first request setting this family cannot honour, compared with the model's own defaults."""
    for name, neutral in REFUSED_SAMPLING.items():
        if getattr(params, name) != neutral:
            return Refusal(f"{name} is not supported by DiffusionGemma models (their sampler draws from the "
                           f"whole tempered distribution)", name)
    if options is None:
        return None
    defaults = defaults or DiffusionOptions()
    for name in REFUSED_OPTIONS:
        if getattr(options, name) != getattr(defaults, name):
            why = (f"the canvas length is the model's ({canvas_length})" if name == "block_length"
                   else "it belongs to masked diffusion")
            return Refusal(f"dfast.{name} does not apply to DiffusionGemma models: {why}", f"dfast.{name}")
    for name in REFUSED_ULTRA:
        if getattr(options.ultra_fast_config, name) != getattr(defaults.ultra_fast_config, name):
            return Refusal(f"dfast.ultra_fast_config.{name} does not apply to DiffusionGemma models (their ultra-fast "
                           f"options: enable_instant_first_token, first_token_steps, hold_steps, enable_early_stop, "
                           f"early_stop_confidence)", f"dfast.ultra_fast_config.{name}")
    return None


def canvases_for(max_tokens: int, canvas_length: int) -> int:
    return math.ceil(max_tokens / canvas_length)


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


class DiffusionGemmaEngine:
    """Runs DiffusionGemma sequences on one model. ``forward_passes`` counts every pass (encoder and
    decoder); ``encoder_passes`` the encoder's alone."""

    kind = "diffusion_gemma"

    def __init__(self, model: DiffusionGemmaLM, max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.forward_passes = 0
        self.encoder_passes = 0

    def refusal(self, prompt_len: int, params: SamplingParams, options: DiffusionOptions | None,
                defaults: DiffusionOptions | None = None) -> Refusal | None:
        """Why this request cannot run (an option of masked diffusion, or a context overflow), or None."""
        refused = refusal(params, options, defaults, self.model.canvas_length)
        if refused is not None:
            return refused
        length = self.model.canvas_length
        needed = prompt_len + canvases_for(params.max_tokens, length) * length
        if needed > self.model.max_context:
            return Refusal(f"the prompt ({prompt_len} tokens) and max_tokens {params.max_tokens}, rounded up to whole "
                           f"canvases of {length}, need {needed} positions; the model has {self.model.max_context}",
                           "max_tokens")
        return None

    def start(self, request: GenerationRequest) -> DiffusionGemmaSequence:
        params = request.params
        if params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        options = request.diffusion or DiffusionOptions()
        # The options are checked against the model's defaults where those are known (the replica).
        refused = self.refusal(len(request.prompt_ids), params, None)
        if refused is not None:
            raise ValueError(refused.message)
        model = self.model
        device = model.device
        return DiffusionGemmaSequence(
            request=request,
            detokenizer=StreamingDetokenizer(model.tokenizer, params.stop),
            eos_ids=model.eos_token_ids,
            generator=make_generator(params.seed, device),
            sampling=model.sampling,
            steps=options.steps or model.sampling.max_denoising_steps,
            ultra=options.ultra_fast_config if options.ultra_fast else None,
            canvas_length=model.canvas_length,
            vocab_size=model.vocab_size,
            cache=model.new_cache(),
            to_encode=torch.tensor([request.prompt_ids], dtype=torch.long, device=device),
            self_conditioning_dtype=model.embedding_dtype,
        )

    def step(self, sequences: list[DiffusionGemmaSequence]) -> None:
        """Encode what each sequence has made final, then one denoising step for every sequence, sharing
        decoder passes among equal cache lengths. A failed pass is retried per sequence, so an error
        ends only the request that causes it."""
        for seq in sequences:
            if seq.to_encode is not None and not seq.finished:
                try:
                    self._encode(seq)
                except Exception as exc:  # noqa: BLE001 - reported to this request alone
                    seq.fail(exc)
        ready = [seq for seq in sequences if seq.denoising]
        by_length: dict[int, list[DiffusionGemmaSequence]] = {}
        for seq in ready:
            by_length.setdefault(seq.encoded, []).append(seq)
        for same in by_length.values():
            for group in split_into(same, self.max_batch_size):
                try:
                    logits = self._denoise(group)
                except Exception as exc:  # noqa: BLE001 - isolate the sequence that causes it
                    if len(group) == 1:
                        group[0].fail(exc)
                        continue
                    for seq in group:
                        try:
                            self._postprocess([seq], self._denoise([seq]))
                        except Exception as alone_exc:  # noqa: BLE001
                            seq.fail(alone_exc)
                    continue
                self._postprocess(group, logits)

    def _encode(self, seq: DiffusionGemmaSequence) -> None:
        assert seq.to_encode is not None
        self.forward_passes += 1
        self.encoder_passes += 1
        count = seq.to_encode.shape[1]
        seq.encoded_now(self.model.encode(seq.to_encode, seq.cache, seq.encoded), count)

    def _denoise(self, group: list[DiffusionGemmaSequence]) -> torch.Tensor:
        canvases = torch.cat([seq.canvas for seq in group])
        conditioned = [seq.self_conditioning is not None for seq in group]
        self_conditioning, mask = None, None
        if any(conditioned):
            like = next(seq.self_conditioning for seq in group if seq.self_conditioning is not None)
            self_conditioning = torch.stack([torch.zeros_like(like) if seq.self_conditioning is None
                                             else seq.self_conditioning for seq in group])
            if not all(conditioned):  # rows on their first step get no self-conditioning signal
                mask = torch.tensor(conditioned, device=canvases.device)
        self.forward_passes += 1
        cache = stack_caches([seq.cache for seq in group])
        return self.model.denoise(canvases, cache, [seq.encoded for seq in group], self_conditioning, mask)

    def _postprocess(self, group: list[DiffusionGemmaSequence], logits: torch.Tensor) -> None:
        for i, seq in enumerate(group):
            try:
                seq.advance(logits[i])
            except Exception as exc:  # noqa: BLE001 - reported to this request alone
                seq.fail(exc)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        return generate_alone(self, request, should_stop)
