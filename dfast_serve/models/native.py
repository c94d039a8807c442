"""Load a LLaDA or Dream checkpoint directory on the native code: config.json + safetensors
(sharded too), the tokenizer and its chat template, with no ``trust_remote_code`` anywhere.

The result is a ``DiffusionLM`` with ``padded_batches`` and ``kv_cache`` on: the engine batches
canvases of different lengths and runs the block KV cache on it, as it does for tiny-mdlm.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from dfast_serve.models import dream, llada
from dfast_serve.models.adapters import DiffusionLM, _dtype, _eos_ids
from dfast_serve.models.checkpoint import UnsupportedCheckpoint, load_bidirectional

NativeFamily = Literal["llada", "dream"]
FAMILIES: dict[str, ModuleType] = {"llada": llada, "dream": dream}
# A tokenizer whose config asks for remote code loads with this class instead when its files are
# there: Dream's DreamTokenizer is Qwen2's byte-level BPE (vocab.json + merges.txt).
TOKENIZER_STAND_INS = {"DreamTokenizer": "Qwen2Tokenizer"}


def checkpoint_directory(path: str) -> Path:
    """A local directory as is; anything else is taken for a hub id and its config, weights and
    tokenizer files (no Python files) are fetched into the hub cache."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]
    return Path(snapshot_download(path, allow_patterns=patterns))


def read_config(directory: Path, remote_source: str) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.exists():
        raise UnsupportedCheckpoint(f"{directory} has no config.json; use source: {remote_source} for a hub id "
                                    f"its remote code resolves")
    return json.loads(path.read_text())


def load_tokenizer(directory: Path, remote_source: str) -> Any:
    """The checkpoint's tokenizer (and chat template) without remote code: ``AutoTokenizer`` when the
    tokenizer config names a class; ``tokenizer.json`` as a fast tokenizer when it names none (so
    that a remote-code ``config.json`` is never consulted) or asks for remote code; for a remote-code
    class with a known stand-in (``TOKENIZER_STAND_INS``), that class; otherwise a clear error."""
    import transformers

    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    has_json = (directory / "tokenizer.json").exists()
    wants_remote = "AutoTokenizer" in config.get("auto_map", {})
    stand_in = TOKENIZER_STAND_INS.get(config.get("tokenizer_class", ""))
    if wants_remote and stand_in and (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        return getattr(transformers, stand_in).from_pretrained(str(directory))
    if has_json and (wants_remote or not config.get("tokenizer_class")):
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    if not wants_remote:
        try:
            return transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        except ValueError as e:
            if "trust_remote_code" not in str(e):
                raise
    raise UnsupportedCheckpoint(
        f"{directory}: the tokenizer needs remote code ({config.get('tokenizer_class')}) and there is no "
        f"tokenizer.json or known stand-in; add a tokenizer.json, or use source: {remote_source}"
    )


def load_native_diffusion(
    path: str, family: NativeFamily, name: str, device: str = "cpu", dtype: str = "float32"
) -> DiffusionLM:
    """A LLaDA or Dream checkpoint on the native code; ``UnsupportedCheckpoint`` names the
    ``*-remote`` source for layouts it does not know."""
    spec = FAMILIES[family]
    directory = checkpoint_directory(path)
    raw = read_config(directory, spec.FAMILY.remote_source)
    cfg = spec.network_config(raw, str(directory / "config.json"))
    network = load_bidirectional(directory, cfg, spec.renames(cfg), spec.FAMILY, device, _dtype(dtype))
    return wrap_native(network, load_tokenizer(directory, spec.FAMILY.remote_source), raw, family, name)


def wrap_native(network: torch.nn.Module, tokenizer: Any, raw: dict[str, Any], family: NativeFamily,
                name: str) -> DiffusionLM:
    """The adapter for a native network: LLaDA scores token i at position i, Dream at i - 1."""
    spec = FAMILIES[family]
    extra = llada.EXTRA_EOS_IDS if family == "llada" else ()
    eos = _eos_ids(tokenizer, type("Config", (), {"eos_token_id": raw.get("eos_token_id")})(), extra)
    return DiffusionLM(
        tokenizer=tokenizer, network=network, name=name, kind=family, mask_token_id=spec.mask_token_id(raw),
        eos_token_ids=eos, shift_logits=family == "dream", max_context=spec.max_context(raw),
        padded_batches=True, kv_cache=True, trims_logits=True,
    )
