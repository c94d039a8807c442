"""Block-wise approximate KV cache for masked diffusion (Fast-dLLM's prefix and dual cache).

A bidirectional model recomputes every position at every step, yet within one semi-autoregressive
block only the block's tokens change. So the first step of a block runs one full forward pass over
the canvas and keeps each layer's keys/values; the block's later steps compute only

* ``prefix``: the block and everything after it, attending to the cached prompt + decided prefix;
* ``dual``: the block alone, attending to the cached prefix and the cached (masked) suffix.

It is approximate: from the second layer on, a cached position's keys/values depend on the whole
canvas, which changes as the block is decided, and the cache keeps the values of the block's first
step. It is exact where nothing the cached positions see has changed: the first step of every
block (a full pass), and a one-layer model (its keys/values are functions of the token and its
position alone). The cache is rebuilt when the block moves on and, for ``dual``, when a token after
the block is decided (the ultra-fast first reveal and early stop may decide there).

A model with shifted logits (Dream: the output at position i scores token i + 1) needs the position
before the block to score the block's first token, so its cache keeps one position less (``lead``):
the slice starts one position early and that position is recomputed with the block.

Keys carry their RoPE rotation from the pass that computed them, and attention is bidirectional,
so cached context can be handed to the model in any order: prefix and suffix are kept as one
tensor per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dfast_serve.engine.batching import left_pad

from dfast_serve.wire.tensors import KeyValues


@dataclass
class ForwardPlan:
    """One sequence's share of a forward pass: the canvas slice ``[start, end)`` it computes,
    the cached keys/values that slice also attends to, and whether the pass's keys/values are kept."""

    start: int
    end: int
    context: list[KeyValues] | None = None  # per layer, (heads, n, head_dim)
    refresh: bool = False

    @property
    def tokens(self) -> int:
        """Canvas tokens the pass computes for this sequence."""
        return self.end - self.start

    @property
    def context_len(self) -> int:
        return 0 if self.context is None else self.context[0][0].shape[1]


@dataclass
class BlockCache:
    """One sequence's cache: each layer's keys/values outside the block it was built for."""

    dual: bool
    lead: int = 0  # positions before the block recomputed with it (1 for shifted logits)
    context: list[KeyValues] = field(default_factory=list)
    built_for: tuple[int, int] | None = None  # (block index, tokens decided after the block) at build time

    def plan(self, prompt_len: int, canvas_len: int, block: tuple[int, int], key: tuple[int, int]) -> ForwardPlan:
        """``block`` is the current block's answer range; ``key`` says what the cache must have been built for."""
        if self.built_for != self._key(key):
            return ForwardPlan(0, canvas_len, refresh=True)
        start = max(prompt_len + block[0] - self.lead, 0)
        end = prompt_len + block[1] if self.dual else canvas_len
        return ForwardPlan(start, end, self.context)

    def store(self, kv: list[KeyValues], prompt_len: int, block: tuple[int, int], key: tuple[int, int]) -> None:
        """Keep a full pass's keys/values (per layer, (heads, canvas, head_dim)) outside the block (and its lead)."""
        start = max(prompt_len + block[0] - self.lead, 0)
        end = prompt_len + block[1]
        if self.dual:
            self.context = [(torch.cat([k[:, :start], k[:, end:]], 1), torch.cat([v[:, :start], v[:, end:]], 1)) for k, v in kv]
        else:
            self.context = [(k[:, :start].clone(), v[:, :start].clone()) for k, v in kv]
        self.built_for = self._key(key)

    def _key(self, key: tuple[int, int]) -> tuple[int, int]:
        # The prefix cache recomputes the suffix at every step: decisions there do not stale it.
        return key if self.dual else (key[0], 0)


def stack_contexts(contexts: list[list[KeyValues] | None]) -> tuple[list[KeyValues] | None, torch.Tensor | None]:
    """Several sequences' cached contexts as one batch: per layer, keys and values left-padded to the
    longest (a sequence without a cache contributes none), and the (batch, longest) mask of real entries."""
    reference = next((c for c in contexts if c is not None), None)
    if reference is None:
        return None, None
    past, mask = [], None
    for layer, (ref_keys, _) in enumerate(reference):
        empty = ref_keys[:, :0]
        keys, mask = left_pad([c[layer][0] if c else empty for c in contexts], dim=1)
        values, _ = left_pad([c[layer][1] if c else empty for c in contexts], dim=1)
        past.append((keys, values))
    return past, mask
