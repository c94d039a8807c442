"""The tiny random DiffusionGemma checkpoint the tests (and the CPU benchmarks) share, and a stub
model with forced logits.

transformers 5.24 needs a mixture-of-experts text config (a config without experts raises) and
must not use ``use_bidirectional_attention="all"`` (it crashes); the vision tower is required by
the model class, so it gets the smallest config that builds. The tokenizer is word-level over
the vocabulary (``tests/word_tokenizer.py``: "t<id>", with pad/EOS/BOS named). Random weights: the
text is noise and no token's entropy gets under the sampler's bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dfast_serve.models.diffusion_gemma import GemmaSampling
from tests.word_tokenizer import write_word_tokenizer

VOCAB, PAD_ID, EOS_ID, BOS_ID = 512, 0, 1, 2
SPECIAL = {PAD_ID: "<pad>", EOS_ID: "<eos>", BOS_ID: "<bos>"}
CANVAS, STEPS = 8, 6  # the tiny checkpoint's canvas length and denoising steps per canvas


def tiny_config(canvas_length: int = 8, **text: int) -> "DiffusionGemmaConfig":  # noqa: F821
    from transformers import DiffusionGemmaConfig

    text_config = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=32, num_experts=4,
                       top_k_experts=2, moe_intermediate_size=32, sliding_window=16,
                       layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
                       pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID)
    text_config.update(text)
    vision = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    return DiffusionGemmaConfig(text_config=text_config, vision_config=vision, canvas_length=canvas_length,
                                image_token_id=VOCAB - 1, boi_token_id=VOCAB - 3, eoi_token_id=VOCAB - 2)


def write_tokenizer(directory: Path, vocab: int = VOCAB) -> None:
    """The word-level tokenizer over ``vocab`` ids (a real-size random model needs all 262,144)."""
    write_word_tokenizer(directory, vocab, SPECIAL, unk_id=3, eos_token=SPECIAL[EOS_ID], pad_token=SPECIAL[PAD_ID],
                         bos_token=SPECIAL[BOS_ID])


def generation_config(max_denoising_steps: int) -> "DiffusionGemmaGenerationConfig":  # noqa: F821
    """transformers' default sampler settings, with ``max_denoising_steps`` per canvas and EOS set."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    return DiffusionGemmaGenerationConfig(
        max_denoising_steps=max_denoising_steps, sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1),
        t_min=0.4, t_max=0.8, stability_threshold=1, confidence_threshold=0.005, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID)


def write_tiny_checkpoint(directory: str | Path, canvas_length: int = 8, max_denoising_steps: int = 6,
                          seed: int = 0) -> Path:
    """config.json, generation_config.json (few denoising steps, EOS set), weights and tokenizer."""
    from transformers import DiffusionGemmaForBlockDiffusion

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(canvas_length)).eval()
    model.generation_config = generation_config(max_denoising_steps)
    model.save_pretrained(str(directory))
    write_tokenizer(directory)
    return directory


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
