"""A bidirectional Llama-style transformer (RMSNorm, RoPE, SwiGLU, GQA, optional q/k/v biases) that
the native LLaDA and Dream loaders fill from their checkpoints' own key layouts.

It speaks the network interface the diffusion engine drives (the one ``TinyMDLM.forward`` defines):
a left-padded (batch, past + seq) ``attention_mask``, per-row ``position_ids``, cached per-layer
keys/values with RoPE already applied (``past_kv``) and the input's own keys/values back
(``return_kv``), so the engine can batch canvases of different lengths and use the block KV cache.
Attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU) with no
causal mask; GQA keys/values are cached with their own (fewer) heads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dfast_serve.models.tiny_mdlm import RMSNorm, apply_rotary, rotary_tables
from dfast_serve.wire.tensors import KeyValues

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class UnsupportedCheckpoint(ValueError):
    """A checkpoint whose config or weights the native code does not know; the message names the
    ``source`` option that loads it instead."""


@dataclass(frozen=True)
class BidirectionalConfig:
    vocab_size: int  # rows of the embedding and columns of the output layer (padded vocabularies included)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool = False
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class Layer(nn.Module):
    def __init__(self, cfg: BidirectionalConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kv_width = cfg.num_kv_heads * cfg.head_dim
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_width, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_width, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
        past: KeyValues | None,
    ) -> tuple[torch.Tensor, KeyValues]:
        b, s, _ = x.shape
        cfg = self.cfg
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, s, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, is_causal=False,
                                              enable_gqa=cfg.num_kv_heads != cfg.num_heads)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, s, cfg.num_heads * cfg.head_dim))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)), (k, v)


class BidirectionalLM(nn.Module):
    """Logits for every position, attending in both directions; see ``forward``."""

    def __init__(self, cfg: BidirectionalConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_kv: list[KeyValues] | None = None,
        return_kv: bool = False,
        logits_to_keep: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KeyValues]]:
        """Same contract as ``TinyMDLM.forward``: ``attention_mask`` (batch, past + seq), 1 = real key;
        ``position_ids`` (batch, seq), required with ``past_kv``; ``past_kv`` per layer (keys, values),
        each (batch, kv_heads, past, head_dim) with RoPE applied; ``return_kv`` adds the input's own.
        ``logits_to_keep``: logits of the last that many positions only (the output layer over a
        large vocabulary is the biggest tensor of a pass; the prompt's logits are never used)."""
        if position_ids is None:
            if past_kv is not None:
                raise ValueError("position_ids are required with past_kv")
            if attention_mask is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            else:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        attn_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        cos, sin = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta)
        x = self.embed(input_ids)
        kv: list[KeyValues] = []
        for i, layer in enumerate(self.layers):
            x, layer_kv = layer(x, cos, sin, attn_mask, None if past_kv is None else past_kv[i])
            kv.append(layer_kv)
        if logits_to_keep is not None:
            x = x[:, max(x.shape[1] - logits_to_keep, 0) :]
        x = self.norm(x)
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        return (logits, kv) if return_kv else logits


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


def load_bidirectional(
    directory: Path, cfg: BidirectionalConfig, renames: list[tuple[str, str]], family: str, remote_source: str,
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
        raise UnsupportedCheckpoint(
            f"{directory} is not in the {family} key layout the native code knows "
            f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unknown {unknown[:4]}{'...' if len(unknown) > 4 else ''}); use source: {remote_source} "
            f"to load it through its own remote code"
        )
    try:
        network.load_state_dict(state, assign=True)
    except RuntimeError as e:  # shapes that disagree with config.json
        raise UnsupportedCheckpoint(f"{directory}: weights do not fit its config.json ({e}); use source: "
                                    f"{remote_source} to load it through its own remote code") from e
    return network.eval()
