"""The embedded masked-diffusion LM: the shared bidirectional transformer (``bidirectional.py``) at
a small size, with tied embeddings and as many key/value heads as query heads.

It is trained by ``scripts/train_tiny_mdlm.py`` on public-domain text with the MDLM/LLaDA
objective and shipped in ``dfast_serve/assets/tiny-mdlm``. It exists so the whole diffusion
path (tokenizer, masks, confidences, schedules) runs as a real dLLM's would; its text is not
coherent. Plain torch, no transformers model class, so loading it needs nothing from a hub.

The checkpoint keeps the layout it was trained in: each layer under ``blocks.N`` with fused
``qkv`` and ``gate_up`` projections (``out``, ``down`` for the others). ``native_names`` splits
and renames it onto the network's parameters when it loads; ``shipped_names`` is the inverse,
for ``save``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dfast_serve.models.bidirectional import BidirectionalConfig, BidirectionalLM

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# a shipped layer module -> the network's modules it holds (a fused one in equal parts, in this order)
LAYER_MODULES: dict[str, tuple[str, ...]] = {
    "attn_norm": ("attn_norm",), "qkv": ("q_proj", "k_proj", "v_proj"), "out": ("o_proj",),
    "mlp_norm": ("mlp_norm",), "gate_up": ("gate_proj", "up_proj"), "down": ("down_proj",),
}
_SHIPPED_LAYER_KEY = re.compile(r"blocks\.(\d+)\.(\w+)\.weight")


@dataclass
class TinyMDLMConfig:
    """config.json of the checkpoint: the network's shape and the tokenizer's special ids."""

    vocab_size: int
    mask_token_id: int
    eos_token_id: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 704
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def network(self) -> BidirectionalConfig:
        return BidirectionalConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_heads, intermediate_size=self.intermediate_size,
            rope_theta=self.rope_theta, norm_eps=self.norm_eps, tie_embeddings=True,
        )


def native_names(shipped: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The shipped state dict under the network's parameter names, fused projections split; a key
    of no known layout passes unchanged (and ``load_state_dict`` refuses it)."""
    state = {}
    for key, tensor in shipped.items():
        match = _SHIPPED_LAYER_KEY.fullmatch(key)
        parts = LAYER_MODULES.get(match.group(2), ()) if match else ()
        if not parts:
            state[key] = tensor  # embed.weight and norm.weight have the same names
            continue
        for part, chunk in zip(parts, tensor.chunk(len(parts))):
            state[f"layers.{match.group(1)}.{part}.weight"] = chunk
    return state


def shipped_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's state dict in the shipped layout: the inverse of ``native_names``."""
    shipped = {key: tensor for key, tensor in state.items() if not key.startswith("layers.")}
    for layer in sorted({int(key.split(".")[1]) for key in state if key.startswith("layers.")}):
        for module, parts in LAYER_MODULES.items():
            shipped[f"blocks.{layer}.{module}.weight"] = torch.cat([state[f"layers.{layer}.{p}.weight"] for p in parts])
    return shipped


def read_config(directory: Path) -> TinyMDLMConfig:
    return TinyMDLMConfig(**json.loads((Path(directory) / CONFIG_FILE).read_text()))


def load(directory: Path, cfg: TinyMDLMConfig, dtype: torch.dtype = torch.float32,
         device: str = "cpu") -> BidirectionalLM:
    """The network with the checkpoint's weights, every parameter filled and no key left over."""
    from safetensors.torch import load_file

    network = BidirectionalLM(cfg.network())
    network.load_state_dict(native_names(load_file(str(Path(directory) / WEIGHTS_FILE))))
    return network.to(device=device, dtype=dtype).eval()


def save(network: BidirectionalLM, cfg: TinyMDLMConfig, directory: Path) -> None:
    """config.json and the weights in bf16, in the shipped layout."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in shipped_names(network.state_dict()).items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=2))
