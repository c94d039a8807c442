"""A diffusion request's pass budget (``PassBudget``), its step schedules and its limits, each at
its bounds: exact numbers of passes, exact schedules, refusals naming the field."""

import pytest

from dfast_serve.engine.limits import check_context, check_prompt
from dfast_serve.engine.masked.budget import PassBudget
from dfast_serve.engine.masked.schedule import front_loaded_schedule, uniform_schedule
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.wire import APIError, DiffusionOptions, SamplingParams, UltraFastConfig


def ultra(steps=None, **cfg) -> DiffusionOptions:
    return DiffusionOptions(ultra_fast=True, steps=steps, ultra_fast_config=UltraFastConfig(**cfg))


# ---- standard path --------------------------------------------------------------------------------
@pytest.mark.parametrize("gen_len, block, steps, per_block", [
    (64, 32, None, 32),   # default: one pass per token, split over 2 blocks
    (64, 32, 16, 8),
    (64, 32, 3, 1),       # fewer steps than blocks: still one pass a block
    (65, 32, 30, 10),     # 3 blocks (the last partial)
    (8, 32, 5, 5),        # one block
])
def test_standard_budget_splits_steps_evenly_among_blocks(gen_len, block, steps, per_block):
    budget = PassBudget.for_request(DiffusionOptions(ultra_fast=False, steps=steps, block_length=block), gen_len)
    assert budget == PassBudget(per_block=per_block, min_passes=0, max_passes=None, carry_forward=False, carried=0)
    assert budget.block_allowance(10_000) == per_block  # no request-wide cap on the standard path
    assert not budget.is_last_pass(10_000)
    assert budget.passes_still_owed(0) == 0


def test_standard_budget_carries_nothing_to_the_next_block():
    budget = PassBudget.for_request(DiffusionOptions(ultra_fast=False, steps=16, block_length=32), 64)
    budget.end_block(allowance=8, used=2)
    assert budget.block_allowance(2) == 8


# ---- ultra-fast -----------------------------------------------------------------------------------
def test_ultra_fast_budget_from_the_request_options():
    budget = PassBudget.for_request(ultra(steps_per_block=6, min_steps=8, max_steps=32), 64)
    assert budget == PassBudget(per_block=6, min_passes=8, max_passes=32, carry_forward=True, carried=0)


def test_steps_lowers_max_steps_but_never_below_min_steps():
    assert PassBudget.for_request(ultra(steps=12, min_steps=8, max_steps=32), 64).max_passes == 12
    assert PassBudget.for_request(ultra(steps=40, min_steps=8, max_steps=32), 64).max_passes == 32
    assert PassBudget.for_request(ultra(steps=2, min_steps=8, max_steps=32), 64).max_passes == 8
    assert PassBudget.for_request(ultra(steps=8, min_steps=8, max_steps=32), 64).max_passes == 8


def test_the_lower_bound_is_capped_at_the_answer_length():
    assert PassBudget.for_request(ultra(min_steps=8, max_steps=32), 5).min_passes == 5
    assert PassBudget.for_request(ultra(min_steps=8, max_steps=32), 8).min_passes == 8
    assert PassBudget.for_request(ultra(min_steps=8, max_steps=32), 9).min_passes == 8


def test_unused_passes_carry_to_the_next_block():
    """steps_per_block 6: a block that used 3 of its 6 leaves 3 to the next (9), which spends all."""
    budget = PassBudget.for_request(ultra(steps_per_block=6, min_steps=1, max_steps=100), 128)
    assert budget.block_allowance(0) == 6
    budget.end_block(allowance=6, used=3)
    assert budget.carried == 3
    assert budget.block_allowance(3) == 9
    budget.end_block(allowance=9, used=9)
    assert budget.carried == 0
    assert budget.block_allowance(12) == 6
    budget.end_block(allowance=6, used=8)  # overspent (forced passes): nothing negative carried
    assert budget.carried == 0


def test_a_block_allowance_never_passes_the_request_cap_and_is_at_least_one():
    budget = PassBudget.for_request(ultra(steps_per_block=16, min_steps=1, max_steps=20), 64)
    assert budget.block_allowance(0) == 16
    assert budget.block_allowance(10) == 10
    assert budget.block_allowance(19) == 1
    assert budget.block_allowance(20) == 1
    assert budget.block_allowance(25) == 1


def test_the_last_pass_is_pass_max_passes():
    budget = PassBudget.for_request(ultra(min_steps=1, max_steps=5), 64)
    assert [budget.is_last_pass(n) for n in range(1, 8)] == [False, False, False, False, True, True, True]


def test_passes_still_owed_count_down_to_zero():
    budget = PassBudget.for_request(ultra(min_steps=4, max_steps=32), 64)
    assert [budget.passes_still_owed(n) for n in range(6)] == [4, 3, 2, 1, 0, 0]


# ---- step schedules -------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens, steps, expected", [
    (10, 4, [3, 3, 2, 2]),
    (8, 8, [1] * 8),
    (3, 8, [1, 1, 1]),      # more steps than tokens: one token a step
    (5, 0, [5]),            # no steps: one step takes all
    (5, 1, [5]),
    (1, 4, [1]),
    (0, 4, []),
    (-1, 4, []),
])
def test_uniform_schedule(tokens, steps, expected):
    assert uniform_schedule(tokens, steps) == expected


@pytest.mark.parametrize("tokens, steps, expected", [
    (64, 8, [1, 2, 4, 8, 16, 16, 16, 1]),
    (32, 4, [1, 2, 4, 25]),           # even uncapped doubling does not fit: the last step takes the rest
    (32, 6, [1, 2, 4, 8, 16, 1]),
    (7, 3, [1, 2, 4]),                # doubling fits exactly
    (8, 4, [1, 2, 4, 1]),
    (4, 4, [1, 1, 1, 1]),             # cap 1 fits
    (6, 4, [1, 2, 2, 1]),             # cap 2
    (1, 1, [1]),
    (3, 1, [3]),
    (3, 0, [3]),                      # no steps: one step
    (0, 4, []),
])
def test_front_loaded_schedule(tokens, steps, expected):
    assert front_loaded_schedule(tokens, steps) == expected


# ---- limits ---------------------------------------------------------------------------------------
def request(prompt_len: int, max_tokens: int, field: str = "prompt") -> GenerationRequest:
    return GenerationRequest(list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens), prompt_field=field)


def refusal(fn, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args, **kwargs)
    return info.value


def test_an_empty_prompt_is_refused_naming_its_field():
    err = refusal(check_prompt, request(0, 4, "messages"))
    assert (err.status, err.param, err.code) == (400, "messages", "invalid_value")
    assert err.message == "messages encodes to no tokens"


def test_max_tokens_below_one_is_refused_and_one_is_accepted():
    err = refusal(check_prompt, request(3, 0))
    assert (err.status, err.param, err.message) == (400, "max_tokens", "max_tokens must be at least 1")
    check_prompt(request(3, 1))


def test_context_fits_exactly_at_the_limit():
    check_context(request(6, 4), 10)
    check_context(request(6, 2), 10, answer_positions=4)


def test_context_one_over_the_limit_blames_max_tokens():
    err = refusal(check_context, request(6, 5), 10)
    assert (err.status, err.param, err.code) == (400, "max_tokens", "context_length_exceeded")
    assert err.message == ("prompt is 6 tokens and max_tokens 5; together they exceed the model's limit "
                           "of 10 tokens (its context)")


def test_context_rounded_up_answer_is_said_so():
    err = refusal(check_context, request(6, 3, "messages"), 10, answer_positions=8, why="whole canvases")
    assert err.param == "max_tokens"
    assert err.message == ("messages is 6 tokens and max_tokens 3 (rounded up to 8 positions); together they "
                           "exceed the model's limit of 10 tokens (whole canvases)")


def test_a_prompt_that_fills_the_context_alone_blames_the_prompt():
    err = refusal(check_context, request(10, 1, "messages"), 10)
    assert (err.status, err.param, err.code) == (400, "messages", "context_length_exceeded")
    assert err.message == "messages is 10 tokens; the model's limit is 10 (its context)"
    err = refusal(check_context, request(9, 2), 10)
    assert err.param == "max_tokens"
