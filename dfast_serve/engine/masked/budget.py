"""How many forward passes a diffusion request may spend, and how its blocks share them.

* Standard path (LLaDA's semantics): ``steps`` passes (default: one per answer token) split evenly
  among the semi-autoregressive blocks, at least one each.
* Ultra-fast: every block may spend ``steps_per_block`` passes plus whatever earlier blocks left
  unspent, so a block's budget does not shrink when ``max_tokens`` (the number of blocks) grows:
  passes follow the answer, which usually ends in its first block. The request as a whole makes
  at most ``max_passes`` passes (``max_steps``, lowered by ``steps`` when given, never below
  ``min_steps``); the last of them decides everything left. It makes at least
  ``min(min_steps, max_tokens)`` passes unless the answer ends earlier (EOS or a stop string).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dfast_serve.wire.options import DiffusionOptions


@dataclass
class PassBudget:
    per_block: int
    min_passes: int = 0
    max_passes: int | None = None
    carry_forward: bool = False
    carried: int = 0  # passes earlier blocks left unspent

    @classmethod
    def for_request(cls, options: DiffusionOptions, gen_len: int) -> "PassBudget":
        if not options.ultra_fast:
            num_blocks = math.ceil(gen_len / options.block_length)
            return cls(per_block=max(1, (options.steps or gen_len) // num_blocks))
        cfg = options.ultra_fast_config
        cap = cfg.max_steps if options.steps is None else min(cfg.max_steps, options.steps)
        return cls(per_block=cfg.steps_per_block, min_passes=min(cfg.min_steps, gen_len),
                   max_passes=max(cfg.min_steps, cap), carry_forward=True)

    def block_allowance(self, passes_done: int) -> int:
        """Passes the block starting now may spend."""
        allowance = self.per_block + self.carried
        if self.max_passes is not None:
            allowance = min(allowance, self.max_passes - passes_done)
        return max(1, allowance)

    def end_block(self, allowance: int, used: int) -> None:
        if self.carry_forward:
            self.carried = max(0, allowance - used)

    def is_last_pass(self, pass_number: int) -> bool:
        """Whether pass ``pass_number`` (1-based) is the last the request may make."""
        return self.max_passes is not None and pass_number >= self.max_passes

    def passes_still_owed(self, passes_done: int) -> int:
        """Passes still needed to reach the lower bound."""
        return max(0, self.min_passes - passes_done)
