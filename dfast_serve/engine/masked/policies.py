"""Commit policies of the diffusion scheduler: which undecided answer positions a step decides.

Each is a pure function of boolean masks and scores over the answer positions (1-D tensors of
length ``max_tokens``) and plain numbers; none reads the detokenizer or any text. Progress is
judged by the *cursor*, the first undecided answer position (everything before it is decided and
can stream), so a stop string or half a UTF-8 character can never change what gets decided.

``DiffusionSequence`` (``masked/sequence.py``) combines them: the standard path uses ``scheduled`` or
``above_threshold`` plus ``at_least_one``; ultra-fast adds ``leading_run`` (instant reveal and
confidence streaming), ``stall_fallback``, ``early_stop_due``, and the pass bounds
``keep_undecided`` (min_steps) and ``everything`` (the last allowed pass).
"""

from __future__ import annotations

import torch


def scheduled(candidates: torch.Tensor, score: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` best-scored candidates (LLaDA's low-confidence remasking keeps the most confident)."""
    commit = torch.zeros_like(candidates)
    count = min(count, int(candidates.sum()))
    if count > 0:
        ranked = torch.where(candidates, score, torch.full_like(score, -torch.inf))
        commit[torch.topk(ranked, count).indices] = True
    return commit


def above_threshold(candidates: torch.Tensor, certainty: torch.Tensor, threshold: float) -> torch.Tensor:
    """Every candidate whose certainty reaches ``threshold`` (Fast-dLLM's parallel decoding)."""
    return candidates & (certainty >= threshold)


def at_least_one(commit: torch.Tensor, candidates: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """``commit``, or the best-scored candidate when it is empty: every pass decides something."""
    if commit.any() or not candidates.any():
        return commit
    out = commit.clone()
    out[int(torch.where(candidates, score, torch.full_like(score, -torch.inf)).argmax())] = True
    return out


def leading_run(undecided: torch.Tensor, confidence: torch.Tensor, cursor: int, limit: int,
                threshold: float) -> torch.Tensor:
    """Undecided positions in ``[cursor, limit)`` whose confidence exceeds ``threshold``, up to the
    first undecided one that does not: deciding them moves the cursor, so they can stream now."""
    run = torch.zeros_like(undecided)
    if cursor >= limit:
        return run
    window = undecided[cursor:limit]
    passes = ~window | (confidence[cursor:limit] > threshold)
    length = int(passes.long().cumprod(0).sum())  # how far from the cursor every position passes
    run[cursor : cursor + length] = window[:length]
    return run


def stall_fallback(decided_without_progress: int, every_n: int) -> bool:
    """Whether the token at the cursor must be decided now: ``every_n`` tokens (0: never) were
    decided since the cursor last moved, and the stream still waits on it."""
    return every_n > 0 and decided_without_progress >= every_n


def early_stop_due(undecided_confidence: torch.Tensor, progress: float, passes: int, min_passes: int,
                   min_progress: float, confidence: float) -> bool:
    """Whether to decide every remaining position now: past ``min_passes`` passes and
    ``min_progress`` of the answer, and the undecided positions' mean confidence reaches ``confidence``."""
    if passes < min_passes or progress < min_progress or undecided_confidence.numel() == 0:
        return False
    return float(undecided_confidence.mean()) >= confidence


def keep_undecided(commit: torch.Tensor, score: torch.Tensor, undecided: torch.Tensor, at_least: int) -> torch.Tensor:
    """``commit`` minus its worst-scored positions, so that at least ``at_least`` positions stay
    undecided (one for each pass the request still owes ``min_steps``)."""
    room = int(undecided.sum()) - max(at_least, 0)
    if int(commit.sum()) <= room:
        return commit
    return scheduled(commit, score, max(room, 0))


def everything(undecided: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Every undecided position this pass scored (the last pass the budget allows, or early stop)."""
    return undecided & known
