"""A LLaDA or Dream checkpoint into the bidirectional network (``bidirectional.py``): the family a
config.json must declare, and the weights renamed key by key from the family's layout.

Anything the native code does not know (another architecture, an option it lacks, a key or shape it
does not expect) is refused with ``UnsupportedCheckpoint``, whose message names the family's
``*-remote`` source: the checkpoint's own remote code loads it instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from dfast_serve.models.bidirectional import BidirectionalConfig, BidirectionalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class UnsupportedCheckpoint(ValueError):
    """A checkpoint whose config or weights the native code does not know; the message names the
    ``source`` option that loads it instead."""


@dataclass(frozen=True)
class CheckpointFamily:
    """One family the native code loads: what its config.json declares, and the refusals that name
    the family's remote-code source."""

    name: str  # as people write it: "LLaDA"
    source: str  # the ``source`` option of the native code: "llada"
    architecture: str  # config.json ``architectures`` (a one-item list)
    model_type: str  # config.json ``model_type``
    block: str = ""  # what else the native code requires, for the refusal: " with a Llama block"

    @property
    def remote_source(self) -> str:
        return f"{self.source}-remote"

    def refuse(self, path: str, why: str) -> UnsupportedCheckpoint:
        return UnsupportedCheckpoint(
            f"{path}: {why}; the native {self.name} code (source: {self.source}) knows {self.architecture} / "
            f"model_type {self.model_type!r}{self.block}. Use source: {self.remote_source} to load it through "
            f"its own remote code"
        )

    def check(self, raw: dict[str, Any], path: str) -> None:
        """Refuse a config.json (``raw``) that declares another architecture or model type."""
        architectures = raw.get("architectures", [self.architecture])
        if raw.get("model_type") != self.model_type or architectures != [self.architecture]:
            raise self.refuse(path, f"config.json declares architectures {raw.get('architectures')} / model_type "
                                    f"{raw.get('model_type')!r}")


def weight_files(directory: Path) -> list[Path]:
    """``model.safetensors``, or the shards a ``model.safetensors.index.json`` names."""
    if (directory / INDEX_FILE).exists():
        shards = sorted(set(json.loads((directory / INDEX_FILE).read_text())["weight_map"].values()))
        return [directory / s for s in shards]
    if (directory / SINGLE_FILE).exists():
        return [directory / SINGLE_FILE]
    raise UnsupportedCheckpoint(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def read_tensors(directory: Path, device: str, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint, one at a time, on ``device`` in ``dtype``."""
    from safetensors import safe_open

    for path in weight_files(directory):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name).to(device=device, dtype=dtype)


def key_renames(top: dict[str, str], layer_prefix: str, layer: dict[str, str]) -> list[tuple[str, str]]:
    """``load_bidirectional``'s renames for a layout given module by module: ``top`` maps the network's
    top-level modules to the checkpoint's, ``layer`` does the same within a layer, whose checkpoint
    modules sit under ``layer_prefix`` followed by the layer's index. Weights and biases alike."""
    pairs = [(re.escape(theirs) + r"\.(weight|bias)", ours + r".\1") for ours, theirs in top.items()]
    prefix = re.escape(layer_prefix) + r"(\d+)\."
    return pairs + [(prefix + re.escape(theirs) + r"\.(weight|bias)", f"layers.\\1.{ours}.\\2")
                    for ours, theirs in layer.items()]


def load_bidirectional(
    directory: Path, cfg: BidirectionalConfig, renames: list[tuple[str, str]], family: CheckpointFamily,
    device: str = "cpu", dtype: torch.dtype = torch.float32,
) -> BidirectionalLM:
    """Build the network on the meta device, then fill it from the checkpoint, each key renamed by
    the first ``(pattern, replacement)`` of ``renames`` that matches it in full (an empty replacement
    drops it). A key no pattern knows, a parameter left unfilled or a shape the config does not
    predict refuses the checkpoint."""
    with torch.device("meta"):
        network = BidirectionalLM(cfg)
    expected = set(network.state_dict())
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in read_tensors(directory, device, dtype):
        target = next((re.sub(f"^{p}$", r, name) for p, r in renames if re.fullmatch(p, name)), None)
        if target == "":
            continue  # a copy the layout ignores (e.g. a saved tied output layer)
        if target is None or target not in expected:
            unknown.append(name)
        else:
            state[target] = tensor
    missing = sorted(expected - set(state))
    if missing or unknown:
        raise family.refuse(str(directory), f"the weights are not in the key layout the native code knows "
                                            f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                                            f"unknown {unknown[:4]}{'...' if len(unknown) > 4 else ''})")
    try:
        network.load_state_dict(state, assign=True)
    except RuntimeError as e:  # shapes that disagree with config.json
        raise family.refuse(str(directory), f"the weights do not fit its config.json ({e})") from e
    return network.eval()
