import pytest

from dfast_serve.engine.masked.schedule import front_loaded_schedule, uniform_schedule


def test_front_loaded_matches_the_design_example():
    assert front_loaded_schedule(64, 8) == [1, 2, 4, 8, 16, 16, 16, 1]


@pytest.mark.parametrize("total,steps", [(64, 8), (32, 16), (256, 32), (7, 3), (5, 32), (32, 1), (100, 10)])
def test_schedules_spend_exactly_the_tokens_within_the_steps(total, steps):
    for plan in (front_loaded_schedule(total, steps), uniform_schedule(total, steps)):
        assert sum(plan) == total
        assert len(plan) <= steps
        assert all(n >= 1 for n in plan)


@pytest.mark.parametrize("total,steps", [(64, 8), (256, 32), (100, 10), (48, 6)])
def test_front_loaded_reveals_fewer_tokens_early_than_uniform(total, steps):
    front, uniform = front_loaded_schedule(total, steps), uniform_schedule(total, steps)
    assert front[0] == 1 < uniform[0]
    # cumulative: front-loaded commits fewer tokens than uniform over the first steps
    for k in range(1, 4):
        assert sum(front[:k]) <= sum(uniform[:k])


def test_uniform_is_llada_schedule():
    assert uniform_schedule(10, 4) == [3, 3, 2, 2]
    assert uniform_schedule(3, 8) == [1, 1, 1]  # never a step that commits nothing
