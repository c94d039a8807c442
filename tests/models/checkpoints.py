"""The tiny LLaDA / Dream checkpoints of ``tests/models/data`` as full checkpoint directories.

``data/<family>`` holds what ``scripts/make_dllm_goldens.py`` wrote (config.json, bf16 weights in
the family's real key layout, golden logits of the public modelling code). A checkpoint directory
also needs a tokenizer; ``write_tokenizer`` adds a word-level one over the same 512 ids ("t<id>",
EOS and mask named), with a chat template, written as a tokenizer.json a fast tokenizer loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DATA = Path(__file__).parent / "data"
FAMILIES = ("llada", "dream")
EOS_ID, MASK_ID, VOCAB = 1, 500, 512
CHAT_TEMPLATE = ("{% for m in messages %}t3 {{ m['content'] }} t4 {% endfor %}"
                 "{% if add_generation_prompt %}t5 {% endif %}")


def golden(family: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / family / "golden.safetensors"))


def token(i: int) -> str:
    return {EOS_ID: "<|eos|>", MASK_ID: "<|mask|>"}.get(i, f"t{i}")


def write_tokenizer(directory: Path, remote_code_config: bool = False) -> None:
    """tokenizer.json + tokenizer_config.json; ``remote_code_config`` makes the config ask for a
    remote-code class (as Dream's own does) to exercise the fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({token(i): i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": token(EOS_ID), "mask_token": token(MASK_ID),
              "pad_token": token(EOS_ID), "chat_template": CHAT_TEMPLATE}
    if remote_code_config:
        config.update(tokenizer_class="DreamTokenizer",
                      auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def make_checkpoint(family: str, directory: Path, shards: int = 1, num_layers: int | None = None) -> Path:
    """A checkpoint directory of ``family``: the committed config and weights (split into ``shards``
    files with an index when > 1; cut to ``num_layers`` when given) plus a tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((DATA / family / "config.json").read_text())
    weights = load_file(str(DATA / family / "model.safetensors"))
    if num_layers is not None:
        layers_key = "n_layers" if family == "llada" else "num_hidden_layers"
        config[layers_key] = num_layers
        weights = {k: v for k, v in weights.items()
                   if (m := re.search(r"\.(?:blocks|layers)\.(\d+)\.", k)) is None or int(m.group(1)) < num_layers}
    (directory / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(weights, str(directory / "model.safetensors"))
    else:
        names = sorted(weights)
        weight_map = {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            save_file({n: weights[n] for n in part}, str(directory / shard))
            weight_map.update({n: shard for n in part})
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_tokenizer(directory, remote_code_config=family == "dream")
    return directory
