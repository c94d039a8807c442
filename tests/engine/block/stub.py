"""A DiffusionGemma stand-in for fast engine tests: logits the test writes, and a record of what each
decoder pass received (canvases, positions, self-conditioning), so no network runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dfast_serve.models.diffusion_gemma import GemmaSampling

VOCAB, PAD, EOS = 32, 0, 1


DOT = 20


class WordTokenizer:
    """Id i decodes to ``"w<i> "``, ``DOT`` to ``". "``; PAD and EOS are special. ``clean_up_tokenization_spaces``
    (default True, as for many Hugging Face tokenizers) drops the space before a dot."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=True):
        text = "".join(". " if i == DOT else f"w{i} " for i in ids if not (skip_special_tokens and i in (PAD, EOS)))
        return text.replace(" .", ".") if clean_up_tokenization_spaces else text


@dataclass
class Cache:
    """What the encoder has seen (``layers``: none, for ``stack_caches``)."""

    ids: list[int]
    layers: list = field(default_factory=list)


@dataclass
class Denoise:
    canvases: torch.Tensor
    cache: list[int]  # the prompt and finished canvases the encoder has seen, as the decoder got them
    starts: list[int]
    self_conditioning: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass
class Stub:
    """``logits(calls, canvases)`` gives a decoder pass's logits (rows, canvas_length, VOCAB)."""

    logits: Callable[[int, torch.Tensor], torch.Tensor]
    canvas_length: int = 4
    sampling: GemmaSampling = field(default_factory=lambda: GemmaSampling(
        max_denoising_steps=3, stability_threshold=None, confidence_threshold=None))
    tokenizer: Any = field(default_factory=WordTokenizer)
    vocab_size: int = VOCAB
    max_context: int = 64
    eos_token_ids: frozenset[int] = frozenset({EOS})
    device: torch.device = torch.device("cpu")
    embedding_dtype: torch.dtype = torch.float32
    encoded: list[tuple[list[int], int]] = field(default_factory=list)  # (ids, start) of every encoder pass
    denoised: list[Denoise] = field(default_factory=list)

    def new_cache(self) -> Cache:
        return Cache([])

    def encode(self, ids: torch.Tensor, cache: Cache, start: int) -> Cache:
        self.encoded.append((ids[0].tolist(), start))
        return Cache(cache.ids + ids[0].tolist())

    def denoise(self, canvases, cache, starts, self_conditioning, mask=None):
        self.denoised.append(Denoise(canvases.clone(), list(cache.ids), list(starts), self_conditioning, mask))
        return self.logits(len(self.denoised), canvases)


def peaked(canvas: list[int | None], gap: float, rows: int = 1) -> torch.Tensor:
    """Logits (rows, len(canvas), VOCAB): position i leads with token ``canvas[i]`` by ``gap`` (None: flat)."""
    out = torch.zeros(rows, len(canvas), VOCAB)
    for i, token in enumerate(canvas):
        if token is not None:
            out[:, i, token] = gap
    return out
