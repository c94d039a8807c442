"""Step schedules: how many tokens of a block are committed at each denoising step."""

from __future__ import annotations


def uniform_schedule(num_tokens: int, steps: int) -> list[int]:
    """LLaDA's schedule: ``num_tokens`` spread evenly over ``steps``, the remainder on the first steps.

    ``steps`` is clamped to ``num_tokens`` so that no forward pass commits nothing.
    """
    if num_tokens <= 0:
        return []
    steps = max(1, min(steps, num_tokens))
    base, extra = divmod(num_tokens, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _doubling_with_cap(num_tokens: int, cap: int) -> list[int]:
    out, size, left = [], 1, num_tokens
    while left > 0:
        take = min(size, cap, left)
        out.append(take)
        left -= take
        size *= 2
    return out


def front_loaded_schedule(num_tokens: int, steps: int) -> list[int]:
    """Small steps first, doubling up to a cap: ``front_loaded_schedule(64, 8) == [1, 2, 4, 8, 16, 16, 16, 1]``.

    The first tokens are decided alone, when the model knows least, so they arrive after one
    cheap step and condition everything after them; later steps commit many tokens at once.
    The cap is the smallest power of two that fits the schedule in ``steps`` steps; when even
    uncapped doubling does not fit, the last step takes the rest (``(32, 4) -> [1, 2, 4, 25]``).
    """
    if num_tokens <= 0:
        return []
    steps = max(1, steps)
    cap = 1
    while cap <= num_tokens:
        schedule = _doubling_with_cap(num_tokens, cap)
        if len(schedule) <= steps:
            return schedule
        cap *= 2
    head = [2**i for i in range(steps - 1)]
    return head + [num_tokens - sum(head)]
