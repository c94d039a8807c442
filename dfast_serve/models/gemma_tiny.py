"""A tiny random DiffusionGemma checkpoint directory, for tests and CPU benchmarks.

transformers 5.24 needs a mixture-of-experts text config (a config without experts raises) and
must not use ``use_bidirectional_attention="all"`` (it crashes); the vision tower is required by
the model class, so it gets the smallest config that builds. The tokenizer is word-level over
the vocabulary ("t<id>", with pad/EOS/BOS named) with a chat template, saved as a tokenizer.json.
Random weights: the text is noise and no token's entropy gets under the sampler's bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB, PAD_ID, EOS_ID, BOS_ID = 512, 0, 1, 2
SPECIAL = {PAD_ID: "<pad>", EOS_ID: "<eos>", BOS_ID: "<bos>"}
CHAT_TEMPLATE = ("{% for m in messages %}t3 {{ m['content'] }} t4 {% endfor %}"
                 "{% if add_generation_prompt %}t5 {% endif %}")


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


def token(i: int) -> str:
    return SPECIAL.get(i, f"t{i}")


def write_tokenizer(directory: Path, vocab: int = VOCAB) -> None:
    """A word-level tokenizer.json over ``vocab`` ids (a real-size random model needs all 262,144)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({token(i): i for i in range(vocab)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": token(EOS_ID), "pad_token": token(PAD_ID),
              "bos_token": token(BOS_ID), "chat_template": CHAT_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


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
