"""Dream checkpoints (``DreamModel``, model_type ``Dream``) on the native bidirectional transformer.

Facts from the public modelling code (HKUNLP/Dream, as kept in NVlabs/Fast-dLLM
``dream/model/modeling_dream.py``): a Qwen2 stack (RMSNorm, RoPE, SwiGLU, biases on q/k/v only,
GQA) with no causal mask, weights under ``model.`` plus ``lm_head``; its logits are shifted: the
output at position i scores the token at i + 1 (the adapter realigns them, ``shift_logits``).
"""

from __future__ import annotations

from typing import Any

from dfast_serve.models.bidirectional import BidirectionalConfig
from dfast_serve.models.checkpoint import CheckpointFamily, key_renames

FAMILY = CheckpointFamily("Dream", "dream", architecture="DreamModel", model_type="Dream")
DEFAULT_MASK_ID = 151666

# the network's modules -> Dream's (Qwen2's names)
_TOP = {"embed": "model.embed_tokens", "norm": "model.norm"}
_LAYER = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
          **{p: f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
          **{p: f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}}


def renames(cfg: BidirectionalConfig) -> list[tuple[str, str]]:
    """Checkpoint key -> native name; a saved copy of a tied output layer is dropped."""
    head = [(r"lm_head\.weight", "" if cfg.tie_embeddings else "lm_head.weight")]
    return key_renames(_TOP, "model.layers.", _LAYER) + head


def network_config(raw: dict[str, Any], path: str = "config.json") -> BidirectionalConfig:
    """The native network's shape from Dream's config.json, or ``UnsupportedCheckpoint``."""
    FAMILY.check(raw, path)
    if raw.get("rope_scaling"):
        raise FAMILY.refuse(path, f"config.json sets rope_scaling={raw['rope_scaling']!r} (native: plain RoPE)")
    if raw.get("use_sliding_window"):
        raise FAMILY.refuse(path, "config.json sets use_sliding_window (native: full attention)")
    if raw.get("hidden_act", "silu") != "silu":
        raise FAMILY.refuse(path, f"config.json sets hidden_act={raw['hidden_act']!r} (native: silu)")
    heads = int(raw["num_attention_heads"])
    return BidirectionalConfig(
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        intermediate_size=int(raw["intermediate_size"]),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        qkv_bias=True,
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def mask_token_id(raw: dict[str, Any]) -> int:
    return int(raw.get("mask_token_id", DEFAULT_MASK_ID))


def max_context(raw: dict[str, Any]) -> int:
    return int(raw.get("max_position_embeddings") or 4096)
