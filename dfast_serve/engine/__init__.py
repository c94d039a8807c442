"""Inference core: plain Python + torch, nothing of Ray, HTTP or the server's config.

``build_engine`` gives an ``EngineCore`` (``core.py``: step = schedule → run → advance) over the
family that fits the model: masked diffusion (``masked/``: tiny-mdlm, LLaDA, Dream), block diffusion
(``block/``: DiffusionGemma) or autoregressive (``ar/``).
"""

from __future__ import annotations

from dfast_serve.engine.ar.family import Autoregressive
from dfast_serve.engine.block.family import BlockDiffusion
from dfast_serve.engine.core import EngineCore, Family, Pass, StepOutput
from dfast_serve.engine.limits import EngineLimits
from dfast_serve.engine.masked.family import MaskedDiffusion
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sequence import Sequence
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.models.causal_lm import CausalLM
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM
from dfast_serve.wire import BatchInvariance, DiffusionOptions, SamplingParams, StreamingChunk

Engine = EngineCore


def build_engine(model: DiffusionLM | DiffusionGemmaLM | CausalLM, max_batch_size: int = 8,
                 step_token_budget: int | None = None, batch_invariance: BatchInvariance = "off", *,
                 max_running: int | None = None, max_running_tokens: int | None = None,
                 prefill_chunk_decodes: float | None = None, pass_piece_tokens: int | None = None,
                 limits: EngineLimits = EngineLimits(), diffusion_defaults: DiffusionOptions | None = None) -> EngineCore:
    """The engine for ``model``. ``max_batch_size`` bounds how many sequences share a forward pass,
    ``max_running`` how many requests run at once (default ``max_batch_size``), ``max_running_tokens``
    (None: no cap) their reserved tokens together (prompt + ``max_tokens`` each), ``step_token_budget``
    the new tokens one step computes (masked diffusion: canvas tokens; AR: decodes and prefill chunks;
    None: no bound), ``batch_invariance`` whether a request's
    output may depend on its batch mates (see ``wire.options.BatchInvariance``), ``limits`` what a
    request may ask for beyond the model's context, ``prefill_chunk_decodes`` (AR) a step's prefill time in
    decode passes (``ar/pacing.py``; None: chunks sized by the token budget alone), ``pass_piece_tokens``
    (masked diffusion) the cost above which a pass runs in pieces (None: whole). ``diffusion_defaults`` are the model's resolved
    options (DiffusionGemma compares a request's with them); a diffusion request without options runs
    with them (callers resolve a model's defaults into each request: ``config.resolve_diffusion_options``).
    """
    family: Family
    max_running = max_running or max_batch_size
    if isinstance(model, DiffusionLM):
        family = MaskedDiffusion(model, max_batch_size, step_token_budget, batch_invariance, limits, pass_piece_tokens)
    elif isinstance(model, DiffusionGemmaLM):
        # Its decoder passes share rows of equal cache length, with no fixed shape: strict runs one a pass.
        family = BlockDiffusion(model, 1 if batch_invariance == "strict" else max_batch_size, diffusion_defaults)
    else:
        family = Autoregressive(model, max_batch_size, batch_invariance, step_token_budget, max_running,
                                prefill_chunk_decodes)
    return EngineCore(family, max_running, max_running_tokens)


__all__ = ["Autoregressive", "BlockDiffusion", "Engine", "EngineCore", "EngineLimits", "Family", "GenerationRequest",
           "MaskedDiffusion", "Pass", "SamplingParams", "Sequence", "StepOutput", "StreamingChunk", "build_engine"]
