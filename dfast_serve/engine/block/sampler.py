"""DiffusionGemma's sampler as pure functions over one canvas: what is specific to uniform-noise diffusion.

One denoising step (``DiffusionGemmaSequence.advance``): the logits are divided by the linear
temperature schedule (``schedule_temperature``); a token is drawn for every position (the
denoiser canvas) and the argmax kept (the draft, and the output when the canvas ends); the
entropy-bound rule (``accept_by_entropy``) accepts the lowest-entropy tokens whose summed entropy,
minus the largest, stays under the bound (they are approximately independent), every other
position is renoised with a uniformly random token (``renoise``); the canvas ends at the step
budget or when the argmax canvas is stable and confident (``stable_and_confident``).
Acceptance is recomputed over the whole canvas at every step: an accepted token can be renoised
later, so in the standard mode a canvas's text is final only when it ends.

The ultra-fast policies (``leading_run``, ``held_and_sure``) pick the tokens that may be
committed (streamed, then frozen in the canvas) before the canvas ends.
"""

from __future__ import annotations

import torch


def schedule_temperature(step: int, steps: int, t_min: float, t_max: float) -> torch.Tensor:
    """The temperature of denoising step ``step`` (1-based) out of ``steps``: t_max at the first,
    falling linearly to t_min + (t_max - t_min)/steps at the last. Computed as transformers does
    (the remaining-step count as an int32 tensor), so that the tempered logits match bit for bit."""
    remaining = torch.tensor(steps - step + 1, dtype=torch.int32)
    return t_min + ((t_max - t_min) * (remaining / steps))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's categorical distribution."""
    return torch.distributions.Categorical(logits=logits, validate_args=False).entropy()


def accept_by_entropy(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """The positions the entropy-bound rule accepts: in ascending entropy, the longest run whose
    cumulative entropy minus its largest term stays within ``bound`` (always at least one)."""
    ordered, order = torch.sort(entropy, dim=-1)
    within = torch.cumsum(ordered, dim=-1) - ordered <= bound
    return torch.zeros_like(within).scatter(-1, order, within)


def renoise(canvas: torch.Tensor, keep: torch.Tensor, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """``canvas`` (1, length) with every position outside ``keep`` replaced by a uniformly random token."""
    noise = torch.randint(0, vocab_size, canvas.shape, generator=generator, device=canvas.device)
    return torch.where(keep, canvas, noise)


def is_stable(history: list[torch.Tensor], argmax: torch.Tensor, stability: int) -> bool:
    """The argmax canvas equals each of the last ``stability`` ones (``history``, oldest first; 0: always)."""
    return len(history) >= stability and all(torch.equal(past, argmax) for past in history[len(history) - stability:])


def stable_and_confident(history: list[torch.Tensor], argmax: torch.Tensor, stability: int | None,
                         mean_entropy: torch.Tensor, confidence: float | None) -> bool:
    """The model's own stop for a canvas: stable over ``stability`` steps and the mean entropy of the
    tempered logits under ``confidence`` (either None: the stop is off)."""
    if stability is None or confidence is None:
        return False
    return is_stable(history, argmax, stability) and bool(mean_entropy < confidence)


def leading_run(ready: torch.Tensor, cursor: int, limit: int) -> int:
    """How many positions from ``cursor`` (below ``limit``) are all ``ready``: the tokens that can
    be committed now and still stream in order."""
    if cursor >= limit:
        return 0
    return int(ready[cursor:limit].long().cumprod(0).sum())


def held_and_sure(held_for: torch.Tensor, entropy: torch.Tensor, hold_steps: int, bound: float) -> torch.Tensor:
    """Positions whose accepted token has been the same for ``hold_steps`` steps and whose entropy is
    under ``bound``: the early commit of ultra-fast."""
    return (held_for >= hold_steps) & (entropy < bound)
