"""The embedded masked-diffusion LM: a small bidirectional transformer (RoPE, SwiGLU, RMSNorm).

It is trained by ``scripts/train_tiny_mdlm.py`` on public-domain text with the MDLM/LLaDA
objective and shipped in ``dfast_serve/assets/tiny-mdlm``. It exists so the whole diffusion
path (tokenizer, masks, confidences, schedules) runs as a real dLLM's would; its text is not
coherent. Plain torch, no transformers model class, so loading it needs nothing from a hub.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfast_serve.wire.tensors import KeyValues

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class TinyMDLMConfig:
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


class Block(nn.Module):
    def __init__(self, cfg: TinyMDLMConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: torch.Tensor | None,
        past: KeyValues | None = None,
    ) -> tuple[torch.Tensor, KeyValues]:
        """The block's output and the input's own keys/values (RoPE applied); ``past`` is attended to as well."""
        b, s, h = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, is_causal=False)
        x = x + self.out(attn.transpose(1, 2).reshape(b, s, h))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up), (k, v)


class TinyMDLM(nn.Module):
    """Bidirectional transformer that predicts the original token at every position."""

    def __init__(self, cfg: TinyMDLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_kv: list[KeyValues] | None = None,
        return_kv: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KeyValues]]:
        """Logits (batch, seq, vocab); with ``return_kv`` also each layer's keys/values of the input.

        ``attention_mask`` marks the keys attended to (1) vs padding (0): shape (batch, seq), or
        (batch, past + seq) with ``past_kv``. ``past_kv`` (one (keys, values) pair per layer, each
        (batch, heads, past, head_dim), as ``return_kv`` gives them) is context computed earlier:
        the input attends to it and to itself. Its keys carry their RoPE positions already and
        attention is bidirectional, so its order does not matter; the input's own positions must be
        given (``position_ids``) since they cannot be told from the mask.
        """
        if position_ids is None:
            if past_kv is not None:
                raise ValueError("position_ids are required with past_kv")
            if attention_mask is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            else:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        attn_mask = None
        if attention_mask is not None:
            attn_mask = attention_mask.bool()[:, None, None, :]
        cos, sin = rotary_tables(position_ids, self.config.hidden_size // self.config.num_heads, self.config.rope_theta)
        x = self.embed(input_ids)
        kv = []
        for i, block in enumerate(self.blocks):
            x, layer_kv = block(x, cos, sin, attn_mask, None if past_kv is None else past_kv[i])
            kv.append(layer_kv)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied embeddings
        return (logits, kv) if return_kv else logits

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> "TinyMDLM":
        from safetensors.torch import load_file

        cfg = TinyMDLMConfig(**json.loads((Path(directory) / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
        return model.to(device=device, dtype=dtype).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mdlm_loss(model: TinyMDLM, tokens: torch.Tensor, loss_mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """MDLM/LLaDA objective: mask a fraction t~U(eps,1) of the maskable tokens, CE on masked ones weighted 1/t.

    ``loss_mask`` marks positions that may be masked (answer tokens); the rest (prompt) stay visible.
    """
    b, s = tokens.shape
    eps = 1e-3
    t = torch.rand(b, 1, generator=generator) * (1 - eps) + eps
    masked = (torch.rand(b, s, generator=generator) < t) & loss_mask
    noisy = torch.where(masked, torch.full_like(tokens, model.config.mask_token_id), tokens)
    logits = model(noisy)
    ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tokens.view(-1), reduction="none").view(b, s)
    return (ce * masked / t).sum() / loss_mask.sum().clamp(min=1)
