"""Model adapters: what an engine needs to know about a model, and nothing else.

A diffusion adapter declares its mask token, EOS ids, whether its logits are shifted one
position (Dream predicts token i+1 at position i) and its tokenizer (which carries the chat
template). An AR adapter wraps a Hugging Face causal LM. Hub checkpoints (LLaDA, Dream, any
causal LM) load through the real transformers path from a local directory or a hub id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from dfast_serve.models.causal_lm import CausalLM
from dfast_serve.models.pieces import Pieces
from dfast_serve.models.tokenizing import Tokenizing
from dfast_serve.wire.tensors import KeyValues

DiffusionKind = Literal["llada", "dream", "tiny-mdlm"]  # the family; native and remote-code loads share it

LLADA_MASK_ID = 126336
LLADA_EOS_IDS = (126081, 126348)  # <|endoftext|>, <|eot_id|>


@dataclass
class DiffusionLM(Tokenizing):
    """A masked-diffusion LM: ``logits(ids)[b, i]`` scores the token at position i.

    Two capability flags tell the engine what the network's forward can do beyond ``network(ids)``:

    * ``padded_batches``: it honours a (batch, seq) ``attention_mask`` and ``position_ids``, so
      canvases of different lengths can share a forward pass, left-padded. The embedded tiny-mdlm
      and the native LLaDA / Dream code (``models/native.py``) do. LLaDA's released remote code
      ignores ``attention_mask`` (ML-GSAI/LLaDA#89) and Dream's expects its own 4-D mask, untested
      here: through them (``source: llada-remote`` / ``dream-remote``) the engine batches only
      canvases of equal length, which need no padding.
    * ``kv_cache``: it takes ``past_kv`` / ``return_kv`` as ``BidirectionalLM.forward`` does (the
      block-wise approximate cache). tiny-mdlm and the native LLaDA / Dream code. LLaDA's released
      remote code refuses a cache (``assert past_key_values is None and not use_cache``): with the
      remote code the engine runs without a cache whatever the request asks.
    """

    network: nn.Module = field(default=None)  # type: ignore[assignment]
    name: str = "diffusion"
    kind: DiffusionKind = "tiny-mdlm"
    mask_token_id: int = 0
    eos_token_ids: frozenset[int] = frozenset()
    shift_logits: bool = False
    max_context: int = 4096
    padded_batches: bool = False
    kv_cache: bool = False
    trims_logits: bool = False  # the network takes ``logits_to_keep`` (native LLaDA / Dream)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def pieced(self) -> bool:
        """Whether its forward pass can run in pieces (``logits_pieces``): the network is ``BidirectionalLM``
        (tiny-mdlm, native LLaDA / Dream), not hub remote code."""
        return callable(getattr(self.network, "pieces", None))

    @torch.no_grad()
    def logits_pieces(self, rows: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, past_kv: list[KeyValues] | None = None,
                      keep: int | None = None, return_kv: bool = False
                      ) -> Pieces[tuple[torch.Tensor, list[KeyValues] | None]]:
        """``logits`` or (``return_kv``) ``logits_and_kv`` as pieces of at most ``rows`` rows of a layer (needs
        ``pieced``); returns (logits, keys/values or None)."""
        out = yield from self.network.pieces(rows, input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                             past_kv=past_kv, return_kv=return_kv, **self._keep(keep))
        logits, kv = out if return_kv else (out, None)
        return self._trimmed(self._aligned(logits), keep), kv

    @torch.no_grad()
    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """Logits (batch, seq, vocab), aligned so that index i scores token i. ``keep``: only the last
        ``keep`` positions are needed (a network with ``trims_logits`` then computes only those)."""
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, **self._keep(keep)}
        out = self.network(input_ids, **{k: v for k, v in kwargs.items() if v is not None})
        return self._trimmed(self._aligned(out.logits if hasattr(out, "logits") else out), keep)

    @torch.no_grad()
    def logits_and_kv(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        past_kv: list[KeyValues] | None = None, keep: int | None = None,
    ) -> tuple[torch.Tensor, list[KeyValues]]:
        """Logits plus each layer's keys/values of ``input_ids``, attending also to ``past_kv`` (needs ``kv_cache``)."""
        if not self.kv_cache:
            raise NotImplementedError(f"{self.name} ({self.kind}) has no KV cache support")
        logits, kv = self.network(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  past_kv=past_kv, return_kv=True, **self._keep(keep))
        return self._trimmed(self._aligned(logits), keep), kv

    def _keep(self, keep: int | None) -> dict[str, int]:
        # Shifted logits need the position before the first one kept.
        return {} if keep is None or not self.trims_logits else {"logits_to_keep": keep + int(self.shift_logits)}

    def _trimmed(self, logits: torch.Tensor, keep: int | None) -> torch.Tensor:
        return logits[:, max(logits.shape[1] - keep, 0) :] if keep is not None and self.trims_logits else logits

    def _aligned(self, logits: torch.Tensor) -> torch.Tensor:
        if self.shift_logits:
            # Dream: position i predicts token i+1; realign so index i scores token i. The first
            # index is left with its own logits: a sliced (cached) pass starts one position early
            # (``BlockCache.lead``) so that the slice's first answer position is scored.
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


def _eos_ids(tokenizer: Any, config: Any, extra: tuple[int, ...] = ()) -> frozenset[int]:
    ids = set(extra)
    for source in (getattr(config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return frozenset(ids)


def _dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def wrap_llada(network: nn.Module, tokenizer: Any, name: str = "llada") -> DiffusionLM:
    mask_id = getattr(network.config, "mask_token_id", None) or LLADA_MASK_ID
    return DiffusionLM(
        tokenizer=tokenizer, network=network, name=name, kind="llada", mask_token_id=int(mask_id),
        eos_token_ids=_eos_ids(tokenizer, network.config, LLADA_EOS_IDS), shift_logits=False,
        max_context=int(getattr(network.config, "max_sequence_length", 4096) or 4096),
    )


def wrap_dream(network: nn.Module, tokenizer: Any, name: str = "dream") -> DiffusionLM:
    mask_id = getattr(network.config, "mask_token_id", None)
    if mask_id is None:
        mask_id = tokenizer.mask_token_id
    return DiffusionLM(
        tokenizer=tokenizer, network=network, name=name, kind="dream", mask_token_id=int(mask_id),
        eos_token_ids=_eos_ids(tokenizer, network.config), shift_logits=True,
        max_context=int(getattr(network.config, "max_position_embeddings", 4096) or 4096),
    )


def load_hub_diffusion(
    path: str, kind: DiffusionKind, name: str, device: str = "cpu", dtype: str = "bfloat16",
    revision: str | None = None,
) -> DiffusionLM:
    """LLaDA / Dream checkpoints, as their model cards load them (remote code, ``AutoModel``), at the hub
    commit ``revision`` (the config requires one for a hub id: the code it pins is what runs here)."""
    from transformers import AutoModel, AutoTokenizer

    pinned = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True, **pinned)
    network = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=_dtype(dtype), **pinned).to(device).eval()
    return (wrap_llada if kind == "llada" else wrap_dream)(network, tokenizer, name)


def load_causal_lm(path: str, name: str, device: str = "cpu", dtype: str = "bfloat16",
                   revision: str | None = None) -> CausalLM:
    """Any Hugging Face causal LM directory or hub id (at ``revision`` when given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pinned = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **pinned)
    network = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype), **pinned).to(device).eval()
    return CausalLM(
        tokenizer=tokenizer, network=network, name=name, eos_token_ids=_eos_ids(tokenizer, network.config),
        max_context=int(getattr(network.config, "max_position_embeddings", 2048) or 2048),
    )
