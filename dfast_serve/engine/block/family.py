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

``BlockDiffusion.schedule`` = encode passes (prompts and finished canvases, one sequence a pass) →
denoise passes (sequences whose caches have the same length share a decoder pass, ``max_batch_size``
at most; each row draws from its own generator, so a batched request samples exactly as alone);
``advance`` is each sequence's own (``sequence.py``).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from dfast_serve.engine.batching import split_into
from dfast_serve.engine.block.sequence import DiffusionGemmaSequence
from dfast_serve.engine.core import Pass
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.limits import check_context, check_prompt
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sampling import make_generator
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM, stack_caches
from dfast_serve.wire import DiffusionOptions, SamplingParams, bad_request

# Request options that mean nothing for this family; a request that changes one gets a 400 naming it.
REFUSED_OPTIONS = ("block_length", "remasking", "decoding", "threshold", "confidence", "cache")
REFUSED_ULTRA = ("first_token_confidence_threshold", "stream_confidence_threshold", "stream_every_n_tokens",
                 "steps_per_block", "min_steps", "max_steps", "early_stop_min_progress", "schedule")
REFUSED_SAMPLING = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def check_supported(params: SamplingParams, options: DiffusionOptions | None, defaults: DiffusionOptions,
                    canvas_length: int) -> None:
    """Refuse the first setting this family cannot honour; options are compared with the model's defaults
    (a server may set them for the model; a request may not change them)."""
    for name, neutral in REFUSED_SAMPLING.items():
        if getattr(params, name) != neutral:
            raise bad_request(f"{name} is not supported by DiffusionGemma models (their sampler draws from the "
                              f"whole tempered distribution)", name)
    if options is None:
        return
    for name in REFUSED_OPTIONS:
        if getattr(options, name) != getattr(defaults, name):
            why = (f"the canvas length is the model's ({canvas_length})" if name == "block_length"
                   else "it belongs to masked diffusion")
            raise bad_request(f"dfast.{name} does not apply to DiffusionGemma models: {why}", f"dfast.{name}")
    for name in REFUSED_ULTRA:
        if getattr(options.ultra_fast_config, name) != getattr(defaults.ultra_fast_config, name):
            raise bad_request(f"dfast.ultra_fast_config.{name} does not apply to DiffusionGemma models (their "
                              f"ultra-fast options: enable_instant_first_token, first_token_steps, hold_steps, "
                              f"enable_early_stop, early_stop_confidence)", f"dfast.ultra_fast_config.{name}")


def canvases_for(max_tokens: int, canvas_length: int) -> int:
    return math.ceil(max_tokens / canvas_length)


class BlockDiffusion:
    """The DiffusionGemma family on one model. ``encoder_passes`` counts the encoder's passes;
    ``defaults`` are the model's resolved diffusion options (what a request is compared with)."""

    kind = "diffusion_gemma"

    def __init__(self, model: DiffusionGemmaLM, max_batch_size: int = 8, defaults: DiffusionOptions | None = None
                 ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.defaults = defaults or DiffusionOptions()
        self.encoder_passes = 0

    def validate(self, request: GenerationRequest) -> None:
        check_prompt(request)
        length = self.model.canvas_length
        check_supported(request.params, request.diffusion, self.defaults, length)
        check_context(request, self.model.max_context, canvases_for(request.params.max_tokens, length) * length,
                      f"its context; the answer is written in whole canvases of {length}")

    def start(self, request: GenerationRequest) -> DiffusionGemmaSequence:
        params = request.params
        options = request.diffusion or self.defaults
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

    def schedule(self, sequences: list[DiffusionGemmaSequence]) -> Iterator[Pass[DiffusionGemmaSequence]]:
        """Encode what each sequence has made final (a pass each), then denoise: sequences whose caches
        have the same length share decoder passes. A generator: the denoise passes are formed after the
        encode passes ran."""
        for seq in sequences:
            if seq.to_encode is not None and not seq.finished:
                yield Pass([seq], phase="encode")
        by_length: dict[int, list[DiffusionGemmaSequence]] = {}
        for seq in sequences:
            if seq.denoising:
                by_length.setdefault(seq.encoded, []).append(seq)
        for same in by_length.values():
            for group in split_into(same, self.max_batch_size):
                yield Pass(group, phase="denoise")

    def forward(self, pass_: Pass[DiffusionGemmaSequence]) -> torch.Tensor | tuple:
        if pass_.phase == "encode":
            seq = pass_.sequences[0]
            assert seq.to_encode is not None
            self.encoder_passes += 1
            return self.model.encode(seq.to_encode, seq.cache, seq.encoded), seq.to_encode.shape[1]
        return self._denoise(pass_.sequences)

    def advance(self, seq: DiffusionGemmaSequence, row: int, output: torch.Tensor | tuple,
                pass_: Pass[DiffusionGemmaSequence]) -> None:
        if pass_.phase == "encode":
            cache, count = output
            seq.encoded_now(cache, count)
        else:
            seq.advance(output[row])

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
        cache = stack_caches([seq.cache for seq in group])
        return self.model.denoise(canvases, cache, [seq.encoded for seq in group], self_conditioning, mask)
