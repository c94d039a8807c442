"""The commit policies (``engine/masked/policies.py``) on small hand-made tensors: pure functions,
exact expected outputs, with the boundary of every comparison tested on both sides."""

from __future__ import annotations

import torch

from dfast_serve.engine.masked import policies

T, F = True, False


def mask(*bits: bool) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


def scores(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def positions(commit: torch.Tensor) -> list[int]:
    return commit.nonzero()[:, 0].tolist()


# ---- scheduled ---------------------------------------------------------------------------------
def test_scheduled_takes_the_count_best_scored_candidates_only():
    candidates = mask(T, F, T, T, T)
    score = scores(0.2, 0.99, 0.7, 0.1, 0.5)  # position 1 scores best but is no candidate
    assert positions(policies.scheduled(candidates, score, 2)) == [2, 4]
    assert positions(policies.scheduled(candidates, score, 1)) == [2]
    assert positions(policies.scheduled(candidates, score, 0)) == []
    assert positions(policies.scheduled(candidates, score, -3)) == []


def test_scheduled_never_takes_more_than_the_candidates():
    candidates = mask(F, T, F, T)
    assert positions(policies.scheduled(candidates, scores(0.9, 0.1, 0.8, 0.2), 10)) == [1, 3]
    assert positions(policies.scheduled(mask(F, F), scores(0.5, 0.5), 1)) == []
    assert policies.scheduled(candidates, scores(0.9, 0.1, 0.8, 0.2), 2).dtype == torch.bool


# ---- above_threshold ---------------------------------------------------------------------------
def test_above_threshold_includes_a_certainty_equal_to_the_threshold():
    candidates = mask(T, T, T, F, T)
    certainty = scores(0.9, 0.89, 1.0, 1.0, 0.95)
    assert positions(policies.above_threshold(candidates, certainty, 0.9)) == [0, 2, 4]
    # threshold 1.0: a certain token (probability exactly 1) reaches it
    assert positions(policies.above_threshold(candidates, certainty, 1.0)) == [2]
    assert positions(policies.above_threshold(candidates, certainty, 0.0)) == [0, 1, 2, 4]


# ---- at_least_one ------------------------------------------------------------------------------
def test_at_least_one_adds_the_best_candidate_only_when_nothing_is_committed():
    candidates = mask(T, F, T, T)
    score = scores(0.3, 0.9, 0.6, 0.1)
    assert positions(policies.at_least_one(mask(F, F, F, F), candidates, score)) == [2]
    committed = mask(F, F, F, T)
    assert positions(policies.at_least_one(committed, candidates, score)) == [3]
    assert positions(policies.at_least_one(mask(F, F, F, F), mask(F, F, F, F), score)) == []


def test_at_least_one_does_not_modify_its_input():
    empty = mask(F, F, F)
    policies.at_least_one(empty, mask(T, T, T), scores(0.1, 0.2, 0.3))
    assert positions(empty) == []


# ---- leading_run -------------------------------------------------------------------------------
def test_leading_run_stops_at_the_first_undecided_position_not_above_the_threshold():
    undecided = mask(F, T, T, F, T, T, T)
    confidence = scores(0.0, 0.9, 0.95, 0.0, 0.85, 0.8, 0.99)
    # cursor 1: 1 and 2 pass, 3 is decided (passes), 4 passes, 5 is exactly 0.8 (not above): stop
    assert positions(policies.leading_run(undecided, confidence, 1, 7, 0.8)) == [1, 2, 4]
    assert positions(policies.leading_run(undecided, confidence, 1, 7, 0.79)) == [1, 2, 4, 5, 6]
    assert positions(policies.leading_run(undecided, confidence, 1, 7, 0.9)) == []  # 0.9 is not above 0.9


def test_leading_run_keeps_to_its_window():
    undecided = mask(T, T, T, T)
    confident = scores(0.99, 0.99, 0.99, 0.99)
    assert positions(policies.leading_run(undecided, confident, 1, 3, 0.5)) == [1, 2]
    assert positions(policies.leading_run(undecided, confident, 3, 3, 0.5)) == []
    assert positions(policies.leading_run(undecided, confident, 4, 2, 0.5)) == []


# ---- stall_fallback ------------------------------------------------------------------------------
def test_stall_fallback_fires_at_every_n_and_never_when_off():
    assert not policies.stall_fallback(3, 4)
    assert policies.stall_fallback(4, 4)
    assert policies.stall_fallback(5, 4)
    assert not policies.stall_fallback(100, 0)
    assert policies.stall_fallback(1, 1)
    assert not policies.stall_fallback(0, 1)


# ---- early_stop_due ----------------------------------------------------------------------------
def test_early_stop_due_needs_passes_progress_and_mean_confidence():
    confident = scores(0.875, 0.625)  # mean 0.75 (exact in binary)
    assert policies.early_stop_due(confident, 0.5, 8, 8, 0.5, 0.75)  # every bound exactly met
    assert not policies.early_stop_due(confident, 0.5, 7, 8, 0.5, 0.75)  # one pass short
    assert not policies.early_stop_due(confident, 0.4375, 8, 8, 0.5, 0.75)  # progress short
    assert not policies.early_stop_due(scores(0.875, 0.5), 0.5, 8, 8, 0.5, 0.75)  # mean 0.6875
    assert not policies.early_stop_due(scores(), 1.0, 8, 1, 0.0, 0.0)  # nothing left undecided
    assert policies.early_stop_due(scores(0.1), 0.0, 1, 1, 0.0, 0.1)


# ---- keep_undecided ----------------------------------------------------------------------------
def test_keep_undecided_gives_back_the_worst_commits_to_leave_passes_something_to_do():
    undecided = mask(T, T, T, T, T)
    commit = mask(T, T, T, T, F)
    score = scores(0.9, 0.2, 0.8, 0.5, 0.99)
    assert positions(policies.keep_undecided(commit, score, undecided, 3)) == [0, 2]  # 5 - 3 = room for 2
    assert positions(policies.keep_undecided(commit, score, undecided, 1)) == [0, 1, 2, 3]  # room 4: unchanged
    assert positions(policies.keep_undecided(commit, score, undecided, 2)) == [0, 2, 3]
    assert positions(policies.keep_undecided(commit, score, undecided, 0)) == [0, 1, 2, 3]
    assert positions(policies.keep_undecided(commit, score, undecided, -2)) == [0, 1, 2, 3]
    assert positions(policies.keep_undecided(commit, score, undecided, 5)) == []
    assert positions(policies.keep_undecided(commit, score, undecided, 9)) == []


# ---- everything --------------------------------------------------------------------------------
def test_everything_is_every_undecided_position_the_pass_scored():
    assert positions(policies.everything(mask(T, F, T, T), mask(T, T, F, T))) == [0, 3]
