"""DiffusionGemma's sampler functions on hand-made numbers."""

from __future__ import annotations

import pytest
import torch

from dfast_serve.engine.block import sampler


def test_entropy_bound_accepts_the_low_entropy_run_plus_one():
    """Sorted ascending, a token is accepted while the summed entropy before it stays within the bound: the
    sure ones and the first unsure one (its own entropy is the excluded maximum), never less than one."""
    entropy = torch.tensor([2.0, 0.01, 3.0, 0.02, 0.5])
    assert sampler.accept_by_entropy(entropy, 0.1).tolist() == [False, True, False, True, True]
    assert sampler.accept_by_entropy(torch.tensor([5.0, 6.0]), 0.1).tolist() == [True, False]


def test_schedule_runs_from_t_max_to_just_above_t_min():
    temps = [float(sampler.schedule_temperature(step, 4, 0.4, 0.8)) for step in range(1, 5)]
    assert temps == pytest.approx([0.8, 0.7, 0.6, 0.5], abs=1e-6)


def test_stability_needs_as_many_equal_argmax_canvases_as_the_threshold():
    a, b = torch.tensor([1, 2]), torch.tensor([1, 3])
    assert not sampler.is_stable([], a, 1) and sampler.is_stable([a], a, 1) and not sampler.is_stable([b, a], a, 2)
    assert sampler.is_stable([a, a], a, 2) and sampler.is_stable([], a, 0)
    assert not sampler.stable_and_confident([a], a, 1, torch.tensor(0.01), 0.005)
    assert sampler.stable_and_confident([a], a, 1, torch.tensor(0.001), 0.005)
    assert not sampler.stable_and_confident([a], a, None, torch.tensor(0.0), 0.005)


def test_leading_run_stops_at_the_first_position_not_ready():
    ready = torch.tensor([True, True, False, True])
    assert sampler.leading_run(ready, 0, 4) == 2 and sampler.leading_run(ready, 3, 4) == 1
    assert sampler.leading_run(ready, 0, 1) == 1 and sampler.leading_run(ready, 4, 4) == 0


def test_renoise_keeps_what_was_accepted():
    canvas = torch.tensor([[5, 6, 7]])
    keep = torch.tensor([[True, False, True]])
    out = sampler.renoise(canvas, keep, 1000, torch.Generator().manual_seed(0))
    assert out[0, 0] == 5 and out[0, 2] == 7 and 0 <= int(out[0, 1]) < 1000
