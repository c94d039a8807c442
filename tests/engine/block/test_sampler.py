"""DiffusionGemma's sampler functions (``engine/block/sampler.py``) at their boundaries, on hand-made numbers."""

from __future__ import annotations

import math

import torch

from dfast_serve.engine.block import sampler


def test_a_token_is_held_and_sure_from_exactly_hold_steps_and_strictly_under_the_bound():
    held = torch.tensor([1, 2, 3, 2])
    entropy = torch.tensor([0.0, 0.0, 0.0, 0.1])
    assert sampler.held_and_sure(held, entropy, 2, 0.1).tolist() == [False, True, True, False]


def test_the_models_stop_needs_the_mean_entropy_strictly_under_its_bound_and_both_settings():
    a = torch.tensor([1, 2])
    assert not sampler.stable_and_confident([a], a, 1, torch.tensor(0.005), 0.005)
    assert sampler.stable_and_confident([a], a, 1, torch.tensor(0.004), 0.005)
    assert not sampler.stable_and_confident([a], a, 1, torch.tensor(0.0), None)
    assert not sampler.stable_and_confident([torch.tensor([1, 3])], a, 1, torch.tensor(0.0), 0.005)


def test_stability_looks_only_at_the_last_canvases():
    a, b = torch.tensor([1, 2]), torch.tensor([1, 3])
    assert sampler.is_stable([b, a], a, 1) and sampler.is_stable([b, a, a], a, 2)
    assert not sampler.is_stable([a, b, a], a, 2) and not sampler.is_stable([a], a, 2)


def test_the_temperature_schedule_at_each_step_of_an_odd_count():
    temps = [float(sampler.schedule_temperature(step, 3, 0.3, 0.9)) for step in (1, 2, 3)]
    assert all(math.isclose(t, want, abs_tol=1e-6) for t, want in zip(temps, [0.9, 0.7, 0.5])), temps


def test_entropy_is_the_categoricals_in_nats():
    entropy = sampler.token_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    assert math.isclose(float(entropy[0]), math.log(4), rel_tol=1e-6) and float(entropy[1]) < 1e-6


def test_acceptance_keeps_each_rows_own_order():
    entropy = torch.tensor([[0.5, 0.0, 3.0], [0.0, 3.0, 0.5]])
    assert sampler.accept_by_entropy(entropy, 0.1).tolist() == [[True, True, False], [True, False, True]]


def test_renoise_draws_from_the_whole_vocabulary_with_the_generator():
    canvas, keep = torch.zeros((1, 2000), dtype=torch.long), torch.zeros((1, 2000), dtype=torch.bool)
    first = sampler.renoise(canvas, keep, 7, torch.Generator().manual_seed(1))
    again = sampler.renoise(canvas, keep, 7, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and set(first[0].tolist()) == set(range(7))


def test_a_run_from_the_cursor_stops_at_the_limit():
    ready = torch.tensor([True, True, True, True])
    assert sampler.leading_run(ready, 1, 3) == 2 and sampler.leading_run(ready, 3, 2) == 0


def test_at_a_bound_of_zero_the_surest_position_is_still_accepted():
    entropy = torch.tensor([[0.5, 0.2, 0.9]])
    assert sampler.accept_by_entropy(entropy, 0.0).tolist() == [[False, True, False]]
    # a run whose sum minus its largest equals the bound exactly is accepted
    assert sampler.accept_by_entropy(torch.tensor([0.25, 0.25, 0.5, 2.0]), 0.5).tolist() == [True, True, True, False]
