"""The tiny LLaDA / Dream checkpoints of ``tests/models/data`` as full checkpoint directories.

``data/<family>`` holds what ``scripts/make_dllm_goldens.py`` wrote (config.json, bf16 weights in
the family's real key layout, golden logits of the public modelling code). A checkpoint directory
also needs a tokenizer; ``write_tokenizer`` adds the word-level one of ``tests/word_tokenizer.py``
over the same 512 ids, with EOS and mask named.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.word_tokenizer import write_word_tokenizer

DATA = Path(__file__).parent / "data"
FAMILIES = ("llada", "dream")
EOS_ID, MASK_ID, VOCAB = 1, 500, 512
NAMES = {EOS_ID: "<|eos|>", MASK_ID: "<|mask|>"}


def golden(family: str) -> dict[str, torch.Tensor]:
    return load_file(str(DATA / family / "golden.safetensors"))


def write_tokenizer(directory: Path, remote_code_config: bool = False) -> None:
    """tokenizer.json + tokenizer_config.json; ``remote_code_config`` makes the config ask for a
    remote-code class (as Dream's own does) to exercise the fallback."""
    remote = {"tokenizer_class": "DreamTokenizer",
              "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}} if remote_code_config else {}
    write_word_tokenizer(directory, VOCAB, NAMES, unk_id=0, eos_token=NAMES[EOS_ID], mask_token=NAMES[MASK_ID],
                         pad_token=NAMES[EOS_ID], **remote)


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
