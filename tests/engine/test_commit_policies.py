"""The commit policies of the diffusion scheduler, each on masks and scores the test chooses:
which positions a pass decides, exactly, at and around every bound."""

import torch

from dfast_serve.engine.masked import policies


def mask(*bits: int) -> torch.Tensor:
    return torch.tensor([bool(b) for b in bits])


def scores(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def positions(m: torch.Tensor) -> list[int]:
    return torch.nonzero(m).flatten().tolist()


def test_scheduled_commits_the_best_scored_candidates_only():
    candidates = mask(1, 0, 1, 1, 1)
    score = scores(0.5, 0.99, 0.2, 0.9, 0.7)  # the best score (position 1) is not a candidate
    assert positions(policies.scheduled(candidates, score, 2)) == [3, 4]
    assert positions(policies.scheduled(candidates, score, 1)) == [3]


def test_scheduled_never_commits_more_than_the_candidates():
    candidates = mask(0, 1, 0, 1)
    out = policies.scheduled(candidates, scores(0.9, 0.1, 0.9, 0.2), 10)
    assert positions(out) == [1, 3]
    assert out.dtype == torch.bool


def test_scheduled_with_nothing_to_commit_commits_nothing():
    assert positions(policies.scheduled(mask(1, 1), scores(0.5, 0.6), 0)) == []
    assert positions(policies.scheduled(mask(0, 0), scores(0.5, 0.6), 3)) == []


def test_above_threshold_includes_a_certainty_equal_to_the_threshold():
    candidates = mask(1, 1, 1, 0)
    certainty = scores(1.0, 0.5, 0.49, 1.0)
    assert positions(policies.above_threshold(candidates, certainty, 0.5)) == [0, 1]
    # threshold 1.0 on a sure model decides every sure candidate in one pass
    assert positions(policies.above_threshold(candidates, certainty, 1.0)) == [0]


def test_at_least_one_adds_the_best_candidate_only_when_the_commit_is_empty():
    candidates = mask(1, 1, 0, 1)
    score = scores(0.3, 0.8, 0.99, 0.5)
    empty = torch.zeros(4, dtype=torch.bool)
    assert positions(policies.at_least_one(empty, candidates, score)) == [1]
    assert positions(empty) == []  # the caller's mask is not changed
    some = mask(1, 0, 0, 0)
    assert positions(policies.at_least_one(some, candidates, score)) == [0]
    assert positions(policies.at_least_one(empty, mask(0, 0, 0, 0), score)) == []


def test_leading_run_stops_at_the_first_undecided_position_below_the_threshold():
    undecided = mask(0, 1, 1, 0, 1, 1, 1)
    confidence = scores(0.0, 0.9, 0.95, 0.1, 0.91, 0.5, 0.99)
    # from cursor 1: 1 and 2 pass, 3 is decided (passes), 4 passes, 5 fails -> run is 1, 2, 4
    assert positions(policies.leading_run(undecided, confidence, 1, 7, 0.8)) == [1, 2, 4]


def test_leading_run_needs_a_confidence_strictly_above_the_threshold():
    undecided = mask(1, 1)
    assert positions(policies.leading_run(undecided, scores(0.8, 0.9), 0, 2, 0.8)) == []
    assert positions(policies.leading_run(undecided, scores(0.81, 0.8), 0, 2, 0.8)) == [0]


def test_leading_run_stays_within_cursor_and_limit():
    undecided = mask(1, 1, 1, 1, 1)
    confidence = scores(0.99, 0.99, 0.99, 0.99, 0.99)
    assert positions(policies.leading_run(undecided, confidence, 1, 3, 0.5)) == [1, 2]
    assert positions(policies.leading_run(undecided, confidence, 3, 3, 0.5)) == []
    assert positions(policies.leading_run(undecided, confidence, 4, 3, 0.5)) == []
    assert positions(policies.leading_run(undecided, confidence, 4, 5, 0.5)) == [4]


def test_stall_fallback_fires_at_exactly_every_n_and_never_when_off():
    assert not policies.stall_fallback(3, 4)
    assert policies.stall_fallback(4, 4)
    assert policies.stall_fallback(5, 4)
    assert not policies.stall_fallback(100, 0)
    assert policies.stall_fallback(1, 1)


def test_early_stop_due_at_each_bound():
    conf = scores(0.5, 1.0)  # mean exactly 0.75
    args = dict(min_passes=3, min_progress=0.5, confidence=0.75)
    assert policies.early_stop_due(conf, progress=0.5, passes=3, **args)  # every bound met with equality
    assert not policies.early_stop_due(conf, progress=0.5, passes=2, **args)
    assert not policies.early_stop_due(conf, progress=0.49, passes=3, **args)
    assert not policies.early_stop_due(scores(0.5, 0.99), progress=1.0, passes=9, **args)
    assert not policies.early_stop_due(scores(), progress=1.0, passes=9, **args)
    # one undecided position left, sure enough: stop now
    assert policies.early_stop_due(scores(0.8), progress=0.9, passes=3, **args)


def test_keep_undecided_drops_the_worst_scored_commits_to_leave_room():
    undecided = mask(1, 1, 1, 1, 1)
    commit = mask(1, 1, 1, 1, 0)
    score = scores(0.9, 0.2, 0.8, 0.5, 0.0)
    # 5 undecided, 2 must stay undecided: at most 3 of the 4 commits, the best three
    assert positions(policies.keep_undecided(commit, score, undecided, 2)) == [0, 2, 3]
    # room for all of them: unchanged
    assert positions(policies.keep_undecided(commit, score, undecided, 1)) == [0, 1, 2, 3]
    assert positions(policies.keep_undecided(commit, score, undecided, 0)) == [0, 1, 2, 3]
    assert positions(policies.keep_undecided(commit, score, undecided, -3)) == [0, 1, 2, 3]
    # nothing owed: even a commit of every undecided position stands (the last pass)
    assert positions(policies.keep_undecided(undecided, score, undecided, 0)) == [0, 1, 2, 3, 4]
    # more owed than undecided: nothing is committed
    assert positions(policies.keep_undecided(commit, score, undecided, 7)) == []
    assert positions(policies.keep_undecided(commit, score, undecided, 5)) == []


def test_everything_is_every_undecided_position_the_pass_scored():
    assert positions(policies.everything(mask(1, 1, 0, 1), mask(1, 0, 1, 1))) == [0, 3]


def test_at_least_one_does_not_modify_its_input():
    empty = mask(0, 0, 0)
    policies.at_least_one(empty, mask(1, 1, 1), scores(0.1, 0.2, 0.3))
    assert positions(empty) == []
