"""The bidirectional Llama-style transformer every masked-diffusion model here runs on: tiny-mdlm
(``tiny_mdlm.py``) and the native LLaDA and Dream code (``llada.py``, ``dream.py``, loaded by
``checkpoint.py``). RMSNorm, RoPE, SwiGLU, GQA, optional q/k/v biases, a tied or separate output
layer; each checkpoint layout is mapped onto this module's parameter names when it loads.

It speaks the network interface the diffusion engine drives: a left-padded (batch, past + seq)
``attention_mask``, per-row ``position_ids``, cached per-layer keys/values with RoPE already
applied (``past_kv``) and the input's own keys/values back (``return_kv``), so the engine can batch
canvases of different lengths and use the block KV cache. ``pieces`` is the same forward pass as a
generator that yields after each layer's keys/values and each block of ``rows`` input rows of a layer (and
of the output layer), so the engine can run a long pass a piece at a time between other requests' passes;
``forward`` runs it whole, in one block of rows. Attention is
``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU) with no causal
mask; GQA keys/values are cached with their own (fewer) heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfast_serve.models.pieces import Pieces, drive
from dfast_serve.wire.tensors import KeyValues


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (batch, 1, seq, head_dim) for the given absolute positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # (b, s, d/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


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
        return drive(self.pieces(x, cos, sin, attn_mask, past))

    def pieces(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
        past: KeyValues | None, rows: int | None = None,
    ) -> Pieces[tuple[torch.Tensor, KeyValues]]:
        """The layer, yielding after every row's keys/values, then after each block of ``rows`` rows
        (None: all at once): a row's queries, attention and MLP need only its own input and every key."""
        b, s, _ = x.shape
        cfg = self.cfg
        h = self.attn_norm(x)
        k = self.k_proj(h).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        k = apply_rotary(k, cos, sin)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        if rows is None or rows >= s:
            return self._rows(x, h, cos, sin, keys, values, attn_mask), (k, v)
        yield
        out = torch.empty_like(x)
        for start in range(0, s, rows):
            part = slice(start, start + rows)
            out[:, part] = self._rows(x[:, part], h[:, part], cos[:, :, part], sin[:, :, part], keys, values, attn_mask)
            yield
        return out, (k, v)

    def _rows(self, x: torch.Tensor, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """The layer's output for rows ``x`` (``h``: their normed input), attending to ``keys`` / ``values``."""
        b, s, _ = x.shape
        cfg = self.cfg
        q = apply_rotary(self.q_proj(h).view(b, s, cfg.num_heads, cfg.head_dim).transpose(1, 2), cos, sin)
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, is_causal=False,
                                              enable_gqa=cfg.num_kv_heads != cfg.num_heads)
        x = x + self.o_proj(attn.transpose(1, 2).reshape(b, s, cfg.num_heads * cfg.head_dim))
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


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
        """See ``pieces``: the same pass, whole."""
        return drive(self.pieces(None, input_ids, attention_mask, position_ids, past_kv, return_kv, logits_to_keep))

    def pieces(
        self,
        rows: int | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_kv: list[KeyValues] | None = None,
        return_kv: bool = False,
        logits_to_keep: int | None = None,
    ) -> Pieces[torch.Tensor | tuple[torch.Tensor, list[KeyValues]]]:
        """Logits (batch, seq, vocab); with ``return_kv`` also each layer's keys/values of the input.

        ``attention_mask`` marks the keys attended to (1) vs padding (0): shape (batch, seq), or
        (batch, past + seq) with ``past_kv``. ``past_kv`` (one (keys, values) pair per layer, each
        (batch, kv_heads, past, head_dim), as ``return_kv`` gives them) is context computed earlier:
        the input attends to it and to itself. Its keys carry their RoPE positions already and
        attention is bidirectional, so its order does not matter; the input's own positions must be
        given (``position_ids``) since they cannot be told from the mask. ``logits_to_keep``: logits
        of the last that many positions only (the output layer over a large vocabulary is the
        biggest tensor of a pass; the prompt's logits are never used)."""
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
            x, layer_kv = yield from layer.pieces(x, cos, sin, attn_mask, None if past_kv is None else past_kv[i], rows)
            kv.append(layer_kv)
        if logits_to_keep is not None:
            x = x[:, max(x.shape[1] - logits_to_keep, 0) :]
        x = self.norm(x)
        if rows is None or rows >= x.shape[1]:
            logits = self._output(x)
        else:
            parts = []
            for start in range(0, x.shape[1], rows):
                yield
                parts.append(self._output(x[:, start : start + rows]))
            logits = torch.cat(parts, dim=1)
        return (logits, kv) if return_kv else logits

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)

