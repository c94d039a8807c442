"""Inference core: plain Python + torch, nothing of Ray or HTTP."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

from dfast_serve.engine.ar import AREngine
from dfast_serve.engine.diffusion import DiffusionEngine
from dfast_serve.engine.diffusion_gemma import DiffusionGemmaEngine
from dfast_serve.engine.options import BatchInvariance
from dfast_serve.engine.sequence import Sequence
from dfast_serve.engine.types import GenerationRequest, SamplingParams, StreamingChunk
from dfast_serve.models.adapters import CausalLM, DiffusionLM
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM


class Engine(Protocol):
    """What every engine offers: a stream of chunks for one request, or ``start`` + ``step`` to run
    many requests' sequences together (each sequence then ``drain()``s its own chunks; one whose
    own work failed is finished with its ``error``)."""

    kind: str
    forward_passes: int
    max_batch_size: int

    def start(self, request: GenerationRequest) -> Sequence: ...

    def step(self, sequences: list[Any]) -> None: ...

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]: ...


def build_engine(model: DiffusionLM | DiffusionGemmaLM | CausalLM, max_batch_size: int = 8,
                 step_token_budget: int | None = None, batch_invariance: BatchInvariance = "off") -> Engine:
    """The engine for ``model``; ``max_batch_size`` bounds how many sequences one forward pass of ``step`` runs,
    ``step_token_budget`` (diffusion) the canvas tokens one step computes, ``batch_invariance`` whether a
    request's output may depend on its batch mates (see ``options.BatchInvariance``).
    A diffusion request without options runs with ``DiffusionOptions()``: callers resolve a
    model's defaults into each request (``config.resolve_diffusion_options``)."""
    if isinstance(model, DiffusionLM):
        return DiffusionEngine(model, max_batch_size, step_token_budget, batch_invariance)
    if isinstance(model, DiffusionGemmaLM):
        # Its decoder passes share rows of equal cache length, with no fixed shape: strict runs one a pass.
        return DiffusionGemmaEngine(model, 1 if batch_invariance == "strict" else max_batch_size)
    return AREngine(model, max_batch_size, batch_invariance)


__all__ = ["AREngine", "DiffusionEngine", "DiffusionGemmaEngine", "Engine", "GenerationRequest", "SamplingParams", "Sequence", "StreamingChunk",
           "build_engine"]
