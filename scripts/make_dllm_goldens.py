"""Write the tiny LLaDA / Dream checkpoints and the golden logits the native-model tests compare with.

The goldens come from each family's PUBLIC modelling code, run here and never committed:

    NVlabs/Fast-dLLM @ 24cc59e75f20a6384bae8c905965bb090b96388e
      llada/model/modeling_llada.py + configuration_llada.py  (LLaDA, modified from ML-GSAI/LLaDA)
      dream/model/modeling_dream.py + configuration_dream.py  (Dream, modified from HKUNLP/Dream)

    git clone https://github.com/NVlabs/Fast-dLLM /tmp/Fast-dLLM && git -C /tmp/Fast-dLLM checkout 24cc59e7
    pip install --target /tmp/pylib einops          # the LLaDA code imports it
    PYTHONPATH=/tmp/pylib:$PWD python scripts/make_dllm_goldens.py --public-code /tmp/Fast-dLLM

For each family it builds the public model from a tiny config.json with the real checkpoint's
fields (``auto_map`` included: the directory has no Python files, as the native loader expects), takes the parameter names and shapes of the public model's own state dict (so the
checkpoint has that family's real key layout), fills them with seeded random values rounded to
bf16 (as real checkpoints are stored), and runs the public forward in float32 on a fixed canvas of
prompt tokens and mask tokens. The scales are chosen so that the top-2 logit gap at every position
is far above float32 noise (the script prints the smallest). Written per family, under ``--out``:
``config.json``, ``model.safetensors`` (bf16), ``golden.safetensors`` (``input_ids``, float32 ``logits``
as the public code returns them: Dream's unshifted).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

PUBLIC_REPO = "NVlabs/Fast-dLLM"
PUBLIC_COMMIT = "24cc59e75f20a6384bae8c905965bb090b96388e"
VOCAB = 512
MASK_ID = 500
EOS_ID = 1

LLADA_CONFIG: dict[str, Any] = {  # the field set of LLaDA-8B-Instruct's config.json, tiny sizes
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"}, "alibi": False,
    "alibi_bias_max": 8.0, "attention_dropout": 0.0, "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False, "block_group_size": 1,
    "block_type": "llama", "d_model": 32, "embedding_dropout": 0.0, "embedding_size": VOCAB, "eos_token_id": EOS_ID,
    "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_fn": "mitchell",
    "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
    "mask_token_id": MASK_ID, "max_sequence_length": 1024, "mlp_hidden_size": 64, "mlp_ratio": 4,
    "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "pad_token_id": EOS_ID,
    "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True,
    "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "use_cache": False,
    "vocab_size": VOCAB, "weight_tying": False,
}
DREAM_CONFIG: dict[str, Any] = {  # the field set of Dream-v0-Instruct-7B's config.json, tiny sizes (GQA 4/2)
    "architectures": ["DreamModel"], "model_type": "Dream", "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}, "bos_token_id": 2,
    "eos_token_id": EOS_ID, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
    "intermediate_size": 64, "mask_token_id": MASK_ID, "max_position_embeddings": 1024, "max_window_layers": 2,
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": EOS_ID,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": False, "use_sliding_window": False,
    "vocab_size": VOCAB,
}


def public_model(family: str, config: dict[str, Any]) -> torch.nn.Module:
    if family == "llada":
        from llada.model.configuration_llada import LLaDAConfig
        from llada.model.modeling_llada import LLaDAModelLM

        return LLaDAModelLM(LLaDAConfig(**config), init_params=False).float().eval()
    from dream.model.configuration_dream import DreamConfig
    from dream.model.modeling_dream import DreamModel

    _default_rope_for_transformers_5()

    return DreamModel(DreamConfig(**config)).float().eval()


def _default_rope_for_transformers_5() -> None:
    """Dream's code looks up ``ROPE_INIT_FUNCTIONS["default"]``, which transformers 5 dropped; put
    back the plain RoPE frequencies it stood for (1 / theta^(2i/d), attention scaling 1)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def default(config: Any, device: Any = None, **_: Any) -> tuple[torch.Tensor, float]:
        dim = config.hidden_size // config.num_attention_heads
        return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim)), 1.0

    ROPE_INIT_FUNCTIONS.setdefault("default", default)


def random_weights(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter of the public model's state dict, seeded, bf16-rounded; norms near 1, linear
    maps scaled by 1/sqrt(fan_in), the output layer by 6/sqrt(hidden) so the logits spread wide."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in sorted(model.state_dict().items()):
        if "norm" in name or name.endswith("ln_f.weight"):
            t = 1.0 + 0.1 * torch.randn(ref.shape, generator=gen)
        elif name.endswith("bias"):
            t = 0.3 * torch.randn(ref.shape, generator=gen)
        elif "wte" in name or "embed_tokens" in name:
            t = torch.randn(ref.shape, generator=gen)
        elif name in ("model.transformer.ff_out.weight", "lm_head.weight"):
            t = 6.0 * torch.randn(ref.shape, generator=gen) / math.sqrt(ref.shape[1])
        else:
            t = torch.randn(ref.shape, generator=gen) / math.sqrt(ref.shape[1])
        out[name] = t.to(torch.bfloat16)
    return out


def golden_input(seed: int) -> torch.Tensor:
    """A canvas: 12 prompt tokens, then 20 answer positions, some decided, most still masks."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, MASK_ID, (32,), generator=gen)
    answer = ids[12:]
    answer[torch.rand(20, generator=gen) < 0.7] = MASK_ID
    return ids[None]


def make(family: str, out: Path, seed: int) -> float:
    from safetensors.torch import save_file

    config = LLADA_CONFIG if family == "llada" else DREAM_CONFIG
    model = public_model(family, config)
    weights = random_weights(model, seed)
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    ids = golden_input(seed + 1)
    with torch.no_grad():
        logits = model(ids, use_cache=False, return_dict=True).logits.float()  # both explicit: transformers 5 configs lack the defaults
    top2 = logits.topk(2, dim=-1).values
    min_gap = float((top2[..., 0] - top2[..., 1]).min())
    directory = out / family
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(directory / "model.safetensors"))
    meta = {"public_code": f"{PUBLIC_REPO}@{PUBLIC_COMMIT}", "seed": str(seed), "min_top2_gap": f"{min_gap:.4f}"}
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous()}, str(directory / "golden.safetensors"),
              metadata=meta)
    return min_gap


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--public-code", required=True, help=f"a checkout of {PUBLIC_REPO} at {PUBLIC_COMMIT[:8]}")
    ap.add_argument("--out", default="tests/models/data")
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(args.public_code).resolve()))
    for family in ("llada", "dream"):
        gap = make(family, Path(args.out), args.seed)
        print(f"{family}: wrote {Path(args.out) / family}; smallest top-2 logit gap {gap:.4f}")


if __name__ == "__main__":
    main()
