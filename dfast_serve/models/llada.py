"""LLaDA checkpoints (``LLaDAModelLM``, model_type ``llada``) on the native bidirectional transformer.

Facts from the public modelling code (ML-GSAI/LLaDA, as kept in NVlabs/Fast-dLLM
``llada/model/modeling_llada.py``): an OLMo-derived Llama block (``block_type: llama``) with RMSNorm,
RoPE over all of ``d_model // n_heads``, SwiGLU as ``ff_out(silu(ff_proj(x)) * up_proj(x))`` and no
causal mask; weights under ``model.transformer``; untied ``ff_out`` unless ``weight_tying``. Options
of that code this one does not implement (ALiBi, LayerNorm, q/k norms, ...) refuse the checkpoint.
"""

from __future__ import annotations

from typing import Any

from dfast_serve.models.bidirectional import BidirectionalConfig
from dfast_serve.models.checkpoint import CheckpointFamily, key_renames

FAMILY = CheckpointFamily("LLaDA", "llada", architecture="LLaDAModelLM", model_type="llada",
                          block=" with a Llama block")
DEFAULT_MASK_ID = 126336
EXTRA_EOS_IDS = (126081, 126348)  # <|endoftext|>, <|eot_id|> of LLaDA's tokenizer

# the network's modules -> LLaDA's (``ff_out`` is the output layer at the top, the MLP's down projection in a block)
_TOP = {"embed": "model.transformer.wte", "norm": "model.transformer.ln_f", "lm_head": "model.transformer.ff_out"}
_LAYER = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "attn_out",
          "mlp_norm": "ff_norm", "gate_proj": "ff_proj", "up_proj": "up_proj", "down_proj": "ff_out"}


def renames(cfg: BidirectionalConfig) -> list[tuple[str, str]]:
    """Checkpoint key -> native name, the same for every LLaDA shape."""
    return key_renames(_TOP, "model.transformer.blocks.", _LAYER)


# config.json fields whose other values select code paths the native model does not have
# (value absent from config.json: LLaDA's own default).
_REQUIRED: dict[str, tuple[Any, Any]] = {  # field: (required value, LLaDA default)
    "block_type": ("llama", "sequential"),
    "activation_type": ("silu", "swiglu"),
    "layer_norm_type": ("rms", "default"),
    "rope": (True, False),
    "alibi": (False, False),
    "attention_layer_norm": (False, False),
    "include_bias": (False, False),
    "input_emb_norm": (False, False),
    "scale_logits": (False, False),
    "layer_norm_with_affine": (True, True),
    "block_group_size": (1, 1),
}


def network_config(raw: dict[str, Any], path: str = "config.json") -> BidirectionalConfig:
    """The native network's shape from LLaDA's config.json, or ``UnsupportedCheckpoint``."""
    FAMILY.check(raw, path)
    for name, (required, default) in _REQUIRED.items():
        if raw.get(name, default) != required:
            raise FAMILY.refuse(path, f"config.json sets {name}={raw.get(name, default)!r} (native: {required!r})")
    if raw.get("bias_for_layer_norm"):
        raise FAMILY.refuse(path, "config.json sets bias_for_layer_norm")
    heads = int(raw["n_heads"])
    kv_heads = raw.get("n_kv_heads")
    if raw.get("multi_query_attention"):
        kv_heads = 1
    d_model = int(raw["d_model"])
    return BidirectionalConfig(
        vocab_size=int(raw.get("embedding_size") or raw["vocab_size"]),
        hidden_size=d_model,
        num_layers=int(raw["n_layers"]),
        num_heads=heads,
        num_kv_heads=int(kv_heads or heads),
        intermediate_size=int(raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * d_model),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        qkv_bias=bool(raw.get("include_qkv_bias") or False),
        tie_embeddings=bool(raw.get("weight_tying", True)),
    )


def mask_token_id(raw: dict[str, Any]) -> int:
    return int(raw.get("mask_token_id") or DEFAULT_MASK_ID)


def max_context(raw: dict[str, Any]) -> int:
    return int(raw.get("max_sequence_length") or 4096)
