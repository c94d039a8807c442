"""The tiny random DiffusionGemma checkpoint the tests share, and a stub model with forced logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dfast_serve.models.diffusion_gemma import GemmaSampling
from dfast_serve.models.gemma_tiny import EOS_ID, VOCAB, write_tiny_checkpoint, write_tokenizer

CANVAS, STEPS = 8, 6  # the tiny checkpoint's canvas length and denoising steps per canvas


def tiny_checkpoint(root: Path) -> Path:
    return write_tiny_checkpoint(root / "diffusion-gemma-tiny", canvas_length=CANVAS, max_denoising_steps=STEPS)


def load_tokenizer(root: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    write_tokenizer(root)
    return PreTrainedTokenizerFast.from_pretrained(str(root))


class _StubCache:
    """The stub's encoder cache: only its length matters."""

    layers: list = []


@dataclass
class StubGemma:
    """Stands in for ``DiffusionGemmaLM`` for one sequence: ``logits(step, canvases)`` gives each decoder
    pass's logits (canvas_length, vocab), ``step`` counting the passes of the current canvas from 1, so
    the sampler's policies can be driven to any entropy."""

    tokenizer: Any
    logits: Callable[[int, torch.Tensor], torch.Tensor]
    canvas_length: int = CANVAS
    vocab_size: int = VOCAB
    max_context: int = 1024
    eos_token_ids: frozenset[int] = frozenset({EOS_ID})
    sampling: GemmaSampling = field(default_factory=lambda: GemmaSampling(max_denoising_steps=STEPS))
    device: torch.device = torch.device("cpu")
    embedding_dtype: torch.dtype = torch.float32
    calls: int = 0
    encodes: int = 0

    def new_cache(self) -> _StubCache:
        return _StubCache()

    def encode(self, ids: torch.Tensor, cache: Any, start: int) -> Any:
        self.encodes += 1
        self.calls = 0  # one sequence at a time: the passes of its next canvas count from here
        return cache

    def denoise(self, canvases: torch.Tensor, cache: Any, starts: list[int], self_conditioning: Any,
                mask: Any = None) -> torch.Tensor:
        self.calls += 1
        return self.logits(self.calls, canvases)[None].expand(len(canvases), -1, -1).clone()


def peaked(rows: int, positions: list[int], gap: float, token: int = 7) -> torch.Tensor:
    """Logits (rows, VOCAB): uniform except at ``positions``, where ``token`` leads the rest by ``gap``."""
    logits = torch.zeros(rows, VOCAB)
    logits[positions, token] = gap
    return logits
